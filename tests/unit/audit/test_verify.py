"""Hash chains over audit events: a clean store verifies; edits, deletions and insertions made
directly in the store are named by chain and position; crashes leave a verifiable chain."""

from __future__ import annotations

import os
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from audit_builders import DONE, make_command, make_session, rows
from sqlalchemy import text
from sqlalchemy.engine import Engine

from lockgate.audit import journal
from lockgate.audit.chain import HEAD_FILE, KEY_FILE, ChainKeyError, load_or_create_key
from lockgate.audit.ingest import JournalIngester, catch_up
from lockgate.audit.recorder import AuditRecorder, _command_record
from lockgate.audit.tables import audit_checkpoints, audit_events, commands, sessions
from lockgate.audit.verify import Report, verify
from lockgate.model import ClientInfo, SessionEnd

REFUSED_FROM = ClientInfo("192.0.2.7:40000", "postgres")


async def fill(engine: Engine, journal_dir: Path, n_sessions: int = 3) -> None:
    """Sessions with 3 finished commands each, ended, and one refusal; ingested and sealed."""
    rec = AuditRecorder(engine, journal_dir)
    await rec.start()
    for i in range(n_sessions):
        sid = f"s-{i}"
        await rec.session_started(make_session(sid))
        for seq in (1, 2, 3):
            await rec.command_started(make_command(sid, seq, f"SELECT {seq} FROM t{i}"))
            rec.command_finished(sid, seq, DONE)
        rec.session_ended(sid, SessionEnd.CLIENT_TERMINATED, 100, 2000)
    await rec.connection_refused(REFUSED_FROM, "shop", None, "28P01", "the token has expired")
    await rec.close()


def execute(engine: Engine, sql: str) -> None:
    with engine.begin() as conn:
        conn.execute(text(sql))


def position_of(engine: Engine, kind: str, session_id: str, item: int | None) -> int:
    e = audit_events
    where = [e.c.kind == kind, e.c.session_id == session_id]
    where.append(e.c.item.is_(None) if item is None else e.c.item == item)
    (row,) = rows(engine, e, *where)
    return int(row.seq)


def drop_last_event(engine: Engine) -> int:
    """Remove the chain's last event and what it recorded, as a careful attacker would."""
    last = max(rows(engine, audit_events), key=lambda r: r.seq)
    sid, item = last.session_id, last.item
    undo = {
        "S": f"DELETE FROM sessions WHERE id = '{sid}'",
        "E": f"UPDATE sessions SET ended_at = NULL, end_reason = NULL, bytes_from_client = NULL,"
        f" bytes_to_client = NULL WHERE id = '{sid}'",
        "C": f"DELETE FROM commands WHERE session_id = '{sid}' AND seq = {item}",
        "F": f"UPDATE commands SET finished_at = NULL WHERE session_id = '{sid}' AND seq = {item}",
        "X": f"DELETE FROM commands WHERE session_id = '{sid}' AND seq = {item}",
        "R": f"DELETE FROM refusals WHERE id = {item}",
    }[last.kind]
    execute(engine, undo)
    execute(engine, f"DELETE FROM audit_events WHERE seq = {last.seq}")
    return int(last.seq)


def only_finding(report: Report) -> tuple[str, int | None, str]:
    (f,) = report.findings()
    return f.problem, f.position, f.detail


@pytest.fixture
async def filled(engine: Engine, journal_dir: Path) -> Engine:
    await fill(engine, journal_dir)
    return engine


def state(journal_dir: Path) -> Path:
    return journal_dir.parent


async def test_a_clean_store_verifies_with_counts(filled: Engine, journal_dir: Path) -> None:
    report = verify(filled, state(journal_dir))
    assert report.ok, report.findings()
    (chain,) = report.chains
    # 3 sessions x (start, 3 x command with its outcome, end) + 1 refusal
    assert chain.events == 3 * 5 + 1 == chain.last_seq == chain.sealed_seq
    assert chain.checkpoints >= 1 and chain.head_checked
    assert report.as_dict()["events"] == 16


