"""The write-ahead recorder: durable on return, group commit, outcomes, fail closed, crashes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import uvloop
from audit_builders import (
    DONE,
    journal_files,
    journaled,
    make_command,
    make_engine,
    make_session,
    rows,
)
from sqlalchemy.engine import Engine

from lockgate.audit import journal
from lockgate.audit.ingest import catch_up
from lockgate.audit.recorder import AuditRecorder
from lockgate.audit.tables import commands, refusals, sessions
from lockgate.errors import AuditUnavailable
from lockgate.model import ClientInfo, Decision, DecisionKind, SessionEnd


async def started(engine: Engine, folder: Path, **options: Any) -> AuditRecorder:
    """A recorder without its own ingester: what it wrote is only in the journal."""
    rec = AuditRecorder(engine, folder, ingest=False, **options)
    await rec.start()
    return rec


def kinds(folder: Path) -> list[str]:
    return [r[0] for r in journaled(folder)]


def command_seqs(folder: Path) -> list[int]:
    return [r[2] for r in journaled(folder) if r[0] == "C"]


def run_child(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run `script` in a fresh interpreter (its own pid, its own limits, its own death)."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


# ---------------------------------------------------------------------- write-ahead


async def test_commands_started_is_durable_when_it_returns(
    engine: Engine, journal_dir: Path
) -> None:
    rec = await started(engine, journal_dir)
    try:
        await rec.session_started(make_session())
        rec.command_finished("s-1", 0, DONE)  # an outcome waiting to ride along
        flushes = rec.stats.flushes
        assert rec.commands_started([make_command(seq=1), make_command(seq=2)]) is None
        # No await since: the bytes are already in the file, whole and readable.
        assert rec.stats.flushes == flushes + 1
        assert kinds(journal_dir) == ["S", "F", "C", "C"]
        (path,) = journal_files(journal_dir)
        records, end = journal.decode(path.read_bytes())
        assert end == path.stat().st_size
        c = records[2]
        assert c[1:3] == ["s-1", 1] and c[4] == "SELECT * FROM customers WHERE id = $1"
    finally:
        await rec.close()


async def test_commands_started_joins_a_group_already_waiting(
    engine: Engine, journal_dir: Path
) -> None:
    rec = await started(engine, journal_dir)
    try:
        admitted = asyncio.ensure_future(rec.session_started(make_session()))
        await asyncio.sleep(0)  # session_started has queued its record: a flush is due
        assert kinds(journal_dir) == []
        joined = rec.commands_started([make_command(seq=1)])
        assert joined is not None and not joined.done()
        await joined
        await admitted
        assert kinds(journal_dir) == ["S", "C"]  # in order, in one write
        assert rec.stats.flushes == 1
    finally:
        await rec.close()


async def test_fsync_mode_commits_a_group_of_sessions_with_one_write(
    engine: Engine, journal_dir: Path
) -> None:
    rec = await started(engine, journal_dir, fsync=True)
    try:
        await asyncio.gather(*(rec.session_started(make_session(f"s-{n}")) for n in range(3)))
        flushes = rec.stats.flushes
        futures = [rec.commands_started([make_command(f"s-{n}", 1)]) for n in range(3)]
        many = rec.commands_started([make_command("s-0", 2), make_command("s-0", 3)])
        assert all(f is not None and not f.done() for f in [*futures, many])
        assert command_seqs(journal_dir) == []  # not durable yet: not written yet
        await asyncio.gather(*(f for f in [*futures, many] if f is not None))
        assert rec.stats.flushes == flushes + 1
        assert sorted(command_seqs(journal_dir)) == [1, 1, 1, 2, 3]
    finally:
        await rec.close()


async def test_command_started_futures_of_one_iteration_share_a_write(
    engine: Engine, journal_dir: Path
) -> None:
    rec = await started(engine, journal_dir)
    try:
        await rec.session_started(make_session())
        flushes = rec.stats.flushes
        futures = [rec.command_started(make_command(seq=i)) for i in range(1, 201)]
        await asyncio.gather(*futures)
        assert rec.stats.flushes == flushes + 1
        assert command_seqs(journal_dir) == list(range(1, 201))
    finally:
        await rec.close()


async def test_outcomes_go_out_on_the_linger_timer(engine: Engine, journal_dir: Path) -> None:
    rec = await started(engine, journal_dir, linger=0.01)
    try:
        await rec.session_started(make_session())
        assert rec.commands_started([make_command()]) is None
        rec.command_finished("s-1", 1, DONE)
        rec.session_ended("s-1", SessionEnd.CLIENT_TERMINATED, 10, 20)
        assert kinds(journal_dir) == ["S", "C"]  # outcomes wait for company...
        for _ in range(1000):  # ...or for the timer, with no traffic at all
            if kinds(journal_dir) == ["S", "C", "F", "E"]:
                break
            await asyncio.sleep(0.01)
        assert kinds(journal_dir) == ["S", "C", "F", "E"]
    finally:
        await rec.close()


# ---------------------------------------------------------------------- in the store


async def test_records_reach_the_store(recorder: AuditRecorder, reader: Engine) -> None:
    await recorder.session_started(make_session())
    assert recorder.commands_started([make_command()]) is None
    await recorder.sync()
    (s,) = rows(reader, sessions)
    assert (s.subject, s.resource, s.protocol, s.client_addr) == (
        "alice",
        "shop",
        "postgres",
        "10.0.0.5:51234",
    )
    assert s.groups == ["dba", "eng"]
    assert (s.principal_kind, s.issuer, s.token_id) == ("human", "https://idp.example", "tok-9")
    assert (s.user_name, s.application_name) == ("alice", "psql")
    assert s.started_at.tzinfo is UTC and s.ended_at is None
    (c,) = rows(reader, commands)
    assert (c.session_id, c.seq, c.kind, c.decision) == ("s-1", 1, "select", "allow")
    assert c.text == "SELECT * FROM customers WHERE id = $1"
    assert c.tables == ["public.customers"] and c.params == ["42"]
    assert c.finished_at is None

    recorder.command_finished("s-1", 1, DONE)
    recorder.session_ended("s-1", SessionEnd.CLIENT_DISCONNECTED, 10, 20, error="reset by peer")
    await recorder.sync()
    (c,) = rows(reader, commands)
    assert (c.rows, c.status, c.bytes_out, c.duration_ms) == (3, "SELECT 3", 512, 1.5)
    assert c.finished_at is not None and c.finished_at >= c.started_at
    (s,) = rows(reader, sessions)
    assert (s.end_reason, s.bytes_from_client, s.bytes_to_client, s.error) == (
        "client_disconnected",
        10,
        20,
        "reset by peer",
    )


async def test_concurrent_sessions(recorder: AuditRecorder, reader: Engine) -> None:
    async def client(n: int) -> None:
        sid = f"s-{n}"
        await recorder.session_started(make_session(sid))
        for seq in range(1, 11):
            if seq % 2:
                assert recorder.commands_started([make_command(sid, seq)]) is None
            else:
                await recorder.command_started(make_command(sid, seq))
            await asyncio.sleep(0)
            recorder.command_finished(sid, seq, DONE)
        recorder.session_ended(sid, SessionEnd.CLIENT_TERMINATED, 100, 2000)

    await asyncio.gather(*(client(n) for n in range(50)))
    await recorder.close()
    assert len(rows(reader, commands, commands.c.finished_at.is_not(None))) == 500
    assert len(rows(reader, sessions, sessions.c.end_reason == "client_terminated")) == 50


async def test_denied_command_keeps_its_rule_and_reason(
    recorder: AuditRecorder, reader: Engine
) -> None:
    await recorder.session_started(make_session())
    deny = Decision(DecisionKind.DENY, rule="no-drop", reason="drops need a review")
    await recorder.command_started(make_command(text="DROP TABLE customers", decision=deny))
    await recorder.sync()
    (c,) = rows(reader, commands)
    assert (c.decision, c.rule, c.reason) == ("deny", "no-drop", "drops need a review")


async def test_connection_refused_is_recorded(recorder: AuditRecorder, reader: Engine) -> None:
    client = ClientInfo("192.0.2.7:40000", "postgres", "mallory")
    await recorder.connection_refused(client, "shop", None, "28P01", "the token has expired")
    await recorder.connection_refused(client, "shop", "bob", "42501", "no access rule for bob")
    await recorder.sync()
    found = sorted(rows(reader, refusals), key=lambda r: r.id)
    assert [(r.subject, r.code) for r in found] == [(None, "28P01"), ("bob", "42501")]
    assert found[0].client_addr == "192.0.2.7:40000"
    assert found[0].at.tzinfo is UTC


async def test_timestamps_are_utc(recorder: AuditRecorder, reader: Engine) -> None:
    from zoneinfo import ZoneInfo

    local = datetime(2024, 5, 1, 14, 0, tzinfo=ZoneInfo("Europe/Paris"))
    await recorder.session_started(make_session(started_at=local))
    await recorder.sync()
    (s,) = rows(reader, sessions)
    assert s.started_at == datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    with reader.connect() as conn:
        raw = conn.exec_driver_sql("SELECT started_at FROM sessions").scalar()
    assert raw == "2024-05-01 12:00:00.000000"


async def test_close_drains_pending_outcomes_into_the_store(
    engine: Engine, reader: Engine, journal_dir: Path
) -> None:
    rec = AuditRecorder(engine, journal_dir, linger=3600)
    await rec.start()
    await rec.session_started(make_session())
    assert rec.commands_started([make_command()]) is None
    rec.command_finished("s-1", 1, DONE)
    rec.session_ended("s-1", SessionEnd.GATEWAY_SHUTDOWN, 1, 2)
    await rec.close()
    (c,) = rows(reader, commands)
    assert c.status == "SELECT 3"
    (s,) = rows(reader, sessions)
    assert s.end_reason == "gateway_shutdown"
    assert journal_files(journal_dir) == []


async def test_after_close_commands_fail_closed(engine: Engine, journal_dir: Path) -> None:
    rec = AuditRecorder(engine, journal_dir)
    await rec.start()
    await rec.close()
    with pytest.raises(AuditUnavailable, match="not forwarded"):
        await rec.command_started(make_command())
    late = rec.commands_started([make_command(seq=2)])
    assert late is not None
    with pytest.raises(AuditUnavailable, match="not forwarded"):
        await late
    with pytest.raises(AuditUnavailable, match="not admitted"):
        await rec.session_started(make_session())
    rec.session_ended("s-1", SessionEnd.ERROR, 0, 0)
    assert rec.stats.dropped == 1
    assert journaled(journal_dir) == []


async def test_calls_before_start_are_a_programming_error(
    engine: Engine, journal_dir: Path
) -> None:
    rec = AuditRecorder(engine, journal_dir)
    with pytest.raises(RuntimeError, match="start"):
        rec.command_started(make_command())
    with pytest.raises(RuntimeError, match="start"):
        rec.command_finished("s-1", 1, DONE)


async def test_the_journal_rotates_and_every_file_is_ingested(
    engine: Engine, reader: Engine, journal_dir: Path
) -> None:
    rec = AuditRecorder(engine, journal_dir, rotate_bytes=2000)
    await rec.start()
    await rec.session_started(make_session())
    for seq in range(1, 41):
        assert rec.commands_started([make_command(seq=seq)]) is None
    await rec.close()
    assert sorted(c.seq for c in rows(reader, commands)) == list(range(1, 41))
    assert journal_files(journal_dir) == []


async def test_two_recorders_share_one_journal_folder(
    db_path: Path, reader: Engine, journal_dir: Path
) -> None:
    """Two gateway workers: the first to start ingests for both."""
    engines = [make_engine(f"sqlite:///{db_path}") for _ in range(2)]
    recs = [AuditRecorder(e, journal_dir) for e in engines]
    for rec in recs:
        await rec.start()
    assert recs[0]._ingester is not None and recs[1]._ingester is None

    async def client(rec: AuditRecorder, sid: str) -> None:
        await rec.session_started(make_session(sid))
        for seq in range(1, 21):
            assert rec.commands_started([make_command(sid, seq)]) is None
            await asyncio.sleep(0)

    await asyncio.gather(*(client(recs[n % 2], f"w{n}") for n in range(10)))
    await recs[1].close()
    await recs[0].close()  # its last pass takes the other worker's finished journal too
    for e in engines:
        e.dispose()
    assert len(rows(reader, commands)) == 200
    assert journal_files(journal_dir) == []


def test_under_uvloop(engine: Engine, reader: Engine, journal_dir: Path) -> None:
    async def main() -> None:
        rec = AuditRecorder(engine, journal_dir)
        await rec.start()
        await rec.session_started(make_session())
        flushes = rec.stats.flushes
        await asyncio.gather(*(rec.command_started(make_command(seq=i)) for i in range(1, 51)))
        assert rec.stats.flushes == flushes + 1
        rec.command_finished("s-1", 50, DONE)
        await rec.close()

    uvloop.run(main())
    found = rows(reader, commands)
    assert len(found) == 50
    assert [c.status for c in found if c.seq == 50] == ["SELECT 3"]


# ---------------------------------------------------------------------- fail closed


async def test_a_failed_journal_write_refuses_the_commands_then_recovers(
    engine: Engine, reader: Engine, journal_dir: Path
) -> None:
    rec = await started(engine, journal_dir)
    try:
        await rec.session_started(make_session())
        assert rec.commands_started([make_command(seq=1)]) is None
        rec.command_finished("s-1", 1, DONE)  # rides along with the failed write: kept
        (first,) = journal_files(journal_dir)
        assert rec._journal is not None
        os.close(rec._journal._fd)  # the journal's descriptor is gone underneath

        secret = "SELECT 'hunter2' AS password"
        with pytest.raises(AuditUnavailable) as err:
            rec.commands_started([make_command(seq=n, text=secret) for n in (2, 3)])
        message = err.value.message
        assert message.startswith("audit store unavailable: ")
        assert message.endswith("; the command was not forwarded")
        for leak in ("hunter2", "SELECT", "/", ".jnl"):
            assert leak not in message
        assert rec.stats.failed_flushes == 1
        assert command_seqs(journal_dir) == [1]  # nothing recorded as started

        # The next attempt starts a new journal file: recovered, and the outcome kept.
        assert rec.commands_started([make_command(seq=2)]) is None
        assert len(journal_files(journal_dir)) == 2
        assert kinds(journal_dir) == ["S", "C", "F", "C"]  # files read in creation order

        # The same for the awaited path.
        assert rec._journal is not None
        os.close(rec._journal._fd)
        with pytest.raises(AuditUnavailable, match="not forwarded"):
            await rec.command_started(make_command(seq=3))
        await rec.command_started(make_command(seq=4))
        assert sorted(command_seqs(journal_dir)) == [1, 2, 4]
        assert first.exists()
    finally:
        await rec.close()
    catch_up(engine, journal_dir)
    found = {c.seq: c.status for c in rows(reader, commands)}
    assert found == {1: "SELECT 3", 2: None, 4: None}
    assert journal_files(journal_dir) == []


_FULL_DISK = """
    import asyncio, json, resource, signal, sys
    from pathlib import Path
    from lockgate.audit.recorder import AuditRecorder
    from lockgate.errors import AuditUnavailable
    from lockgate.model import Command
    from lockgate.store import open_engine

    async def main() -> None:
        rec = AuditRecorder(open_engine(sys.argv[1], create=False), Path(sys.argv[2]), ingest=False)
        await rec.start()
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a killed process
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 10, resource.RLIM_INFINITY))
        results = {}

        def record(seq: int, text: str) -> None:
            try:
                rec.commands_started([Command("s-1", seq, text)])
                results[seq] = "ok"
            except AuditUnavailable as exc:
                results[seq] = exc.message

        record(1, "SELECT 1")
        # One write, one small record and one too big for the file: neither may remain.
        try:
            rec.commands_started([Command("s-1", 2, "SELECT 2"), Command("s-1", 3, "x" * 100_000)])
            results[2] = "ok"
        except AuditUnavailable as exc:
            results[2] = exc.message
        record(4, "SELECT 4")  # a new journal file: room again
        await rec.close()
        print(json.dumps(results))

    asyncio.run(main())
