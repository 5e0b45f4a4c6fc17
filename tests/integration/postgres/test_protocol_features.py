"""Protocol corners through the gateway: streaming with bounded memory, huge values, odd framing,
FunctionCall, disconnects mid-stream and cancels across worker processes.

Some tests speak the wire protocol by hand (`RawSession`) to send exactly the bytes a
client library would never produce on its own.
"""

from __future__ import annotations

import json
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import errors
from tests.conftest import free_port
from tests.integration.postgres.conftest import RunningGateway, base_manifest, local_resource

pytestmark = pytest.mark.pg

RSS_LIMIT_KB = 300 * 1024


def _status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def _gateway_kb(gw: RunningGateway, field: str) -> int:
    """`field` (VmRSS, VmHWM) summed over the gateway's supervisor and its worker processes."""
    pid = gw.proc.pid
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    assert children, "the gateway runs no worker process"
    return sum(_status_kb(p, field) for p in [pid, *map(int, children)])


def _msg(type_: bytes, payload: bytes = b"") -> bytes:
    return type_ + struct.pack("!i", len(payload) + 4) + payload


def _query(sql: str) -> bytes:
    return _msg(b"Q", sql.encode() + b"\x00")


class RawSession:
    """A hand-driven PostgreSQL client over TLS: send bytes, read messages."""

    def __init__(self, port: int, token: str, database: str = "itdb") -> None:
        raw = socket.create_connection(("127.0.0.1", port), timeout=30)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.local_address = f"127.0.0.1:{raw.getsockname()[1]}"
        raw.sendall(struct.pack("!ii", 8, 80877103))
        assert raw.recv(1) == b"S"
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        self.sock = ctx.wrap_socket(raw)
        self._buf = bytearray()
        body = b"user\x00alice\x00database\x00" + database.encode() + b"\x00\x00"
        self.sock.sendall(struct.pack("!ii", len(body) + 8, 196608) + body)
        type_, payload = self.read()
        assert (type_, payload) == (b"R", struct.pack("!i", 3))
        self.sock.sendall(_msg(b"p", token.encode() + b"\x00"))
        hello = self.until_ready()
        self.backend_key = next(p for t, p in hello if t == b"K")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read(self) -> tuple[bytes, bytes]:
        while True:
            if len(self._buf) >= 5:
                (length,) = struct.unpack_from("!i", self._buf, 1)
                if len(self._buf) >= 1 + length:
                    type_, payload = bytes(self._buf[:1]), bytes(self._buf[5 : 1 + length])
                    del self._buf[: 1 + length]
                    return type_, payload
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise ConnectionError("gateway closed the connection")
            self._buf += chunk

    def until_ready(self) -> list[tuple[bytes, bytes]]:
        out: list[tuple[bytes, bytes]] = []
        for _ in range(1_000_000):
            type_, payload = self.read()
            out.append((type_, payload))
            if type_ == b"E" and b"SFATAL" in payload:
                raise AssertionError(f"fatal error: {payload!r}")
            if type_ == b"Z":
                return out
        raise AssertionError("no ReadyForQuery")

    def close(self) -> None:
        if self.sock.fileno() < 0:
            return
        try:
            self.sock.sendall(_msg(b"X"))
        finally:
            self.sock.close()


@pytest.fixture
def raw(gateway: RunningGateway, token: str) -> Iterator[RawSession]:
    s = RawSession(gateway.port, token)
    yield s
    s.close()


def _types(msgs: list[tuple[bytes, bytes]]) -> bytes:
    return b"".join(t for t, _ in msgs)


def _error_code(payload: bytes) -> str:
    for part in payload.split(b"\x00"):
        if part.startswith(b"C"):
            return part[1:].decode()
    return ""


def _ended_session(gateway: RunningGateway, client_address: str) -> dict[str, Any]:
    """The session from `client_address` once it has ended (bounded wait), with its commands.

    Found by address, not as the newest: until its start is ingested (asynchronously) the
    newest session in the audit is an earlier test's.
    """
    for _ in range(100):
        sessions = json.loads(gateway.cli("audit", "sessions", "--json", "--limit", "20").stdout)
        for s in sessions:
            if s["client_addr"] == client_address and not s["live"]:
                shown: dict[str, Any] = json.loads(
                    gateway.cli("audit", "show", s["id"], "--json").stdout
                )
                return shown
        time.sleep(0.1)
    raise AssertionError(f"the session from {client_address} never showed up as ended")


