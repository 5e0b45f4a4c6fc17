"""Hostile and broken clients on raw sockets: each gets a protocol-native error (or is closed),
the gateway keeps serving everyone else, and what got far enough is in the audit.

Also fail closed: when the audit journal cannot be written, a statement is refused with
SQLSTATE 58000 and never reaches the upstream server; once the journal works again, so
does the gateway.
"""

from __future__ import annotations

import json
import os
import resource
import socket
import struct
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import yaml
from tests.conftest import free_port
from tests.integration.postgres.conftest import (
    RunningGateway,
    Wire,
    base_manifest,
    local_resource,
    start_gateway,
    wait_for_refusal,
)

from lockgate.protocols.postgres import messages as m

pytestmark = pytest.mark.pg


@pytest.fixture(scope="module")
def gw(
    tmp_path_factory: pytest.TempPathFactory, pg_server: tuple[str, int, str], it_database: str
) -> Iterator[RunningGateway]:
    host, port, user = pg_server
    manifest = base_manifest(
        free_port(), [local_resource("itdb", it_database, host, port, user)], tls=False
    )
    # A second listener with a short startup deadline, for the client that stalls.
    manifest["listeners"].append(
        {
            "name": "impatient",
            "address": f"127.0.0.1:{free_port()}",
            "tls": {"enabled": False},
            "startup_timeout": "1s",
        }
    )
    gateway = start_gateway(tmp_path_factory.mktemp("adversity"), manifest)
    yield gateway
    gateway.stop()


@pytest.fixture(scope="module")
def token(gw: RunningGateway) -> str:
    return gw.token()


def _impatient_port(gw: RunningGateway) -> int:
    manifest: dict[str, Any] = yaml.safe_load(gw.manifest_path.read_text())
    return int(manifest["listeners"][1]["address"].rpartition(":")[2])


def _serves(gw: RunningGateway, token: str) -> None:
    with psycopg.connect(gw.dsn(token, sslmode="disable"), connect_timeout=10) as conn:
        assert conn.execute("select 6 * 7").fetchone() == (42,)


def _fatal(wire: Wire) -> dict[str, str]:
    """The FATAL ErrorResponse the gateway sent before closing the connection."""
    msgs = wire.until_closed()
    assert msgs, "the gateway closed the connection without an ErrorResponse"
    assert msgs[-1][0] == b"E", msgs
    fields = m.parse_error_fields(msgs[-1][1])
    assert fields["S"] == "FATAL", fields
    return fields


def _raw_refusal(gw: RunningGateway, data: bytes) -> tuple[Wire, dict[str, str]]:
    wire = Wire(gw.port)
    try:
        wire.send(data)
        fields = _fatal(wire)
    finally:
        wire.close()
    return wire, fields


# --------------------------------------------------------------------------- startup phase


@pytest.mark.parametrize(
    ("data", "code", "words"),
    [
        (b"GET / HTTP/1.1\r\nHost: lockgate\r\n\r\n", "08P01", "invalid startup packet length"),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40, "08P01", "length"),
        (b"\x7f\xff\xff\xff", "08P01", "length 2147483647"),
        (b"\xff\xff\xff\xf0" + b"\x00" * 12, "08P01", "length"),
        (struct.pack("!ii", 9, 0x00020000) + b"\x00", "0A000", "protocol 2.0"),
        (struct.pack("!ii", 9, 0x12345678) + b"\x00", "0A000", "unsupported frontend protocol"),
        (m.startup_message({"user": "a"})[:-1] + b"x", "08P01", "terminator"),
    ],
    ids=["http", "tls-hello", "oversized", "negative", "protocol-2", "protocol-junk", "layout"],
)
def test_bad_startup_gets_a_native_error_and_is_recorded(
    gw: RunningGateway, token: str, data: bytes, code: str, words: str
) -> None:
    wire, fields = _raw_refusal(gw, data)
    assert fields["C"] == code
    assert words in fields["M"]
    row = wait_for_refusal(gw, wire.local_address)
    assert row["code"] == code
    _serves(gw, token)


def test_truncated_startup_then_close(gw: RunningGateway, token: str) -> None:
    wire = Wire(gw.port)
    try:
        wire.send(m.startup_message({"user": "alice", "database": "itdb"})[:11])
        wire.sock.shutdown(socket.SHUT_WR)
        # Nothing to answer: the client left. The gateway closes its side.
        assert wire.until_closed() == []
    finally:
        wire.close()
    _serves(gw, token)


def test_client_that_stalls_half_way_through_startup_is_cut_off(
    gw: RunningGateway, token: str
) -> None:
    wire = Wire(_impatient_port(gw), timeout=20)
    try:
        wire.send(m.startup_message({"user": "alice", "database": "itdb"})[:10])
        fields = _fatal(wire)  # arrives once the listener's 1 s deadline passed
    finally:
        wire.close()
    assert fields["C"] == "08P01"
    assert "in time" in fields["M"]
    row = wait_for_refusal(gw, wire.local_address)
    assert row["code"] == "08P01"
    _serves(gw, token)


def test_client_that_never_sends_its_password_is_cut_off(gw: RunningGateway, token: str) -> None:
    wire = Wire(_impatient_port(gw), timeout=20)
    try:
        wire.startup(user="alice", database="itdb")
        first = wire.read()
        assert first == (b"R", b"\x00\x00\x00\x03")
        fields = _fatal(wire)
    finally:
        wire.close()
    assert fields["C"] == "08P01"
    wait_for_refusal(gw, wire.local_address)
    _serves(gw, token)


