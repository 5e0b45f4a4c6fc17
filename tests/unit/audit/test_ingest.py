"""The journal ingester on real SQLite files: exactly once, orphans, live journals, outages."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import pytest
from audit_builders import (
    DONE,
    journal_files,
    journaled,
    make_command,
    make_engine,
    make_session,
    rows,
)
from sqlalchemy import text
from sqlalchemy.engine import Engine

from lockgate.audit import journal
from lockgate.audit.ingest import JournalIngester, catch_up, to_batch
from lockgate.audit.recorder import AuditRecorder
from lockgate.audit.tables import commands, journal_positions, refusals, sessions
from lockgate.audit.writer import Batch, StoreGone, StoreWriter
from lockgate.model import ClientInfo, SessionEnd

REFUSED_FROM = ClientInfo("192.0.2.7:40000", "postgres")


async def open_recorder(engine: Engine, folder: Path) -> AuditRecorder:
    """A gateway process's recorder that leaves ingesting to someone else (the supervisor)."""
    rec = AuditRecorder(engine, folder, ingest=False)
    await rec.start()
    return rec


async def record_session(rec: AuditRecorder, sid: str = "s-1", n: int = 3) -> None:
    """A session, `n` commands (the first finished), one refusal; durable on return."""
    await rec.session_started(make_session(sid))
    assert rec.commands_started([make_command(sid, seq) for seq in range(1, n + 1)]) is None
    rec.command_finished(sid, 1, DONE)
    await rec.connection_refused(REFUSED_FROM, "shop", None, "28P01", f"refused {sid}")


def counts(engine: Engine) -> tuple[int, int, int]:
    return len(rows(engine, sessions)), len(rows(engine, commands)), len(rows(engine, refusals))


def positions(engine: Engine) -> dict[str, int]:
    return {r.journal: r.position for r in rows(engine, journal_positions)}


def execute(engine: Engine, sql: str) -> None:
    with engine.begin() as conn:
        conn.execute(text(sql))


def remove_store(db_path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db_path}{suffix}").unlink(missing_ok=True)


def store_exists(db_path: Path) -> bool:
    return db_path.exists()


def frame_ends(data: bytes) -> list[int]:
    """The offset after each whole record of a journal file."""
    ends, pos = [], 0
    while (size := journal.frame_size(data[pos:])) and pos + size <= len(data):
        pos += size
        ends.append(pos)
    return ends


async def test_records_of_a_closed_journal_reach_the_store(
    engine: Engine, reader: Engine, journal_dir: Path
) -> None:
    rec = await open_recorder(engine, journal_dir)
    await record_session(rec)
    rec.session_ended("s-1", SessionEnd.CLIENT_TERMINATED, 10, 20)
    await rec.close()
    assert counts(reader) == (0, 0, 0)  # nothing is in the store before the ingester runs
    (path,) = journal_files(journal_dir)

    ingester = JournalIngester(engine, journal_dir)
    assert ingester.ingest_once() == 7  # S, C, C, C, F, R, E
    assert counts(reader) == (1, 3, 1)
    (s,) = rows(reader, sessions)
    assert (s.subject, s.groups, s.end_reason, s.bytes_to_client) == (
        "alice",
        ["dba", "eng"],
        "client_terminated",
        20,
    )
    found = {c.seq: c for c in rows(reader, commands)}
    assert found[1].status == "SELECT 3" and found[2].finished_at is None
    assert found[1].tables == ["public.customers"] and found[1].params == ["42"]
    (r,) = rows(reader, refusals)
    assert (r.client_addr, r.code, r.reason) == ("192.0.2.7:40000", "28P01", "refused s-1")
    # The writer is gone: the file is deleted, and so is its position.
    assert not path.exists()
    assert positions(reader) == {}
    assert ingester.ingest_once() == 0
    assert ingester.stats.records == 7 and ingester.stats.dropped == 0


async def test_a_live_journal_is_ingested_incrementally_and_kept(
    engine: Engine, reader: Engine, journal_dir: Path
) -> None:
    rec = await open_recorder(engine, journal_dir)
    ingester = JournalIngester(engine, journal_dir)
    try:
        await record_session(rec, n=2)
        (path,) = journal_files(journal_dir)
        assert ingester.ingest_once() == 5
        assert path.exists()  # its writer holds the flock: still in use
        assert positions(reader) == {path.name: path.stat().st_size}
        assert ingester.ingest_once() == 0

        assert rec.commands_started([make_command(seq=3), make_command(seq=4)]) is None
        assert ingester.ingest_once() == 2
        assert sorted(c.seq for c in rows(reader, commands)) == [1, 2, 3, 4]
        assert path.exists()
    finally:
        await rec.close()
    assert ingester.ingest_once() == 0  # nothing new, but now an orphan: deleted
    assert not path.exists() and positions(reader) == {}
    assert counts(reader) == (1, 4, 1)