def test_the_key_is_private_and_a_readable_one_is_refused(tmp_path: Path) -> None:
    path = tmp_path / KEY_FILE
    load_or_create_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    os.chmod(path, 0o644)
    with pytest.raises(ChainKeyError, match="accessible by other users") as caught:
        load_or_create_key(path)
    assert "chmod 600" in caught.value.hint


async def test_an_edited_command_is_named(filled: Engine, journal_dir: Path) -> None:
    execute(filled, "UPDATE commands SET text = 'SELECT 0' WHERE session_id = 's-1' AND seq = 2")
    problem, position, detail = only_finding(verify(filled, state(journal_dir)))
    assert problem == "altered"
    assert position == position_of(filled, "X", "s-1", 2)
    assert "command #2 of session s-1" in detail


async def test_an_edited_outcome_and_session_are_named(filled: Engine, journal_dir: Path) -> None:
    execute(filled, "UPDATE commands SET rows = 0 WHERE session_id = 's-2' AND seq = 3")
    problem, position, _ = only_finding(verify(filled, state(journal_dir)))
    assert (problem, position) == ("altered", position_of(filled, "X", "s-2", 3))
    execute(filled, "UPDATE sessions SET subject = 'mallory' WHERE id = 's-0'")
    problem, position, detail = only_finding(verify(filled, state(journal_dir)))
    assert (problem, position) == ("altered", position_of(filled, "S", "s-0", None))
    assert "session start of session s-0" in detail


async def test_a_deleted_command_is_named(filled: Engine, journal_dir: Path) -> None:
    execute(filled, "DELETE FROM commands WHERE session_id = 's-1' AND seq = 3")
    problem, position, detail = only_finding(verify(filled, state(journal_dir)))
    assert (problem, position) == ("deleted", position_of(filled, "X", "s-1", 3))
    assert "was deleted" in detail


async def test_a_deleted_event_is_named(filled: Engine, journal_dir: Path) -> None:
    execute(filled, "DELETE FROM audit_events WHERE seq IN (7, 8)")
    report = verify(filled, state(journal_dir))
    f = report.chains[0].finding
    assert f is not None and (f.problem, f.position) == ("deleted", 7)
    assert "positions 7 to 8 are missing" in f.detail
    # Their rows are still there, now described by no event.
    assert [u.problem for u in report.unchained] == ["inserted", "inserted"]


async def test_an_inserted_row_is_named(filled: Engine, journal_dir: Path) -> None:
    execute(
        filled,
        "INSERT INTO commands (session_id, seq, started_at, text, kind, tables, decision, rule,"
        " reason) VALUES ('s-0', 9, '2026-01-01 00:00:00.000000', 'SELECT 1', '', '[]',"
        " 'allow', '', '')",
    )
    execute(
        filled,
        "INSERT INTO refusals (at, client_addr, protocol, resource, code, reason)"
        " VALUES ('2026-01-01 00:00:00.000000', 'x', 'postgres', 'shop', '28000', 'x')",
    )
    report = verify(filled, state(journal_dir))
    assert not report.ok and all(c.finding is None for c in report.chains)
    details = [f.detail for f in report.findings()]
    assert any(
        d.startswith("1 command record(s) are in no chain") and "s-0 #9" in d for d in details
    )
    assert any(d.startswith("1 refused connection record(s)") for d in details)


