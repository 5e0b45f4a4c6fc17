"""The relay's one-step settling of a whole answer does exactly what its general path does.

`PgRelay._answered` handles the usual upstream chunk (one statement's whole answer) without
the message-by-message loop. Each case here feeds the same client chunks and answers to a
relay with it off and on (with the Python reference of the shape test, and with the
compiled one when built), and compares what the client received, what the journal holds
(commands, outcomes, captured results) and the transaction status.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from tests.unit.protocols.postgres.test_results import complete, data_row, row_description

from lockgate.audit import journal
from lockgate.config.loader import load_manifest_text
from lockgate.gate import Gate
from lockgate.model import ClientInfo, Principal
from lockgate.protocols.postgres import messages as m
from lockgate.proxy import pg_relay
from lockgate.proxy.pg_relay import PgRelay

READY_IDLE = m.ready_for_query(b"I")
READY_IN_TX = m.ready_for_query(b"T")
BIND_COMPLETE = m.message(b"2", b"")
PARSE_COMPLETE = m.message(b"1", b"")
PREPARED = "SELECT n FROM t WHERE n = $1"


def query(sql: str) -> bytes:
    return m.message(b"Q", sql.encode() + b"\x00")


def rows(n: int) -> bytes:
    return b"".join(data_row(str(i).encode()) for i in range(n))


def bind_execute_sync(value: bytes, describe: bool = False, parse: str = "") -> bytes:
    """Bind `value` to the statement `stmt` (or to `parse`, parsed unnamed first), Execute,
    Sync; with `describe`, a Describe of the portal before the Execute (what libpq sends)."""
    name = b"" if parse else b"stmt"
    bind = b"\x00" + name + b"\x00\x00\x00\x00\x01" + len(value).to_bytes(4, "big") + value
    out = m.message(b"P", b"\x00" + parse.encode() + b"\x00\x00\x00") if parse else b""
    out += m.message(b"B", bind + b"\x00\x00")
    if describe:
        out += m.message(b"D", b"P\x00")
    execute = m.message(b"E", b"\x00\x00\x00\x00\x00")
    return out + execute + m.message(b"S", b"")


# Each case: (client chunk, the upstream chunks answering it), in order.
T_N = row_description(("n", 0))
CASES: dict[str, list[tuple[bytes, list[bytes]]]] = {
    "simple": [
        (query("SELECT 1"), [T_N + rows(1) + complete("SELECT 1") + READY_IDLE]),
        (query("SELECT n FROM t"), [T_N + rows(5) + complete("SELECT 5") + READY_IDLE]),
        (query("SELECT n FROM t WHERE false"), [T_N + complete("SELECT 0") + READY_IDLE]),
        (query("BEGIN"), [complete("BEGIN") + READY_IN_TX]),
        (query("UPDATE t SET n = 2"), [complete("UPDATE 3") + READY_IN_TX]),
        (query("COMMIT"), [complete("COMMIT") + READY_IDLE]),
    ],
    "answer in two chunks": [
        (query("SELECT 1; SELECT 2"), [T_N + rows(1) + complete("SELECT 1"), T_N + rows(2)]),
        (b"", [complete("SELECT 2") + READY_IDLE]),
        (query("SELECT 3; SELECT 4"), [T_N + rows(1) + complete("SELECT 1")]),
        (b"", [T_N + rows(3) + complete("SELECT 3") + READY_IDLE]),
    ],
    "not the usual shape": [
        (query("SELECT x"), [m.error_response("42703", "no column x") + READY_IDLE]),
        (
            query("SELECT 1; SELECT 2"),
            [T_N + rows(1) + complete("SELECT 1") + T_N + complete("SELECT 0") + READY_IDLE],
        ),
        (query("SELECT 1"), [T_N + rows(1) + complete("SELECT 1") + READY_IDLE + b"Z\x00"]),
        (query("SELECT 2"), [b"\x00\x00\x00\x05I"]),
    ],
    "prepared": [
        (
            m.message(b"P", b"stmt\x00" + PREPARED.encode() + b"\x00\x00\x00")
            + m.message(b"D", b"Sstmt\x00")
            + m.message(b"S", b""),
            [PARSE_COMPLETE + m.message(b"t", b"\x00\x00") + T_N + READY_IDLE],
        ),
        (bind_execute_sync(b"1"), [BIND_COMPLETE + rows(1) + complete("SELECT 1") + READY_IDLE]),
        (bind_execute_sync(b"2"), [BIND_COMPLETE + complete("SELECT 0") + READY_IDLE]),
        (bind_execute_sync(b"3"), [BIND_COMPLETE + rows(4) + complete("SELECT 4") + READY_IDLE]),
        (
            bind_execute_sync(b"4") + bind_execute_sync(b"5"),
            [
                BIND_COMPLETE + rows(1) + complete("SELECT 1") + READY_IDLE,
                BIND_COMPLETE + rows(2) + complete("SELECT 2") + READY_IDLE,
            ],
        ),
    ],
    "prepared, described (libpq)": [
        (
            m.message(b"P", b"stmt\x00" + PREPARED.encode() + b"\x00\x00\x00")
            + m.message(b"S", b""),
            [PARSE_COMPLETE + READY_IDLE],
        ),
        (
            bind_execute_sync(b"1", describe=True),
            [BIND_COMPLETE + T_N + rows(1) + complete("SELECT 1") + READY_IDLE],
        ),
        (
            bind_execute_sync(b"2", describe=True),
            [BIND_COMPLETE + T_N + complete("SELECT 0") + READY_IN_TX],
        ),
        (
            bind_execute_sync(b"3", describe=True),
            [BIND_COMPLETE + m.message(b"n", b"") + complete("UPDATE 2") + READY_IDLE],
        ),
    ],
    "extended, parsed each time": [
        (
            bind_execute_sync(b"1", describe=True, parse=PREPARED),
            [PARSE_COMPLETE + BIND_COMPLETE + T_N + rows(2) + complete("SELECT 2") + READY_IDLE],
        ),
        (
            bind_execute_sync(b"2", parse="UPDATE t SET n = $1"),
            [PARSE_COMPLETE + BIND_COMPLETE + complete("UPDATE 7") + READY_IDLE],
        ),
        (
            bind_execute_sync(b"3", describe=True, parse=PREPARED),
            [PARSE_COMPLETE + BIND_COMPLETE + m.error_response("22P02", "bad") + READY_IDLE],
        ),
    ],
}


class _Sink:
    closed = False
    peer = None

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.data += data

    def set_sink(self, sink: object) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


MANIFEST = """\
version: 1
state:
  url: sqlite:///{folder}/lockgate.db
  dir: {folder}