async def test_replay_by_a_new_ingester_writes_no_duplicates(
    engine: Engine, reader: Engine, journal_dir: Path
) -> None:
    rec = await open_recorder(engine, journal_dir)
    try:
        await record_session(rec, "s-1")
        await record_session(rec, "s-2")
        first = JournalIngester(engine, journal_dir)
        assert first.ingest_once() == 12
        # A crash forgets everything in memory; the store knows how far it got.
        first._positions.clear()
        assert first.ingest_once() == 0
        again = JournalIngester(engine, journal_dir)
        assert again.ingest_once() == 0
        assert again.stats.dropped == 0  # nothing was even offered twice
        assert counts(reader) == (2, 6, 2)  # refusals have no natural key: only positions help

        await record_session(rec, "s-3")
        assert again.ingest_once() == 6
        assert counts(reader) == (3, 9, 3)
    finally:
        await rec.close()


async def journaled_session(engine: Engine, journal_dir: Path) -> tuple[Path, bytes]:
    """`record_session` by a gateway that then stopped: its journal file and bytes."""
    rec = await open_recorder(engine, journal_dir)
    await record_session(rec)
    await rec.close()
    (path,) = journal_files(journal_dir)
    return path, path.read_bytes()


async def test_replay_after_a_crash_between_commit_and_delete(
    engine: Engine, reader: Engine, journal_dir: Path
) -> None:
    path, data = await journaled_session(engine, journal_dir)
    records, end = journal.decode(data)
    ends = frame_ends(data)
    assert ends[-1] == end == len(data) and len(ends) == len(records) == 6

    # An ingester committed the first 4 records with their position, then died.
    writer = StoreWriter(engine)
    assert writer.write(to_batch(records[:4], writer.timestamp), {path.name: ends[3]}) == 0
    writer.disconnect()
    assert counts(reader) == (1, 3, 0)

    ingester = JournalIngester(engine, journal_dir)
    assert ingester.ingest_once() == 2  # the finish and the refusal, nothing twice
    assert ingester.stats.dropped == 0
    assert counts(reader) == (1, 3, 1)
    assert not path.exists()

    # Committed everything, died before deleting the file: the next one only deletes it.
    rec = await open_recorder(engine, journal_dir)
    await record_session(rec, "s-2")
    await rec.close()
    (path,) = journal_files(journal_dir)
    records, end = journal.decode(path.read_bytes())
    writer = StoreWriter(engine)
    writer.write(to_batch(records, writer.timestamp), {path.name: end})
    writer.disconnect()
    assert JournalIngester(engine, journal_dir).ingest_once() == 0
    assert not path.exists()
    assert counts(reader) == (2, 6, 2)


