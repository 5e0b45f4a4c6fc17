"""The row gate's counting on byte fixtures: where it stops, what it records."""

from __future__ import annotations

import asyncio

from lockgate.gate import Admission
from lockgate.model import Command, DecisionKind, ResultSummary
from lockgate.policy.guardrails import RowWatch
from lockgate.protocols.postgres import messages as m
from lockgate.proxy import pg_rowgate
from lockgate.proxy.pg_rowgate import RowGate
from lockgate.sql.analyze import Analysis


def _gate(threshold: int = 3, action: DecisionKind = DecisionKind.DENY) -> RowGate:
    watch = RowWatch("bulk", action, threshold, 1, "no bulk reads", "kinds=select")
    return RowGate(Admission(Command("s", 1, "SELECT 1"), Analysis(statements=()), watch))


def _row(i: int) -> bytes:
    return m.message(b"D", b"\x00\x01" + (1).to_bytes(4, "big") + str(i % 10).encode())


def _stream(rows: int, end: bytes = m.message(b"C", b"SELECT 9\x00")) -> bytes:
    return b"".join(_row(i) for i in range(rows)) + end


def test_rows_under_the_threshold_pass_and_are_counted() -> None:
    gate = _gate(3)
    buf = _stream(2)
    spans, _ = m.split_messages(buf)
    assert gate.take(buf, spans, 0) == 2
    assert gate.rows == 2 and gate.state == pg_rowgate.COUNTING


def test_the_first_row_past_the_threshold_pauses() -> None:
    gate = _gate(3)
    buf = _stream(5)
    spans, _ = m.split_messages(buf)
    assert gate.take(buf, spans, 0) == 3
    assert gate.rows == 3 and gate.state == pg_rowgate.PAUSED


def test_exactly_the_threshold_then_the_end_does_not_pause() -> None:
    gate = _gate(3)
    buf = _stream(3)
    spans, _ = m.split_messages(buf)
    assert gate.take(buf, spans, 0) == 3
    assert gate.state == pg_rowgate.COUNTING


def test_the_count_carries_across_chunks() -> None:
    gate = _gate(3)
    first = _stream(3, end=b"")
    spans, _ = m.split_messages(first)
    assert gate.take(first, spans, 0) == 3 and gate.state == pg_rowgate.COUNTING
    second = _stream(1)
    spans, _ = m.split_messages(second)
    assert gate.take(second, spans, 0) == 0 and gate.state == pg_rowgate.PAUSED


def test_a_deny_rule_refuses_and_drops_the_rest() -> None:
    gate = _gate(2)
    buf = _stream(4)
    spans, _ = m.split_messages(buf)
    gate.take(buf, spans, 0)
    asyncio.run(gate.review(None, None, lambda b: None, lambda: False))  # type: ignore[arg-type]
    assert gate.state == pg_rowgate.DISCARDING
    fields = m.parse_error_fields(gate.error[5:])
    assert fields["C"] == "42501" and "no bulk reads" in fields["M"]
    assert gate.take(buf, spans, 2) == 4 and gate.dropped == 2
    summary = gate.summary(ResultSummary(status="", error_code="57014", rows=None))
    assert summary.rows == 2 and summary.error_code == "42501"
    assert "upstream: 57014" in summary.status and "2 more rows dropped" in summary.status


def test_finished_upstream_sees_the_end_of_the_response() -> None:
    assert pg_rowgate.finished_upstream(_stream(2))
    assert not pg_rowgate.finished_upstream(_stream(2, end=b""))
    assert not pg_rowgate.finished_upstream(_stream(2, end=b"")[:-3])
