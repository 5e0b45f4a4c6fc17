"""Statement search on SQLite (FTS5): words, filters, and the index filled by the ingester."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from audit_builders import DONE, make_command, make_session
from sqlalchemy.engine import Engine

from lockgate.audit.recorder import AuditRecorder
from lockgate.audit.search import SearchFilter, search
from lockgate.model import Decision, DecisionKind

DENY = Decision(DecisionKind.DENY, rule="no-drop", reason="drops need a review")


async def fill(engine: Engine, journal_dir: Path) -> None:
    rec = AuditRecorder(engine, journal_dir)
    await rec.start()
    alice = make_session("s-a", subject="alice", resource="shop", groups=frozenset({"dba"}))
    bob = make_session("s-b", subject="bob", resource="billing", groups=frozenset({"eng"}))
    for s in (alice, bob):
        await rec.session_started(s)
    await rec.command_started(make_command("s-a", 1, "SELECT email FROM customers"))
    rec.command_finished("s-a", 1, DONE)
    await rec.command_started(make_command("s-a", 2, "DROP TABLE customers", decision=DENY))
    await rec.command_started(make_command("s-b", 1, "select Total from invoices_2024"))
    await rec.command_started(make_command("s-b", 2, "UPDATE customers SET email = $1"))
    await rec.close()


def found(engine: Engine, **kw: object) -> list[tuple[str, int]]:
    return [(c["session_id"], c["seq"]) for c in search(engine, SearchFilter(**kw))]  # type: ignore[arg-type]


async def test_words_and_filters(engine: Engine, journal_dir: Path) -> None:
    await fill(engine, journal_dir)
    assert set(found(engine, text="customers")) == {("s-a", 1), ("s-a", 2), ("s-b", 2)}
    assert found(engine, text="EMAIL customers", subject="alice") == [("s-a", 1)]
    assert found(engine, text="total") == [("s-b", 1)]  # case folded
    assert found(engine, text="custom") == []  # whole words
    assert found(engine, decision="deny") == [("s-a", 2)]
    assert found(engine, rule="no-drop") == [("s-a", 2)]
    assert set(found(engine, group="eng")) == {("s-b", 1), ("s-b", 2)}
    assert found(engine, group="en") == []
    assert set(found(engine, resource="billing", text="customers")) == {("s-b", 2)}
    assert len(found(engine, protocol="postgres")) == 4
    assert found(engine, protocol="ssh") == []
    soon = datetime.now(UTC) + timedelta(minutes=1)
    assert found(engine, since=soon) == [] and len(found(engine, until=soon)) == 4
    assert len(found(engine, limit=2)) == 2
    row = search(engine, SearchFilter(text="drop"))[0]
    assert row["subject"] == "alice" and row["reason"] == "drops need a review"
