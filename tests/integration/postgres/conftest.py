"""A real gateway (`lockgate serve` in a subprocess) in front of the real PostgreSQL server.

`gateway` is shared by a test module: one database created for it, one resource `itdb`
that group `it` may reach. Tests that need other manifests call `gateway_factory`.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from tests.conftest import free_port, issue_token, run_cli

REPO = Path(__file__).resolve().parents[3]
LOCKGATE = [sys.executable, "-m", "lockgate.cli"]


@dataclass
class RunningGateway:
    dir: Path
    manifest_path: Path
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path
    resources: list[str] = field(default_factory=list)

    def cli(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run a `lockgate` command against this gateway's manifest."""
        return run_cli([*args, "-c", str(self.manifest_path)], input=input, check=check)

    def token(
        self,
        subject: str = "alice",
        groups: tuple[str, ...] = ("it",),
        ttl: str = "1h",
        *extra: str,
    ) -> str:
        if not extra:
            return issue_token(self.manifest_path, subject, groups, ttl)
        args = ["token", "issue", "--subject", subject, "--ttl", ttl]
        for g in groups:
            args += ["--group", g]
        return self.cli(*args, *extra).stdout.strip()

    def dsn(
        self, token: str, dbname: str = "itdb", user: str = "alice", sslmode: str = "require"
    ) -> str:
        return (
            f"host=127.0.0.1 port={self.port} dbname={dbname} user={user} "
            f"password={token} sslmode={sslmode}"
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def sessions(self, subject: str) -> list[dict[str, Any]]:
        """`lockgate audit sessions --subject SUBJECT`, newest first ([] if it fails)."""
        out = self.cli("audit", "sessions", "--subject", subject, "--json", check=False)
        return list(json.loads(out.stdout)) if out.returncode == 0 else []

    def recorded_sessions(self, subject: str) -> list[dict[str, Any]]:
        """The sessions of `subject`, newest first, once one is recorded (ingested async)."""
        for _ in range(150):
            rows = self.sessions(subject)
            if rows:
                return rows
            time.sleep(0.1)
        raise AssertionError(f"no session of {subject} recorded")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


def start_gateway(
    directory: Path, manifest: dict[str, Any], *, timeout: float = 30.0
) -> RunningGateway:
    """Write `manifest` to `directory/lockgate.yaml` and start `lockgate serve` on it."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "lockgate.yaml"
    path.write_text(yaml.safe_dump(manifest, sort_keys=False))
    port = int(manifest["listeners"][0]["address"].rpartition(":")[2])
    log_path = directory / "gateway.log"
    log_file = log_path.open("wb")
    proc = subprocess.Popen(
        [*LOCKGATE, "serve", "-c", str(path)],
        stdout=log_file,
        stderr=subprocess.STDOUT,
        cwd=directory,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    gw = RunningGateway(
        directory, path, port, proc, log_path, [r["name"] for r in manifest.get("resources", [])]
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gateway exited early:\n{gw.log()}")
        if "listening on" in gw.log():
            return gw
        time.sleep(0.05)
    gw.stop()
    raise RuntimeError(f"gateway did not start in {timeout}s:\n{gw.log()}")


def base_manifest(
    port: int,
    resources: list[dict[str, Any]],
    access: list[dict[str, Any]] | None = None,
    *,
    tls: bool = True,
) -> dict[str, Any]:
    listener: dict[str, Any] = {"name": "pg", "address": f"127.0.0.1:{port}"}
    if not tls:
        listener["tls"] = {"enabled": False}
    return {
        "version": 1,
        "state": {"url": "sqlite:///state/lockgate.db", "dir": "state"},
        "listeners": [listener],
        "resources": resources,
        "access": access
        if access is not None
        else [{"name": "it-group", "resources": [r["name"] for r in resources], "groups": ["it"]}],
    }


def local_resource(name: str, database: str, host: str, port: int, user: str) -> dict[str, Any]:
    return {
        "name": name,
        "upstream": {
            "host": host,
            "port": port,
            "database": database,
            "user": user,
            "tls": {"mode": "disable"},
        },
    }


def jit_manifest(
    port: int, database: str, pg: tuple[str, int, str], *, access_first: tuple[Any, ...] = ()
) -> dict[str, Any]:
    """`itdb` open to group `it`, `jitdb` to `it` with an approved grant (`access_first` goes
    before both); live sessions are re-checked every second."""
    host, pgport, user = pg
    manifest = base_manifest(
        port,
        [
            local_resource("itdb", database, host, pgport, user),
            local_resource("jitdb", database, host, pgport, user),
        ],
        access=[
            *access_first,
            {"name": "it-group", "resources": ["itdb"], "groups": ["it"]},
            {"name": "jit", "resources": ["jitdb"], "groups": ["it"], "requires_grant": True},
        ],
    )
    manifest["identity"] = {"sessions": {"check_interval": "1s"}}
    return manifest


@pytest.fixture(scope="module")
def it_database(pg_server: tuple[str, int, str]) -> Iterator[str]:
    """A fresh database on the real server for one test module; dropped afterwards."""
    host, port, user = pg_server
    name = f"lockgate_it_{secrets.token_hex(4)}"
    with psycopg.connect(host=host, port=port, user=user, dbname="postgres", autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    yield name
    with psycopg.connect(host=host, port=port, user=user, dbname="postgres", autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, pg_server: tuple[str, int, str], it_database: str
) -> Iterator[RunningGateway]:
    host, port, user = pg_server
    manifest = base_manifest(free_port(), [local_resource("itdb", it_database, host, port, user)])
    gw = start_gateway(tmp_path_factory.mktemp("gateway"), manifest)
    yield gw
    gw.stop()


@pytest.fixture
def gateway_factory(tmp_path: Path) -> Iterator[Callable[..., RunningGateway]]:
    started: list[RunningGateway] = []

    def make(manifest: dict[str, Any], name: str = "gw") -> RunningGateway:
        gw = start_gateway(tmp_path / name, manifest)
        started.append(gw)
        return gw

    yield make
    for gw in started:
        gw.stop()


@pytest.fixture(scope="module")
def token(gateway: RunningGateway) -> str:
    return gateway.token()


def connect_direct(pg: tuple[str, int, str], database: str) -> psycopg.Connection[Any]:
    """An autocommit connection straight to the server (not through the gateway)."""
    host, port, user = pg
    return psycopg.connect(host=host, port=port, user=user, dbname=database, autocommit=True)


def run_direct(pg: tuple[str, int, str], database: str, *statements: str) -> None:
    """Run set-up statements straight on the server, each in its own transaction."""
    with connect_direct(pg, database) as c:
        for statement in statements:
            c.execute(statement.encode())


@pytest.fixture
def direct(pg_server: tuple[str, int, str], it_database: str) -> Iterator[psycopg.Connection[Any]]:
    """A connection straight to the module's database, to check effects on the server."""
    with connect_direct(pg_server, it_database) as c:
        yield c


def wait_request(gw: RunningGateway, pred: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """The first approval request matching `pred` (bounded polling: the worker writes it async)."""
    import json

    rows: list[dict[str, Any]] = []
    for _ in range(300):
        rows = json.loads(gw.cli("reviews", "list", "--all", "--json").stdout)
        for row in rows:
            if pred(row):
                return row
        time.sleep(0.1)
    raise AssertionError(f"no matching approval request; latest: {rows[:5]!r}")


__all__ = ["RunningGateway", "base_manifest", "local_resource", "start_gateway", "textwrap"]


# ---------------------------------------------------------------------------------------
# Wire-level helpers for refusal and adversity tests: a PostgreSQL frontend driven by hand
# (so tests read the exact SQLSTATE of a FATAL startup error, which libpq does not expose),
# and bounded polling of `lockgate audit refusals`.


class Wire:
    """A raw PostgreSQL client connection, optionally upgraded to TLS with SSLRequest."""

    def __init__(self, port: int, *, tls: bool = False, timeout: float = 10.0) -> None:
        import socket
        import ssl

        from lockgate.protocols.postgres import messages as m

        self.sock: Any = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.local_address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.buf = bytearray()
        if tls:
            self.sock.sendall(m.ssl_request())
            answer = self.sock.recv(1)
            if answer != b"S":
                raise AssertionError(f"gateway answered {answer!r} to SSLRequest")
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            self.sock = ctx.wrap_socket(self.sock)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def startup(self, **params: str) -> None:
        from lockgate.protocols.postgres import messages as m

        self.send(m.startup_message(params))

    def read(self) -> tuple[bytes, bytes] | None:
        """The next message (type, payload), or None once the gateway closed the connection."""
        from lockgate.protocols.postgres import messages as m

        while True:
            got = m.read_message(self.buf)
            if got is not None:
                del self.buf[: got[2]]
                return got[0], got[1]
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                if self.buf:
                    raise AssertionError(f"connection closed inside a message: {bytes(self.buf)!r}")
                return None
            self.buf += chunk

    def read_until(self, *types: bytes) -> list[tuple[bytes, bytes]]:
        """Messages up to and including the first of `types` (or up to the close)."""
        out: list[tuple[bytes, bytes]] = []
        for _ in range(100_000):
            msg = self.read()
            if msg is None:
                return out
            out.append(msg)
            if msg[0] in types:
                return out
        raise AssertionError("too many messages")

    def error(self) -> dict[str, str]:
        """Read up to the ErrorResponse the gateway sends and return its fields."""
        from lockgate.protocols.postgres import messages as m

        msgs = self.read_until(b"E")
        if not msgs or msgs[-1][0] != b"E":
            raise AssertionError(f"expected an ErrorResponse, got {msgs!r}")
        return m.parse_error_fields(msgs[-1][1])

    def login(self, password: str, **params: str) -> dict[str, str] | None:
        """Startup + password; the ErrorResponse fields if refused, None once ReadyForQuery."""
        from lockgate.protocols.postgres import messages as m

        self.startup(**params)
        first = self.read()
        if first is None:
            raise AssertionError("connection closed during startup")
        if first[0] == b"E":
            return m.parse_error_fields(first[1])
        assert first == (b"R", b"\x00\x00\x00\x03"), f"expected a cleartext request, got {first!r}"
        self.send(m.password_message(password.encode()))
        msgs = self.read_until(b"E", b"Z")
        if msgs and msgs[-1][0] == b"E":
            return m.parse_error_fields(msgs[-1][1])
        assert msgs and msgs[-1][0] == b"Z", f"no ReadyForQuery: {msgs!r}"
        return None

    def until_closed(self) -> list[tuple[bytes, bytes]]:
        """Every message until the gateway closes the connection (socket timeout if never)."""
        return self.read_until()

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def audit_refusals(gw: RunningGateway) -> list[dict[str, Any]]:
    import json

    out = gw.cli("audit", "refusals", "--json", "--limit", "500", check=False)
    if out.returncode != 0:
        return []
    rows: list[dict[str, Any]] = json.loads(out.stdout)
    return rows


def wait_for_refusal(
    gw: RunningGateway, client_address: str, *, timeout: float = 15.0
) -> dict[str, Any]:
    """The refusal recorded for a connection from `client_address` (audit is ingested async)."""
    deadline = time.monotonic() + timeout
    rows: list[dict[str, Any]] = []
    for _ in range(200):
        rows = audit_refusals(gw)
        for row in rows:
            if row["client_addr"] == client_address:
                return row
        if time.monotonic() > deadline:
            break
        time.sleep(0.2)
    raise AssertionError(f"no refusal recorded for {client_address}; latest: {rows[:5]!r}")