# ------------------------------------------------------------------ streaming and big values


def test_million_rows_stream_with_bounded_gateway_memory(
    gateway_factory: Callable[..., RunningGateway],
    pg_server: tuple[str, int, str],
    it_database: str,
) -> None:
    """1M rows (~260 MB) via COPY and 1M via a named cursor; the client stalls at first, so
    an unbounded gateway would have to buffer most of it."""
    host, port, user = pg_server
    gw = gateway_factory(
        base_manifest(free_port(), [local_resource("itdb", it_database, host, port, user)])
    )
    tok = gw.token()
    with psycopg.connect(gw.dsn(tok), autocommit=True) as conn:
        rows = 0
        size = 0
        peak = 0
        with conn.cursor().copy(
            "copy (select g, repeat('x', 250) from generate_series(1, 1000000) g) to stdout"
        ) as cp:
            for i, block in enumerate(cp):
                if i == 0:
                    time.sleep(2)  # a slow reader: the server keeps producing meanwhile
                rows += bytes(block).count(b"\n")
                size += len(block)
                if i % 500 == 0:
                    peak = max(peak, _gateway_kb(gw, "VmRSS"))
        assert rows == 1_000_000
        assert size > 250_000_000
        assert peak < RSS_LIMIT_KB, f"gateway RSS reached {peak} kB while streaming"

    with psycopg.connect(gw.dsn(tok)) as conn, conn.cursor(name="big") as cur:
        cur.itersize = 20000
        cur.execute("select g from generate_series(1, 1000000) g")
        count = 0
        total = 0
        for (g,) in cur:
            count += 1
            total += g
        assert (count, total) == (1_000_000, 1_000_000 * 1_000_001 // 2)
    assert _gateway_kb(gw, "VmHWM") < RSS_LIMIT_KB


def test_large_values_both_ways(gateway: RunningGateway, token: str) -> None:
    blob = bytes(range(256)) * (120 * 1024)  # 30 MB
    with psycopg.connect(gateway.dsn(token)) as conn:
        got = conn.execute("select %s::bytea, length(%s::bytea)", (blob, blob)).fetchone()
        assert got is not None
        assert got[1] == len(blob)
        assert got[0] == blob
        text = conn.execute("select repeat('ab', 10000000)").fetchone()
        assert text is not None and len(text[0]) == 20_000_000


# ------------------------------------------------------------------ framing


def test_a_query_sent_one_byte_at_a_time(raw: RawSession) -> None:
    data = _query("select 'split' || 'ted'")
    for i in range(len(data)):
        raw.send(data[i : i + 1])
    msgs = raw.until_ready()
    assert _types(msgs) == b"TDCZ"
    assert b"splitted" in msgs[1][1]


def test_many_messages_in_one_write(raw: RawSession) -> None:
    """50 simple queries and 50 extended batches pipelined in one write: all answered in order."""
    batch = bytearray()
    for i in range(50):
        batch += _query(f"select {i}")
        sql = f"select {i} + $1::int".encode()
        batch += _msg(b"P", b"\x00" + sql + b"\x00\x00\x00")
        batch += _msg(
            b"B", b"\x00\x00\x00\x00\x00\x01" + struct.pack("!i", 4) + b"1000" + b"\x00\x00"
        )
        batch += _msg(b"E", b"\x00" + struct.pack("!i", 0))
        batch += _msg(b"S")
    raw.send(bytes(batch))
    for i in range(50):
        simple = raw.until_ready()
        assert _types(simple) == b"TDCZ"
        assert simple[1][1].endswith(str(i).encode())
        ext = raw.until_ready()
        assert _types(ext) == b"12DCZ"
        assert ext[2][1].endswith(str(i + 1000).encode())


def test_extended_error_skips_to_sync_and_recovers(raw: RawSession) -> None:
    bad = _msg(b"P", b"\x00selec 1\x00\x00\x00")
    good = _msg(b"P", b"\x00select 7\x00\x00\x00")
    bind = _msg(b"B", b"\x00\x00\x00\x00\x00\x00\x00\x00")
    execute = _msg(b"E", b"\x00" + struct.pack("!i", 0))
    raw.send(bad + bind + execute + _msg(b"S") + good + bind + execute + _msg(b"S"))
    first = raw.until_ready()
    assert _types(first) == b"EZ" and _error_code(first[0][1]) == "42601"
    second = raw.until_ready()
    assert _types(second) == b"12DCZ"


def test_empty_query_and_multi_statement_with_error(raw: RawSession) -> None:
    raw.send(_query(""))
    assert _types(raw.until_ready()) == b"IZ"
    raw.send(_query("select 1; select 1/0; select 3"))
    msgs = raw.until_ready()
    assert _types(msgs) == b"TDCEZ"
    assert _error_code(msgs[3][1]) == "22012"


def test_function_call_is_recorded(gateway: RunningGateway, raw: RawSession) -> None:
    # int4pl(int4, int4) has the fixed OID 177; two binary int4 arguments, binary result.
    payload = (
        struct.pack("!i", 177)
        + struct.pack("!hh", 1, 1)
        + struct.pack("!h", 2)
        + struct.pack("!ii", 4, 40)
        + struct.pack("!ii", 4, 2)
        + struct.pack("!h", 1)
    )
    raw.send(_msg(b"F", payload))
    msgs = raw.until_ready()
    assert _types(msgs) == b"VZ"
    assert msgs[0][1] == struct.pack("!ii", 4, 42)
    raw.close()
    commands = _ended_session(gateway, raw.local_address)["commands"]
    assert [c["text"] for c in commands] == ["-- fastpath function call (function oid 177)"]
    assert commands[0]["finished_at"] is not None


# ------------------------------------------------------------------ disconnects and cancels


def _backends(pg_server: tuple[str, int, str], database: str) -> int:
    host, port, user = pg_server
    with psycopg.connect(host=host, port=port, user=user, dbname="postgres", autocommit=True) as c:
        row = c.execute(
            "select count(*) from pg_stat_activity "
            "where datname = %s and backend_type = 'client backend'",
            (database,),
        ).fetchone()
        assert row is not None
        return int(row[0])


def test_client_vanishing_mid_stream_ends_the_upstream_session(
    gateway: RunningGateway, token: str, pg_server: tuple[str, int, str], it_database: str
) -> None:
    for _ in range(100):
        if _backends(pg_server, it_database) == 0:
            break
        time.sleep(0.1)
    before = _backends(pg_server, it_database)
    s = RawSession(gateway.port, token)
    s.send(_query("select g, repeat('y', 500) from generate_series(1, 5000000) g"))
    for _ in range(100):
        s.read()
    assert _backends(pg_server, it_database) == before + 1
    s.sock.close()  # no Terminate: the client just disappears
    for _ in range(200):
        if _backends(pg_server, it_database) == before:
            break
        time.sleep(0.05)
    assert _backends(pg_server, it_database) == before


def test_cancel_reaches_the_right_worker(
    gateway_factory: Callable[..., RunningGateway],
    pg_server: tuple[str, int, str],
    it_database: str,
) -> None:
    """With two worker processes a CancelRequest lands on either; both paths must work."""
    host, port, user = pg_server
    manifest = base_manifest(free_port(), [local_resource("itdb", it_database, host, port, user)])
    manifest["listeners"][0]["workers"] = 2
    gw = gateway_factory(manifest)
    tok = gw.token()
    canceled = 0
    for _ in range(8):
        with psycopg.connect(gw.dsn(tok), autocommit=True) as conn:
            timer = threading.Timer(0.3, conn.cancel_safe)
            timer.start()
            try:
                conn.execute("select pg_sleep(20)")
            except errors.QueryCanceled:
                canceled += 1
            finally:
                timer.cancel()
                # The query ends as soon as the server acts on the cancel, before the cancel
                # connection is closed: let cancel_safe finish (and raise, if it fails)
                # before the next try, and before the gateway stops at teardown.
                timer.join()
    assert canceled == 8