async def test_a_rewritten_chain_fails_its_signed_checkpoint(
    filled: Engine, journal_dir: Path
) -> None:
    """Alter a row, then recompute its digest and every later link, as a store-only attacker
    can: the signed checkpoint no longer matches."""
    from lockgate.audit.chain import event_digest, genesis, link
    from lockgate.audit.verify import _event_query

    execute(filled, "UPDATE commands SET text = 'SELECT 0' WHERE session_id = 's-0' AND seq = 1")
    (chain,) = verify(filled).chains
    with filled.begin() as conn:
        events = conn.execute(_event_query(1)).all()
        prev = genesis(chain.name)
        for ev in events:
            m = ev._mapping
            prefix = {"S": "s_", "E": "s_", "C": "c_", "F": "c_", "X": "c_", "R": "r_"}[m["kind"]]
            values = {k[len(prefix) :]: v for k, v in m.items() if k.startswith(prefix)}
            digest = event_digest(m["kind"], values)
            prev = link(prev, digest)
            conn.execute(
                audit_events.update()
                .where(audit_events.c.seq == m["seq"])
                .values(digest=digest, hash=prev)
            )
    problem, position, detail = only_finding(verify(filled))
    assert problem == "checkpoint" and position == 16
    assert "differs from what its periodic checkpoint signed" in detail
    # A forged signature does not help.
    execute(
        filled, "UPDATE audit_checkpoints SET hash = (SELECT hash FROM audit_events WHERE seq = 16)"
    )
    problem, _, detail = only_finding(verify(filled))
    assert problem == "checkpoint" and "invalid signature" in detail


async def test_records_deleted_at_the_end_are_named(filled: Engine, journal_dir: Path) -> None:
    assert drop_last_event(filled) == 16
    problem, position, detail = only_finding(verify(filled))
    assert (problem, position) == ("deleted", 16)
    assert "a signed checkpoint covers position 16" in detail


async def test_the_head_file_anchors_events_after_the_last_checkpoint(
    filled: Engine, journal_dir: Path
) -> None:
    assert drop_last_event(filled) == 16
    execute(filled, "DELETE FROM audit_checkpoints")
    assert verify(filled).ok  # the store alone cannot tell
    problem, position, detail = only_finding(verify(filled, state(journal_dir)))
    assert (problem, position) == ("deleted", 16) and "this host wrote them" in detail


async def test_an_ingester_that_finds_its_chain_shortened_signs_a_break(
    filled: Engine, journal_dir: Path
) -> None:
    assert drop_last_event(filled) == 16
    execute(filled, "DELETE FROM audit_checkpoints")
    await fill(filled, journal_dir, n_sessions=0)  # the next start appends a refusal
    report = verify(filled)
    problem, position, detail = only_finding(report)
    assert (problem, position) == ("break", 16)
    assert "shorter than it had left it" in detail
    assert report.chains[0].last_seq == 16  # the new refusal took position 16 again


async def test_an_outcome_ingested_after_its_command_is_its_own_event(
    engine: Engine, journal_dir: Path
) -> None:
    """A command chained before its outcome was known (a long statement) gets C, then F."""
    rec = AuditRecorder(engine, journal_dir, ingest=False)
    await rec.start()
    await rec.session_started(make_session("s-1"))
    await rec.command_started(make_command("s-1", 1, "SELECT pg_sleep(600)"))
    await rec.command_started(make_command("s-1", 2, "SELECT 2"))
    rec.command_finished("s-1", 2, DONE)
    await rec.sync()  # journaled: the next pass reads command 2 with its outcome
    catch_up(engine, journal_dir)
    rec.command_finished("s-1", 1, DONE)
    await rec.close()
    catch_up(engine, journal_dir)
    kinds = [(r.kind, r.item) for r in sorted(rows(engine, audit_events), key=lambda r: r.seq)]
    assert kinds == [("S", None), ("C", 1), ("X", 2), ("F", 1)]
    assert verify(engine, state(journal_dir)).ok
    execute(engine, "UPDATE commands SET rows = 0 WHERE session_id = 's-1' AND seq = 1")
    problem, position, _ = only_finding(verify(engine, state(journal_dir)))
    assert (problem, position) == ("altered", position_of(engine, "F", "s-1", 1))
    execute(engine, "UPDATE commands SET finished_at = NULL, rows = NULL WHERE seq = 1")
    (finding,) = verify(engine).findings()
    assert finding.problem == "altered"  # the outcome event no longer matches its row


