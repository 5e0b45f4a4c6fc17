"""Retention and legal hold: purge deletes what expired, skips held sessions, and leaves every
chain verifiable; a deletion passed off as a purge is caught."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from audit_builders import DONE, make_command, make_session, rows
from sqlalchemy import text
from sqlalchemy.engine import Engine

from lockgate.audit.recorder import AuditRecorder
from lockgate.audit.retention import UnknownSession, hold, list_holds, purge, release
from lockgate.audit.search import SearchFilter, search
from lockgate.audit.tables import audit_checkpoints, commands, refusals, sessions
from lockgate.audit.verify import verify
from lockgate.model import ClientInfo, SessionEnd

LATER = datetime.now(UTC) + timedelta(days=400)


async def fill(engine: Engine, journal_dir: Path) -> None:
    rec = AuditRecorder(engine, journal_dir)
    await rec.start()
    for sid, resource in (("old-1", "shop"), ("old-2", "shop"), ("keep-1", "billing")):
        await rec.session_started(make_session(sid, resource=resource))
        for seq in (1, 2):
            await rec.command_started(make_command(sid, seq, f"SELECT {seq} FROM orders"))
            rec.command_finished(sid, seq, DONE)
        rec.session_ended(sid, SessionEnd.CLIENT_TERMINATED, 1, 2)
    await rec.session_started(make_session("live-1", resource="shop"))
    await rec.connection_refused(ClientInfo("h:1", "postgres"), "shop", None, "28P01", "x")
    await rec.close()


def shop_only(resource: str) -> float | None:
    return 365 * 86400 if resource == "shop" else None


@pytest.fixture
async def filled(engine: Engine, journal_dir: Path) -> Engine:
    await fill(engine, journal_dir)
    return engine


async def test_nothing_expires_before_its_time(filled: Engine, journal_dir: Path) -> None:
    result = purge(filled, shop_only, journal_dir.parent)
    assert (result.sessions, result.refusals) == (0, 0)


async def test_purge_deletes_expired_and_the_chain_still_verifies(
    filled: Engine, journal_dir: Path
) -> None:
    dry = purge(filled, shop_only, journal_dir.parent, dry_run=True, now=LATER)
    # live-1 never ended: it expires by its start; billing has no retention
    assert (dry.sessions, dry.commands, dry.refusals) == (3, 4, 1)
    assert len(rows(filled, sessions)) == 4
    result = purge(filled, shop_only, journal_dir.parent, now=LATER)
    assert (result.sessions, result.commands, result.refusals) == (3, 4, 1)
    assert [r.id for r in rows(filled, sessions)] == ["keep-1"]
    assert len(rows(filled, commands)) == 2 and not rows(filled, refusals)
    # old-1, old-2: start, 2 commands chained with their outcomes, end; live-1; a refusal.
    assert result.events == 2 * 4 + 1 + 1
    report = verify(filled, journal_dir.parent)
    assert report.ok, report.findings()
    assert report.chains[0].purged == result.events
    assert [c.kind for c in rows(filled, audit_checkpoints)].count("purge") == 2
    # Search no longer finds purged statements (the FTS rows went with them).
    found = search(filled, SearchFilter(text="orders"))
    assert {c["session_id"] for c in found} == {"keep-1"}


async def test_held_sessions_are_kept_until_released(filled: Engine, journal_dir: Path) -> None:
    assert hold(filled, "old-2", "case 4711", by="legal") == "old-2"
    assert [h["reason"] for h in list_holds(filled)] == ["case 4711"]
    result = purge(filled, shop_only, journal_dir.parent, now=LATER)
    assert result.held == 1 and result.sessions == 2
    assert {r.id for r in rows(filled, sessions)} == {"old-2", "keep-1"}
    assert release(filled, "old-2") == "old-2"
    assert release(filled, "old-2") is None
    assert purge(filled, shop_only, journal_dir.parent, now=LATER).sessions == 1
    assert verify(filled, journal_dir.parent).ok


async def test_hold_names_an_unknown_session(filled: Engine) -> None:
    with pytest.raises(UnknownSession, match="no session"):
        hold(filled, "nope", "x")
    with pytest.raises(UnknownSession, match="several sessions"):
        hold(filled, "old", "x")


async def test_a_deletion_dressed_as_a_purge_is_caught(filled: Engine, journal_dir: Path) -> None:
    purge(filled, shop_only, journal_dir.parent, now=LATER)
    with filled.begin() as conn:
        cp = conn.execute(text("SELECT min(id) FROM audit_checkpoints WHERE kind = 'purge'"))
        cp_id = cp.scalar_one()
        conn.execute(text("DELETE FROM commands WHERE session_id = 'keep-1' AND seq = 2"))
        conn.execute(
            text("UPDATE audit_events SET purge = :cp WHERE session_id = 'keep-1' AND item = 2"),
            {"cp": cp_id},
        )
    (finding,) = verify(filled, journal_dir.parent).findings()
    assert finding.problem == "checkpoint" and "the purge sealed at position" in finding.detail
