"""The audit store on a real PostgreSQL server (the multi-replica store): recorder, ingester,
store writer. Each test creates its own database and drops it."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from audit_builders import DONE, journal_files, make_command, make_engine, make_session, rows
from sqlalchemy import text
from sqlalchemy.engine import Engine

from lockgate.audit import journal
from lockgate.audit.ingest import JournalIngester, to_batch
from lockgate.audit.recorder import AuditRecorder
from lockgate.audit.tables import commands, journal_positions, refusals, sessions
from lockgate.audit.writer import StoreWriter
from lockgate.model import ClientInfo, SessionEnd

pytestmark = pytest.mark.pg

SERVER = os.environ.get("LOCKGATE_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432")
REFUSED_FROM = ClientInfo("192.0.2.1:1", "postgres")


@pytest.fixture
def pg_engine() -> Iterator[Engine]:
    psycopg = pytest.importorskip("psycopg")
    admin_dsn = SERVER.replace("postgresql+psycopg://", "postgresql://") + "/postgres"
    name = f"lockgate_audit_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg.connect(admin_dsn, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError:
        pytest.skip(f"no PostgreSQL server at {SERVER}")
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            engine = make_engine(f"{SERVER}/{name}")
            try:
                yield engine
            finally:
                engine.dispose()
        finally:
            admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def execute(engine: Engine, sql: str) -> None:
    with engine.begin() as conn:
        conn.execute(text(sql))


def counts(engine: Engine) -> tuple[int, int, int]:
    return len(rows(engine, sessions)), len(rows(engine, commands)), len(rows(engine, refusals))


async def test_recorder_with_its_ingester(pg_engine: Engine, tmp_path: Path) -> None:
    rec = AuditRecorder(pg_engine, tmp_path / "journal")
    await rec.start()

    async def client(n: int) -> None:
        sid = f"s-{n}"
        await rec.session_started(make_session(sid))
        for seq in range(1, 6):
            assert rec.commands_started([make_command(sid, seq)]) is None
            rec.command_finished(sid, seq, DONE)
        rec.session_ended(sid, SessionEnd.CLIENT_TERMINATED, 1, 2)

    for n in range(20):
        await client(n)
    await rec.connection_refused(REFUSED_FROM, "shop", None, "28P01", "bad token")
    await rec.sync()
    assert counts(pg_engine) == (20, 100, 1)
    await rec.close()
    found = rows(pg_engine, commands)
    assert all(c.status == "SELECT 3" for c in found)
    assert found[0].started_at.utcoffset() is not None
    assert found[0].tables == ["public.customers"] and found[0].params == ["42"]
    assert all(s.end_reason == "client_terminated" for s in rows(pg_engine, sessions))
    assert rows(pg_engine, sessions)[0].groups == ["dba", "eng"]
    assert journal_files(tmp_path / "journal") == []
    assert rows(pg_engine, journal_positions) == []


async def test_replay_writes_no_duplicates(pg_engine: Engine, tmp_path: Path) -> None:
    folder = tmp_path / "journal"
    rec = AuditRecorder(pg_engine, folder, ingest=False)
    await rec.start()
    try:
        await rec.session_started(make_session())
        assert rec.commands_started([make_command(seq=n) for n in (1, 2)]) is None
        await rec.connection_refused(REFUSED_FROM, "shop", None, "28P01", "bad token")
        assert JournalIngester(pg_engine, folder).ingest_once() == 4
        again = JournalIngester(pg_engine, folder)  # a restart: positions from the store only
        assert again.ingest_once() == 0
        assert again.stats.dropped == 0
        assert counts(pg_engine) == (1, 2, 1)
    finally:
        await rec.close()


async def test_records_wait_while_the_store_is_broken(pg_engine: Engine, tmp_path: Path) -> None:
    folder = tmp_path / "journal"
    rec = AuditRecorder(pg_engine, folder, ingest=False)
    await rec.start()
    ingester = JournalIngester(pg_engine, folder)
    try:
        await rec.session_started(make_session())
        assert ingester.ingest_once() == 1
        execute(pg_engine, "ALTER TABLE commands RENAME TO commands_away")
        assert rec.commands_started([make_command(seq=1)]) is None
        with pytest.raises(Exception, match="commands"):
            ingester.ingest_once()
        execute(pg_engine, "ALTER TABLE commands_away RENAME TO commands")
        assert ingester.ingest_once() == 1
    finally:
        await rec.close()
    ingester.ingest_once()
    assert [c.seq for c in rows(pg_engine, commands)] == [1]
    assert journal_files(folder) == []


def test_a_rejected_record_is_skipped_alone(pg_engine: Engine, tmp_path: Path) -> None:
    """PostgreSQL aborts the whole transaction on a constraint error: retried one by one."""
    w = journal.JournalWriter(tmp_path)
    s = make_session()
    session = ["S", s.id, "alice", ["dba"], "human", "iss", None, "shop", "postgres", "h:1", "", ""]
    cmd = ["C", "s-1", 1, 1714564800.0, "SELECT 1", "select", [], None, "allow", "", ""]
    records = [
        [*session, 1714564800.0],
        cmd,
        [*cmd[:2], 2, *cmd[3:]],
        cmd,  # a duplicate
        ["C", "nope", 1, *cmd[3:]],  # a command of an unknown session
    ]
    w.append(journal.encode(records))
    w.close()
    writer = StoreWriter(pg_engine)
    decoded, end = journal.decode(w.path.read_bytes())
    assert writer.write(to_batch(decoded, writer.timestamp), {w.path.name: end}) == 2
    assert writer.position(w.path.name) == end
    writer.disconnect()
    assert sorted((c.session_id, c.seq) for c in rows(pg_engine, commands)) == [
        ("s-1", 1),
        ("s-1", 2),
    ]


async def test_chain_verifies_and_names_an_edit_on_postgresql(
    pg_engine: Engine, tmp_path: Path
) -> None:
    from lockgate.audit.verify import verify

    rec = AuditRecorder(pg_engine, tmp_path / "state" / "journal")
    await rec.start()
    await rec.session_started(make_session("s-1"))
    await rec.command_started(make_command("s-1", 1))
    rec.command_finished("s-1", 1, DONE)
    await rec.command_started(make_command("s-1", 2, "SELECT 'x'"))
    rec.session_ended("s-1", SessionEnd.CLIENT_TERMINATED, 1, 2)
    await rec.connection_refused(REFUSED_FROM, "shop", None, "28P01", "expired")
    await rec.close()
    report = verify(pg_engine, tmp_path / "state")
    assert report.ok, report.findings()
    # Start, command 1 chained with its outcome, command 2, end, refusal.
    assert report.chains[0].events == 5 and report.chains[0].head_checked
    execute(pg_engine, "UPDATE commands SET params = '[\"43\"]' WHERE seq = 1")
    (finding,) = verify(pg_engine).findings()
    assert finding.problem == "altered" and "command #1 of session s-1" in finding.detail


@pytest.mark.parametrize("few", [1000, 1])
async def test_search_on_postgresql(
    pg_engine: Engine, tmp_path: Path, few: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lockgate.audit import search as search_module
    from lockgate.audit.search import SearchFilter, search

    monkeypatch.setattr(search_module, "_FEW", few)  # both plans: few matches, many matches
    rec = AuditRecorder(pg_engine, tmp_path / "state" / "journal")
    await rec.start()
    await rec.session_started(make_session("s-1", groups=frozenset({"dba"})))
    await rec.command_started(make_command("s-1", 1, "SELECT email FROM customers"))
    await rec.command_started(make_command("s-1", 2, "select Total FROM invoices"))
    await rec.close()

    def found(**kw: object) -> list[int]:
        return [c["seq"] for c in search(pg_engine, SearchFilter(**kw))]  # type: ignore[arg-type]

    assert found(text="customers EMAIL") == [1]
    assert found(text="total", group="dba") == [2]
    assert found(text="custom") == []
    assert found(subject="alice") == [2, 1]


# Text and bytes that COPY's text format must escape (tabs, newlines, backslashes, \N).
AWKWARD = ["SELECT 'a\tb'", "SELECT 'line\nbreak'", "SELECT '\\N', E'\\\\x00'", "SELECT 'é \r'"]


async def test_batches_copied_in_keep_every_value_and_verify(
    pg_engine: Engine, tmp_path: Path
) -> None:
    from lockgate.audit.query import get_session
    from lockgate.audit.verify import verify
    from lockgate.model import CapturedResult, ResultSummary

    results = [bytes(range(256)) * k for k in (0, 1, 3)] + [b"\t\n\\N\x00", b"D" * 5000]
    rec = AuditRecorder(pg_engine, tmp_path / "state" / "journal", ingest=False)
    await rec.start()
    await rec.session_started(make_session("s-1"))
    seq = 0
    for text_ in AWKWARD:
        for data in results:
            seq += 1
            await rec.command_started(make_command("s-1", seq, text_, params=(text_, None)))
            captured = CapturedResult("pgwire", data, 2, None if seq % 2 else 0, seq)
            masked = {"pii\t1": seq} if seq % 3 == 0 else None
            summary = ResultSummary(2, "SELECT 2", None, None, 9, 0.5, captured, masked)
            rec.command_finished("s-1", seq, summary)
    await rec.close()
    ingester = JournalIngester(pg_engine, tmp_path / "state" / "journal")
    assert ingester.ingest_once(seal=True) == 1 + 2 * seq  # one batch: COPY, not row by row
    ingester.unlock()

    session = get_session(pg_engine, "s-1")
    assert session is not None and len(session["commands"]) == seq
    for i, cmd in enumerate(session["commands"]):
        text_, data = AWKWARD[i // len(results)], results[i % len(results)]
        assert (cmd["text"], cmd["params"], cmd["result_data"]) == (text_, [text_, None], data)
        assert cmd["masked_by_rule"] == ({"pii\t1": i + 1} if (i + 1) % 3 == 0 else None)
    report = verify(pg_engine, tmp_path / "state")
    assert report.ok, report.findings()
    assert report.chains[0].events == 1 + seq  # each command chained with its outcome
