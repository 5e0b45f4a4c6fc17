"""Shared fixtures: the real PostgreSQL server on this machine, skipped cleanly without it."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import traceback
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

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


def issue_token(manifest_path: Path, subject: str, groups: Iterable[str], ttl: str = "1h") -> str:
    """A gateway-signed token, as `lockgate token issue -c MANIFEST` prints it.

    The same authority call the CLI makes, in this process: a CLI subprocess costs most of a
    second in imports, and integration tests issue a few hundred tokens as set-up (the command
    itself is tested in tests/unit/cli/test_token.py).
    """
    from lockgate.config.loader import load_manifest
    from lockgate.config.model import parse_duration
    from lockgate.identity.tokens import GatewayTokenAuthority
    from lockgate.store import open_engine

    manifest = load_manifest(manifest_path)
    engine = open_engine(manifest.state_url, create=False)
    try:
        authority = GatewayTokenAuthority(manifest, engine)
        return authority.issue(subject, groups, ttl_seconds=parse_duration(ttl)).token
    finally:
        engine.dispose()


def run_cli(
    args: Sequence[str], *, input: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """`lockgate ARGS` as `subprocess.run(..., capture_output=True, text=True)` reports it.

    Run in this process through click's CliRunner (as tests/unit/cli does): a subprocess
    spends most of a second importing, and integration tests run a few hundred commands
    (reviewer decisions, audit queries, polls). It is still another process than the
    gateway's. Inside a running event loop (`asyncio.run` would refuse) it falls back to
    a real subprocess.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        return subprocess.run(
            [sys.executable, "-m", "lockgate.cli", *args],
            capture_output=True,
            text=True,
            input=input,
            check=check,
            timeout=60,
        )
    from click.testing import CliRunner

    from lockgate.cli import main

    result = CliRunner().invoke(main, list(args), input=input)
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        # What the interpreter would print before exiting with status 1.
        stderr += "".join(traceback.format_exception(result.exception))
    stdout, stderr = _universal(result.stdout), _universal(stderr)
    done = subprocess.CompletedProcess(["lockgate", *args], result.exit_code, stdout, stderr)
    if check:
        done.check_returncode()
    return done


def _universal(text: str) -> str:
    """Newlines as `text=True` reads them from a pipe: CR LF and a lone CR become LF."""
    return text.replace("\r\n", "\n").replace("\r", "\n")