def test_a_dead_writers_torn_tail_is_dropped_with_a_warning(
    engine: Engine, reader: Engine, journal_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    w = journal.JournalWriter(journal_dir)
    refusal = ["R", 1714564800.0, "h:1", "postgres", "shop", None, "28P01", "whole"]
    w.append(journal.encode([refusal, refusal]))
    w.append(journal.encode([refusal])[:-3])  # the process died in the middle of a write
    w.close()
    with caplog.at_level(logging.WARNING, "lockgate.audit.ingest"):
        assert JournalIngester(engine, journal_dir).ingest_once() == 2
    assert "unreadable bytes" in caplog.text
    assert len(rows(reader, refusals)) == 2
    assert journal_files(journal_dir) == []


def test_a_record_larger_than_a_read_chunk_gets_through(
    engine: Engine, reader: Engine, journal_dir: Path
) -> None:
    w = journal.JournalWriter(journal_dir)
    huge = "x" * (9 << 20)
    w.append(journal.encode([["R", 1714564800.0, "h:1", "pg", "shop", None, "28P01", huge]]))
    w.append(journal.encode([["R", 1714564801.0, "h:1", "pg", "shop", None, "28P01", "small"]]))
    ingester = JournalIngester(engine, journal_dir)
    assert ingester.ingest_once() == 2  # while its writer is alive
    w.close()
    assert ingester.ingest_once() == 0
    assert sorted(len(r.reason) for r in rows(reader, refusals)) == [5, 9 << 20]
    assert journal_files(journal_dir) == []


def test_only_one_ingester_per_folder(engine: Engine, reader: Engine, journal_dir: Path) -> None:
    w = journal.JournalWriter(journal_dir)
    w.append(journal.encode([["R", 1714564800.0, "h:1", "pg", "shop", None, "28P01", "r"]]))
    w.close()
    first, second = JournalIngester(engine, journal_dir), JournalIngester(engine, journal_dir)
    assert first.try_lock()
    try:
        assert not second.try_lock()
        assert not second.start_thread()
        catch_up(engine, journal_dir)  # a running ingester owns the folder: hands off
        assert rows(reader, refusals) == [] and len(journal_files(journal_dir)) == 1
    finally:
        first.unlock()
    assert second.try_lock()
    second.unlock()
    catch_up(engine, journal_dir)
    assert len(rows(reader, refusals)) == 1 and journal_files(journal_dir) == []


def test_catch_up_without_a_journal_folder_creates_nothing(engine: Engine, tmp_path: Path) -> None:
    catch_up(engine, tmp_path / "none")
    assert not (tmp_path / "none").exists()


async def test_records_wait_in_the_journal_while_a_table_is_missing(
    engine: Engine, reader: Engine, journal_dir: Path
) -> None:
    rec = await open_recorder(engine, journal_dir)
    ingester = JournalIngester(engine, journal_dir)
    try:
        await rec.session_started(make_session())
        assert ingester.ingest_once() == 1
        execute(reader, "ALTER TABLE commands RENAME TO commands_away")
        assert rec.commands_started([make_command(seq=1), make_command(seq=2)]) is None
        rec.command_finished("s-1", 1, DONE)
        await rec.sync()  # flushes the finish (no own ingester: nothing to wait for)
        for _ in range(2):  # still down on a retry
            with pytest.raises(Exception, match="no such table"):
                ingester.ingest_once()
        assert [r[0] for r in journaled(journal_dir)] == ["S", "C", "C", "F"]
        execute(reader, "ALTER TABLE commands_away RENAME TO commands")
        assert ingester.ingest_once() == 3
    finally:
        await rec.close()
    assert ingester.ingest_once() == 0
    found = {c.seq: c.status for c in rows(reader, commands)}
    assert found == {1: "SELECT 3", 2: None}
    assert ingester.stats.dropped == 0


async def test_a_removed_store_file_is_not_recreated_and_records_arrive_once_restored(
    engine: Engine, reader: Engine, db_path: Path, journal_dir: Path
) -> None:
    rec = await open_recorder(engine, journal_dir)
    ingester = JournalIngester(engine, journal_dir)
    backup = db_path.with_suffix(".bak")
    try:
        await record_session(rec, "s-1")
        assert ingester.ingest_once() == 6
        with reader.connect() as conn:  # a consistent copy, as an operator's backup would be
            conn.exec_driver_sql(f"VACUUM INTO '{backup}'")
        reader.dispose()
        remove_store(db_path)

        await record_session(rec, "s-2")
        with pytest.raises(StoreGone):
            ingester.ingest_once()
        assert not store_exists(db_path)  # it did not create an empty store in its place
        assert len([r for r in journaled(journal_dir) if r[0] == "C"]) == 6

        os.replace(backup, db_path)  # the operator restores the store
        assert ingester.ingest_once() == 6
    finally:
        await rec.close()
    ingester.ingest_once()
    restored = make_engine(f"sqlite:///{db_path}")
    assert counts(restored) == (2, 6, 2)
    restored.dispose()


async def test_the_ingester_thread_retries_until_the_store_is_back(
    engine: Engine, reader: Engine, journal_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rec = AuditRecorder(engine, journal_dir)  # with its own ingester thread
    await rec.start()
    try:
        await rec.session_started(make_session())
        await rec.sync()
        execute(reader, "ALTER TABLE commands RENAME TO commands_away")
        assert rec.commands_started([make_command(seq=n) for n in (1, 2, 3)]) is None
        with caplog.at_level(logging.ERROR, "lockgate.audit.ingest"):
            for _ in range(1000):  # bounded: until the thread has failed at least once
                if "audit store write failed (its tables are missing)" in caplog.text:
                    break
                await asyncio.sleep(0.01)
            else:
                raise AssertionError("the ingester thread never tried")
        with reader.connect() as conn:
            assert conn.exec_driver_sql("SELECT count(*) FROM commands_away").scalar() == 0
        execute(reader, "ALTER TABLE commands_away RENAME TO commands")
        await rec.sync()
        assert sorted(c.seq for c in rows(reader, commands)) == [1, 2, 3]
    finally:
        await rec.close()
    assert journal_files(journal_dir) == []


async def test_rotated_journals_are_read_in_the_order_they_were_written(
    engine: Engine, reader: Engine, journal_dir: Path
) -> None:
    """A session continued in newer files: the session row must land before its commands."""
    rec = AuditRecorder(engine, journal_dir, ingest=False, rotate_bytes=1500)
    await rec.start()
    await rec.session_started(make_session())
    for seq in range(1, 31):
        assert rec.commands_started([make_command(seq=seq)]) is None
        rec.command_finished("s-1", seq, DONE)
    await rec.close()
    assert len(journal_files(journal_dir)) >= 3
    ingester = JournalIngester(engine, journal_dir)
    ingester.ingest_once()
    assert ingester.stats.dropped == 0
    found = rows(reader, commands)
    assert sorted(c.seq for c in found) == list(range(1, 31))
    assert all(c.status == "SELECT 3" for c in found)
    assert journal_files(journal_dir) == []


def test_a_rejected_record_is_skipped_alone(
    engine: Engine, reader: Engine, journal_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A duplicate or a command of an unknown session must not take its batch down with it."""
    w = journal.JournalWriter(journal_dir)
    session = ["S", "s-1", "alice", ["dba"], "human", "iss", None, "shop", "postgres", "h:1"]
    cmd = ["C", "s-1", 1, 1714564800.0, "SELECT 1", "select", [], None, "allow", "", ""]
    w.append(
        journal.encode(
            [
                [*session, "", "", 1714564800.0],
                cmd,
                [*cmd[:2], 2, *cmd[3:]],
                cmd,  # a duplicate
                ["C", "nope", 1, *cmd[3:]],  # a command of an unknown session
                ["F", 1714564801.0, 1, "SELECT 1", None, None, 9, 0.5, "s-1", 2],
            ]
        )
    )
    w.close()
    ingester = JournalIngester(engine, journal_dir)
    with caplog.at_level(logging.WARNING, "lockgate.audit.writer"):
        assert ingester.ingest_once() == 6
    assert ingester.stats.dropped == 2 and ingester.stats.records == 4
    assert caplog.text.count("audit record skipped") == 2
    found = {(c.session_id, c.seq): c.status for c in rows(reader, commands)}
    assert found == {("s-1", 1): None, ("s-1", 2): "SELECT 1"}
    assert journal_files(journal_dir) == []


async def test_a_command_journaled_twice_in_one_batch_is_stored_once(
    engine: Engine, reader: Engine, journal_dir: Path
) -> None:
    """The outcome merges into the command's row; the repeat is skipped, not a stuck batch."""
    path, data = await journaled_session(engine, journal_dir)
    records, end = journal.decode(data)
    kinds = [r[0] for r in records]
    assert kinds == ["S", "C", "C", "C", "F", "R"]
    # The first command again, before its outcome (a writer that retried an append).
    records.insert(2, list(records[1]))
    writer = StoreWriter(engine)
    try:
        assert writer.write(to_batch(records, writer.timestamp), {path.name: end}) == 1
    finally:
        writer.disconnect()
    assert counts(reader) == (1, 3, 1)
    stored = {r.seq: r.finished_at for r in rows(reader, commands)}
    assert stored[1] is not None and stored[2] is None and stored[3] is None


async def test_one_pass_writes_every_journal_in_one_transaction(
    engine: Engine, reader: Engine, journal_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two workers' journals: one store write per pass, with both files' positions."""
    recs = [await open_recorder(engine, journal_dir) for _ in range(2)]
    for i, rec in enumerate(recs):
        await record_session(rec, f"s-{i}")
    files = journal_files(journal_dir)
    assert len(files) == 2
    ingester = JournalIngester(engine, journal_dir)
    writes: list[dict[str, int]] = []
    real = ingester._writer.write

    def counted(batch: Batch, positions: dict[str, int]) -> int:
        writes.append(dict(positions))
        return real(batch, positions)

    monkeypatch.setattr(ingester._writer, "write", counted)
    try:
        assert ingester.ingest_once() == 12
        assert writes == [{f.name: f.stat().st_size for f in files}]
        assert positions(reader) == writes[0]
        assert counts(reader) == (2, 6, 2)
        # The store refuses the next pass: neither file's position moves, nothing is lost.
        for i, rec in enumerate(recs):
            await record_session(rec, f"t-{i}")
        execute(engine, "DROP TABLE refusals")
        with pytest.raises(Exception, match="refusals"):
            ingester.ingest_once()
        assert positions(reader) == writes[0]
    finally:
        for rec in recs:
            await rec.close()
