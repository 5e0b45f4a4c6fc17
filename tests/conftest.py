"""Shared fixtures: the real PostgreSQL server on this machine, skipped cleanly without it."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest

PG_HOST = os.environ.get("LOCKGATE_TEST_PGHOST", "127.0.0.1")
PG_PORT = int(os.environ.get("LOCKGATE_TEST_PGPORT", "5432"))
PG_USER = os.environ.get("LOCKGATE_TEST_PGUSER", "postgres")


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def pg_server() -> Iterator[tuple[str, int, str]]:
    """(host, port, superuser) of the PostgreSQL server the tests may use."""
    if not _reachable(PG_HOST, PG_PORT):
        pytest.skip(f"no PostgreSQL server at {PG_HOST}:{PG_PORT}")
    yield PG_HOST, PG_PORT, PG_USER
