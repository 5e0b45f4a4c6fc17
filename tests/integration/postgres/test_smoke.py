"""The shortest path through the gateway: psycopg connects with a token and reads a row."""

from __future__ import annotations

import time

import psycopg
from tests.integration.postgres.conftest import RunningGateway


def test_select_through_gateway(gateway: RunningGateway, token: str) -> None:
    with psycopg.connect(gateway.dsn(token)) as conn:
        assert conn.execute("select 40 + 2").fetchone() == (42,)
    out = ""
    for _ in range(100):  # bounded: the gateway ingests its audit journal asynchronously
        out = gateway.cli("audit", "sessions", "--json").stdout
        if "alice" in out:
            break
        time.sleep(0.1)
    assert "alice" in out