def test_oversized_password_message(gw: RunningGateway, token: str) -> None:
    wire = Wire(gw.port)
    try:
        wire.startup(user="alice", database="itdb")
        assert wire.read() == (b"R", b"\x00\x00\x00\x03")
        wire.send(b"p\x7f\xff\xff\xff")
        fields = _fatal(wire)
    finally:
        wire.close()
    assert fields["C"] == "08P01"
    assert token not in json.dumps(fields)
    assert wait_for_refusal(gw, wire.local_address)["code"] == "08P01"
    _serves(gw, token)


def test_wrong_message_instead_of_the_password(gw: RunningGateway, token: str) -> None:
    wire = Wire(gw.port)
    try:
        wire.startup(user="alice", database="itdb")
        assert wire.read() == (b"R", b"\x00\x00\x00\x03")
        wire.send(m.query("select 1"))
        fields = _fatal(wire)
    finally:
        wire.close()
    assert fields["C"] == "08P01"
    assert "password" in fields["M"]
    assert wait_for_refusal(gw, wire.local_address)["code"] == "08P01"
    _serves(gw, token)


# --------------------------------------------------------------------------- after auth


def _session_of(gw: RunningGateway, client_address: str) -> dict[str, Any]:
    deadline = time.monotonic() + 15
    for _ in range(100):
        rows = json.loads(gw.cli("audit", "sessions", "--json", "--limit", "500").stdout)
        for s in rows:
            if s["client_addr"] == client_address and not s["live"]:
                return dict(s)
        if time.monotonic() > deadline:
            break
        time.sleep(0.2)
    raise AssertionError(f"no ended session from {client_address}")


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"\xff\x00\x00\x00\x08junk", "unexpected frontend message type"),
        (b"Q\x7f\xff\xff\xff", "invalid message length"),
        (b"Q\x00\x00\x00\x02", "invalid message length"),
        (b"P\x00\x00\x00\x06s\x00", "unterminated"),
        (b"B\x00\x00\x00\x0a\x00\x00\xff\xff\x00\x00", "negative"),
    ],
    ids=["unknown-type", "oversized", "short-length", "cut-parse", "negative-format-count"],
)
def test_garbage_after_authentication(
    gw: RunningGateway, token: str, data: bytes, words: str
) -> None:
    wire = Wire(gw.port)
    try:
        assert wire.login(token, user="alice", database="itdb") is None
        wire.send(m.query("select 'before'"))
        msgs = wire.read_until(b"Z")
        assert any(t == b"D" and b"before" in p for t, p in msgs)
        wire.send(data)
        fields = _fatal(wire)
    finally:
        wire.close()
    assert fields["C"] == "08P01"
    assert words in fields["M"], fields
    session = _session_of(gw, wire.local_address)
    assert session["end_reason"] == "protocol_error", session
    _serves(gw, token)


def test_fifty_idle_connections_do_not_block_a_session(gw: RunningGateway, token: str) -> None:
    idle: list[socket.socket] = []
    try:
        for _ in range(50):
            idle.append(socket.create_connection(("127.0.0.1", gw.port), timeout=10))
        with psycopg.connect(gw.dsn(token, sslmode="disable"), connect_timeout=10) as conn:
            for i in range(20):
                assert conn.execute("select %s::int", (i,)).fetchone() == (i,)
        # They are still held open (30 s startup deadline on this listener), not dropped.
        idle[0].setblocking(False)
        with pytest.raises(BlockingIOError):
            idle[0].recv(1)
    finally:
        for s in idle:
            s.close()
    _serves(gw, token)


# --------------------------------------------------------------------------- fail closed


def _worker_pids(gw: RunningGateway) -> list[int]:
    """The `lockgate serve` worker processes (children of the supervisor)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])
        if ppid == gw.proc.pid:
            pids.append(int(entry))
    return pids


def test_statement_is_refused_when_the_audit_journal_cannot_be_written(
    gw: RunningGateway, token: str, pg_server: tuple[str, int, str], it_database: str
) -> None:
    """Make journal appends fail (file-size limit 0 on the worker: EFBIG) — root ignores
    `chmod`, and the worker keeps its journal open, so permissions cannot provoke it."""
    host, port, user = pg_server
    direct = psycopg.connect(host=host, port=port, user=user, dbname=it_database, autocommit=True)
    direct.execute("create table if not exists failclosed (v text)")
    workers = _worker_pids(gw)
    assert len(workers) == 1, workers
    pid = workers[0]
    limits = resource.prlimit(pid, resource.RLIMIT_FSIZE)
    try:
        with psycopg.connect(gw.dsn(token, sslmode="disable"), autocommit=True) as conn:
            conn.execute("insert into failclosed values ('before')")
            resource.prlimit(pid, resource.RLIMIT_FSIZE, (0, limits[1]))
            try:
                with pytest.raises(psycopg.Error) as info:
                    conn.execute("insert into failclosed values ('during')")
            finally:
                resource.prlimit(pid, resource.RLIMIT_FSIZE, limits)
            assert info.value.sqlstate == "58000"
            assert "audit" in str(info.value)
            assert "not forwarded" in str(info.value)
            # Recovered: the same session goes on.
            conn.execute("insert into failclosed values ('after')")
        rows = {r[0] for r in direct.execute("select v from failclosed").fetchall()}
        assert rows == {"before", "after"}
    finally:
        resource.prlimit(pid, resource.RLIMIT_FSIZE, limits)
        direct.close()
    _serves(gw, token)