async def test_outcomes_of_unknown_commands_are_not_chained(
    engine: Engine, journal_dir: Path
) -> None:
    rec = AuditRecorder(engine, journal_dir)
    await rec.start()
    await rec.session_started(make_session("s-1"))
    rec.command_finished("s-1", 7, DONE)  # no such command
    rec.session_ended("s-404", SessionEnd.CLIENT_TERMINATED, 1, 1)  # no such session
    await rec.close()
    report = verify(engine, state(journal_dir))
    assert report.ok and report.chains[0].events == 1


def ingest_forever(db: Path, folder: Path) -> subprocess.Popen[bytes]:
    """An ingester process writing small batches (64 kB of journal per transaction)."""
    code = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from lockgate.audit import ingest\n"
        "from lockgate.store import open_engine\n"
        "ingest._CHUNK = 64 << 10\n"
        "i = ingest.JournalIngester(open_engine(sys.argv[1], create=False), Path(sys.argv[2]))\n"
        "i.chain.checkpoint_seconds = 0\n"
        "assert i.try_lock()\n"
        "while True:\n"
        "    i.ingest_once()\n"
        "    time.sleep(0.01)\n"
    )
    return subprocess.Popen([sys.executable, "-c", code, f"sqlite:///{db}", str(folder)])


def test_an_ingester_killed_mid_batch_leaves_a_verifiable_chain(
    engine: Engine, db_path: Path, journal_dir: Path
) -> None:
    writer = journal.JournalWriter(journal_dir)
    n = 400
    for i in range(n):
        sid = f"s-{i:04d}"
        s = make_session(sid)
        p, c = s.principal, s.client
        recs = [
            [
                "S",
                sid,
                p.subject,
                sorted(p.groups),
                p.kind.value,
                p.issuer,
                p.token_id,
                s.resource,
                c.protocol,
                c.address,
                c.user_name,
                c.application_name,
                s.started_at.timestamp(),
            ]
        ]
        for seq in range(1, 11):
            recs.append(_command_record(make_command(sid, seq, "SELECT pad " + "x" * 200)))
            recs.append(["F", time.time(), 1, "SELECT 1", None, None, 10, 0.5, sid, seq])
        writer.append(journal.encode(recs))
    writer.close()  # an orphan: ingested to the end
    proc = ingest_forever(db_path, journal_dir)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with engine.connect() as conn:
                try:
                    done = conn.execute(text("SELECT count(*) FROM audit_events")).scalar_one()
                except Exception:
                    done = 0
            if done > 1000:
                break
            time.sleep(0.005)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert rows(engine, sessions), "the ingester had not started"
    assert verify(engine, journal_dir.parent).ok
    catch_up(engine, journal_dir, timeout=60)
    report = verify(engine, journal_dir.parent)
    assert report.ok, report.findings()
    assert len(rows(engine, commands)) == n * 10
    # Each session: its start, then 10 commands chained with their outcomes (the ingester
    # reads a command and its outcome in the same pass: they are one journal append).
    assert report.chains[0].events == n * 11
    assert rows(engine, audit_checkpoints)


async def test_a_store_outage_mid_ingest_leaves_a_verifiable_chain(
    engine: Engine, journal_dir: Path
) -> None:
    rec = AuditRecorder(engine, journal_dir, ingest=False)
    await rec.start()
    await rec.session_started(make_session("s-1"))
    await rec.command_started(make_command("s-1", 1))
    ingester = JournalIngester(engine, journal_dir)
    assert ingester.try_lock()
    try:
        ingester.ingest_once()
        execute(engine, "ALTER TABLE commands RENAME TO commands_away")
        await rec.command_started(make_command("s-1", 2))
        with pytest.raises(sqlite3.OperationalError, match="commands"):
            ingester.ingest_once()
        execute(engine, "ALTER TABLE commands_away RENAME TO commands")
        ingester.ingest_once(seal=True)
    finally:
        ingester.unlock()
        await rec.close()
    report = verify(engine, journal_dir.parent)
    assert report.ok, report.findings()
    assert report.chains[0].events == 3
    assert (journal_dir.parent / HEAD_FILE).exists()