"""


def test_a_full_file_system_refuses_the_commands_then_recovers(
    engine: Engine, reader: Engine, db_path: Path, journal_dir: Path
) -> None:
    child = run_child(_FULL_DISK, f"sqlite:///{db_path}", str(journal_dir))
    assert child.returncode == 0, child.stderr
    results = json.loads(child.stdout)
    assert results["1"] == "ok" and results["4"] == "ok"
    assert results["2"].startswith("audit store unavailable: ")
    assert results["2"].endswith("the command was not forwarded")
    files = journal_files(journal_dir)
    assert len(files) == 2
    for path in files:  # the partial write was taken back: every file ends on a whole record
        data = path.read_bytes()
        assert journal.decode(data)[1] == len(data)
    assert sorted(command_seqs(journal_dir)) == [1, 4]
    catch_up(engine, journal_dir)  # (records of a session the store never saw are skipped)
    assert journal_files(journal_dir) == []


# ---------------------------------------------------------------------- crash durability

_KILLED = """
    import asyncio, os, signal, sys
    from datetime import UTC, datetime
    from pathlib import Path
    from lockgate.audit.recorder import AuditRecorder
    from lockgate.model import ClientInfo, Command, Principal, ResultSummary, Session
    from lockgate.store import open_engine

    async def main() -> None:
        engine = open_engine(sys.argv[1], create=False)
        fsync = sys.argv[3] == "fsync"
        rec = AuditRecorder(engine, Path(sys.argv[2]), fsync=fsync, ingest=False, linger=3600)
        await rec.start()
        client = ClientInfo("10.0.0.1:5000", "postgres")
        session = Session("k-1", Principal("kim"), "shop", client, datetime.now(UTC))
        await rec.session_started(session)
        n = int(sys.argv[4])
        for seq in range(1, n + 1):
            if seq % 3 == 0:
                await rec.command_started(Command("k-1", seq, f"SELECT {seq}"))
            else:
                durable = rec.commands_started([Command("k-1", seq, f"SELECT {seq}")])
                if durable is not None:
                    await durable
            rec.command_finished("k-1", seq, ResultSummary(rows=seq, status="SELECT"))
        os.kill(os.getpid(), signal.SIGKILL)  # no close(), no flush, no goodbye

    asyncio.run(main())
"""


@pytest.mark.parametrize("mode", ["write", "fsync"])
def test_commands_survive_the_gateway_being_killed(
    engine: Engine, reader: Engine, db_path: Path, journal_dir: Path, mode: str
) -> None:
    n = 300
    child = run_child(_KILLED, f"sqlite:///{db_path}", str(journal_dir), mode, str(n))
    assert child.returncode == -signal.SIGKILL, child.stderr
    assert rows(reader, commands) == []
    catch_up(engine, journal_dir)
    found = {c.seq: c for c in rows(reader, commands)}
    assert sorted(found) == list(range(1, n + 1))
    assert all(c.session_id == "k-1" and c.text == f"SELECT {c.seq}" for c in found.values())
    # Outcomes ride along with the next write: all but the last one (its linger never came).
    assert sorted(c.seq for c in found.values() if c.rows is not None) == list(range(1, n))
    assert journal_files(journal_dir) == []  # the dead process's journal is done with
