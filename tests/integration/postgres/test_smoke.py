"""The shortest path through the gateway: psycopg connects with a token and reads a row."""

from __future__ import annotations

import psycopg
from tests.integration.postgres.conftest import RunningGateway


def test_select_through_gateway(gateway: RunningGateway, token: str) -> None:
    with psycopg.connect(gateway.dsn(token)) as conn:
        assert conn.execute("select 40 + 2").fetchone() == (42,)
    out = gateway.cli("audit", "sessions", "--json").stdout
    assert "alice" in out