listeners:
  - name: postgres
    address: 127.0.0.1:0
    tls:
      enabled: false
resources:
  - name: db
    upstream: {{host: 127.0.0.1, port: 5432, database: db, user: u}}
access:
  - name: all
    resources: [db]
    groups: [g]
"""


def _replay(
    folder: Path, steps: list[tuple[bytes, list[bytes]]]
) -> tuple[bytes, bytes, bytes, list[list[Any]]]:
    """What the client got, what went upstream, the last status, the journal's records."""
    folder.mkdir()
    client, upstream, status = asyncio.run(_drive(folder, steps))
    (path,) = folder.glob("journal/*.jnl")
    records, _ = journal.decode(path.read_bytes())
    return client, upstream, status, [_steady(r) for r in records]


async def _drive(
    folder: Path, steps: list[tuple[bytes, list[bytes]]]
) -> tuple[bytes, bytes, bytes]:
    gate = Gate.from_manifest(load_manifest_text(MANIFEST.format(folder=folder)), ingest=False)
    await gate.start()
    try:
        principal = Principal("someone", frozenset({"g"}))
        resource, _ = gate.authorize(principal, "db")
        session = await gate.open_session(principal, resource, ClientInfo("127.0.0.1:1", "pg"))
        client, upstream = _Sink(), _Sink()
        relay = PgRelay(gate, session, client, upstream, lambda _why: None)  # type: ignore[arg-type]
        relay.start()
        for chunk, answers in steps:
            if chunk:
                relay._from_client(chunk)
            for answer in answers:
                relay._from_upstream(answer)
        relay.finish_all("the test ended")
        status = relay._tx_status
        await gate.audit.sync()
    finally:
        await gate.close()
    return bytes(client.data), bytes(upstream.data), status


def _steady(record: list[Any]) -> list[Any]:
    """A journal record without what differs from run to run (times, ids, durations)."""
    kind = record[0]
    if kind == "C":  # [C, session, seq, at, ...]
        return [kind, record[2], *record[4:]]
    if kind == "F":  # [F, at, rows, status, code, message, bytes_out, duration, session, ...]
        return [kind, *record[2:7], *record[9:]]
    return [kind]


SHAPES = {"python": m.answer_shape_py, "compiled": m.ANSWER_COMPILED}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_settling_in_one_step_changes_nothing(
    case: str, shape: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    test = SHAPES[shape]
    if test is None:
        pytest.skip("the framing kernel is not compiled here (no C compiler at install)")
    monkeypatch.setattr(pg_relay, "_ANSWER", None)
    general = _replay(tmp_path / "general", CASES[case])
    monkeypatch.setattr(pg_relay, "_ANSWER", test)
    settled = calls = 0
    answered = PgRelay._answered

    def counting(self: PgRelay, buf: bytes, found: Any) -> bool:
        nonlocal settled, calls
        calls += 1
        done = answered(self, buf, found)
        settled += done
        return done

    monkeypatch.setattr(PgRelay, "_answered", counting)
    one_step = _replay(tmp_path / "one-step", CASES[case])
    assert one_step == general
    assert general[3], "the journal recorded nothing: the replay is broken"
    if case == "not the usual shape":
        assert settled == 0
    else:
        assert settled >= 2, f"{settled} of {calls} answers settled in one step"
