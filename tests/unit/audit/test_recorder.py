"""The write-ahead recorder on real SQLite files: group commit, fail closed, recovery."""

from __future__ import annotations

import asyncio
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import uvloop
from audit_builders import make_command, make_engine, make_session
from sqlalchemy import event, select, text
from sqlalchemy.engine import Engine

from lockgate.audit.recorder import AuditRecorder
from lockgate.audit.tables import commands, refusals, sessions
from lockgate.errors import AuditUnavailable
from lockgate.model import ClientInfo, Decision, DecisionKind, ResultSummary, SessionEnd
from lockgate.store import open_engine


def rows(engine: Engine, table: Any, *where: Any) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(select(table).where(*where)))


def execute(engine: Engine, sql: str) -> None:
    with engine.begin() as conn:
        conn.execute(text(sql))


async def eventually(condition: Any) -> None:
    """Let the loop run until `condition()` holds (no wall-clock assertion, just a bound)."""
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition never held")


def remove_store(db_path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db_path}{suffix}").unlink(missing_ok=True)


def store_exists(db_path: Path) -> bool:
    return db_path.exists()


DONE = ResultSummary(rows=3, status="SELECT 3", bytes_out=512, duration_ms=1.5)


async def test_session_and_command_are_durable_when_awaited(
    recorder: AuditRecorder, reader: Engine
) -> None:
    await recorder.session_started(make_session())
    (s,) = rows(reader, sessions)
    assert (s.subject, s.resource, s.protocol, s.client_addr) == (
        "alice",
        "shop",
        "postgres",
        "10.0.0.5:51234",
    )
    assert s.groups == ["dba", "eng"]
    assert (s.principal_kind, s.issuer, s.token_id) == ("human", "https://idp.example", "tok-9")
    assert s.started_at.tzinfo is UTC
    assert s.ended_at is None

    await recorder.command_started(make_command())
    (c,) = rows(reader, commands)
    assert (c.session_id, c.seq, c.kind, c.decision) == ("s-1", 1, "select", "allow")
    assert c.text == "SELECT * FROM customers WHERE id = $1"
    assert c.tables == ["public.customers"]
    assert c.params == ["42"]
    assert c.finished_at is None


async def test_group_commit_writes_one_iteration_in_one_transaction(
    recorder: AuditRecorder, reader: Engine
) -> None:
    await recorder.session_started(make_session())
    before = recorder.stats.flushes
    futures = [recorder.command_started(make_command(seq=i)) for i in range(1, 201)]
    await asyncio.gather(*futures)
    assert recorder.stats.flushes == before + 1
    assert len(rows(reader, commands)) == 200


async def test_concurrent_sessions_share_flushes(recorder: AuditRecorder, reader: Engine) -> None:
    async def client(n: int) -> None:
        sid = f"s-{n}"
        await recorder.session_started(make_session(sid))
        for seq in range(1, 11):
            await recorder.command_started(make_command(sid, seq))
            recorder.command_finished(sid, seq, DONE)
        recorder.session_ended(sid, SessionEnd.CLIENT_TERMINATED, 100, 2000)

    await asyncio.gather(*(client(n) for n in range(50)))
    await recorder.close()
    # 50 clients x 11 awaited writes, batched: each flush served many clients.
    assert recorder.stats.flushes < 50 * 11
    assert len(rows(reader, commands, commands.c.finished_at.is_not(None))) == 500
    assert len(rows(reader, sessions, sessions.c.end_reason == "client_terminated")) == 50


async def test_finish_in_the_same_batch_as_its_start_lands(
    recorder: AuditRecorder, reader: Engine
) -> None:
    await recorder.session_started(make_session())
    before = recorder.stats.flushes
    started = recorder.command_started(make_command(params=None))
    recorder.command_finished("s-1", 1, DONE)
    recorder.session_ended("s-1", SessionEnd.CLIENT_DISCONNECTED, 10, 20, error="reset by peer")
    await started
    assert recorder.stats.flushes == before + 1
    (c,) = rows(reader, commands)
    assert (c.rows, c.status, c.bytes_out, c.duration_ms) == (3, "SELECT 3", 512, 1.5)
    assert c.params is None
    assert c.finished_at is not None and c.finished_at >= c.started_at
    (s,) = rows(reader, sessions)
    assert (s.end_reason, s.bytes_from_client, s.bytes_to_client, s.error) == (
        "client_disconnected",
        10,
        20,
        "reset by peer",
    )


async def test_denied_command_keeps_its_rule_and_reason(
    recorder: AuditRecorder, reader: Engine
) -> None:
    await recorder.session_started(make_session())
    deny = Decision(DecisionKind.DENY, rule="no-drop", reason="drops need a review")
    await recorder.command_started(make_command(text="DROP TABLE customers", decision=deny))
    (c,) = rows(reader, commands)
    assert (c.decision, c.rule, c.reason) == ("deny", "no-drop", "drops need a review")


async def test_close_flushes_pending_fire_and_forget_records(
    engine: Engine, reader: Engine
) -> None:
    rec = AuditRecorder(engine)
    await rec.start()
    await rec.session_started(make_session())
    await rec.command_started(make_command())
    rec.command_finished("s-1", 1, DONE)
    rec.session_ended("s-1", SessionEnd.GATEWAY_SHUTDOWN, 1, 2)
    await rec.close()
    (c,) = rows(reader, commands)
    assert c.status == "SELECT 3"
    (s,) = rows(reader, sessions)
    assert s.end_reason == "gateway_shutdown"


async def test_after_close_commands_fail_closed(engine: Engine) -> None:
    rec = AuditRecorder(engine)
    await rec.start()
    await rec.close()
    with pytest.raises(AuditUnavailable, match="not forwarded"):
        await rec.command_started(make_command())
    with pytest.raises(AuditUnavailable, match="not admitted"):
        await rec.session_started(make_session())
    rec.session_ended("s-1", SessionEnd.ERROR, 0, 0)
    assert rec.stats.dropped == 1


async def test_calls_before_start_are_a_programming_error(engine: Engine) -> None:
    rec = AuditRecorder(engine)
    with pytest.raises(RuntimeError, match="start"):
        rec.command_started(make_command())


async def test_connection_refused_is_recorded(recorder: AuditRecorder, reader: Engine) -> None:
    client = ClientInfo("192.0.2.7:40000", "postgres", "mallory")
    await recorder.connection_refused(client, "shop", None, "28P01", "the token has expired")
    await recorder.connection_refused(client, "shop", "bob", "42501", "no access rule for bob")
    found = rows(reader, refusals)
    assert [(r.subject, r.code) for r in found] == [(None, "28P01"), ("bob", "42501")]
    assert found[0].client_addr == "192.0.2.7:40000"
    assert found[0].at.tzinfo is UTC


async def test_store_failure_fails_closed_then_recovers(
    recorder: AuditRecorder, reader: Engine
) -> None:
    await recorder.session_started(make_session())
    await recorder.command_started(make_command(seq=1))
    execute(reader, "ALTER TABLE commands RENAME TO commands_away")

    recorder.command_finished("s-1", 1, DONE)  # kept and retried with the next batch
    secret_sql = "SELECT 'hunter2' AS password"
    batch = [recorder.command_started(make_command(seq=n, text=secret_sql)) for n in (2, 3, 4)]
    results = await asyncio.gather(*batch, return_exceptions=True)
    assert all(isinstance(r, AuditUnavailable) for r in results)
    message = str(results[0])
    assert message.startswith("audit store unavailable: ")
    assert message.endswith("; the command was not forwarded")
    for leak in ("hunter2", "INSERT", "commands", "SELECT"):
        assert leak not in message
    assert recorder.stats.failed_flushes == 1

    # Still down: the next command is refused too, nothing is retried forever in a loop.
    with pytest.raises(AuditUnavailable):
        await recorder.command_started(make_command(seq=2))

    execute(reader, "ALTER TABLE commands_away RENAME TO commands")
    await recorder.command_started(make_command(seq=2))
    found = {c.seq: c for c in rows(reader, commands)}
    assert sorted(found) == [1, 2]
    assert found[1].status == "SELECT 3"  # the finish kept from the failed batches landed


async def test_full_disk_fails_closed_then_recovers(db_path: Path, reader: Engine) -> None:
    engine = make_engine(f"sqlite:///{db_path}")

    def tiny_disk(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.execute("PRAGMA max_page_count=40")

    event.listen(engine, "connect", tiny_disk)
    engine.dispose()  # reconnect with the limit
    rec = AuditRecorder(engine)
    await rec.start()
    await rec.session_started(make_session())
    big = "SELECT '" + "x" * 20_000 + "'"
    with pytest.raises(AuditUnavailable, match="the disk is full; the command was not forwarded"):
        for seq in range(1, 100):
            await rec.command_started(make_command(seq=seq, text=big))
    written = len(rows(reader, commands))
    assert 0 < written < 99

    execute(reader, "DELETE FROM commands")  # frees pages for reuse
    await rec.command_started(make_command(seq=1000, text="SELECT 1"))
    assert [c.seq for c in rows(reader, commands)] == [1000]
    await rec.close()
    engine.dispose()


async def test_removed_file_fails_closed_then_recovers(
    db_path: Path, recorder: AuditRecorder
) -> None:
    await recorder.session_started(make_session())
    backup = db_path.with_suffix(".bak")
    other = open_engine(f"sqlite:///{db_path}", create=False)
    with other.connect() as conn:  # a consistent copy, as an operator's backup would be
        conn.exec_driver_sql(f"VACUUM INTO '{backup}'")
    other.dispose()
    remove_store(db_path)

    with pytest.raises(AuditUnavailable, match="the database file is missing"):
        await recorder.command_started(make_command())
    assert not store_exists(db_path)  # the recorder did not create an empty store in its place

    shutil.copy(backup, db_path)  # the operator restores the store
    await recorder.command_started(make_command())
    restored = open_engine(f"sqlite:///{db_path}", create=False)
    assert [c.seq for c in rows(restored, commands)] == [1]
    restored.dispose()


async def test_a_rejected_record_fails_only_its_own_caller(
    recorder: AuditRecorder, reader: Engine
) -> None:
    await recorder.session_started(make_session())
    await recorder.command_started(make_command(seq=1))
    good = recorder.command_started(make_command(seq=2))
    duplicate = recorder.command_started(make_command(seq=1))
    unknown_session = recorder.command_started(make_command("nope", 1))
    await good
    with pytest.raises(AuditUnavailable, match="rejected"):
        await duplicate
    with pytest.raises(AuditUnavailable, match="rejected"):
        await unknown_session
    assert sorted(c.seq for c in rows(reader, commands)) == [1, 2]


async def test_kept_records_are_retried_without_new_traffic(engine: Engine, reader: Engine) -> None:
    rec = AuditRecorder(engine, retry_delay=0.01)
    await rec.start()
    await rec.session_started(make_session())
    execute(reader, "ALTER TABLE sessions RENAME TO sessions_away")
    rec.session_ended("s-1", SessionEnd.CLIENT_TERMINATED, 5, 6)
    await eventually(lambda: rec.stats.failed_flushes >= 1)
    execute(reader, "ALTER TABLE sessions_away RENAME TO sessions")
    await eventually(lambda: rows(reader, sessions)[0].end_reason is not None)
    assert rows(reader, sessions)[0].end_reason == "client_terminated"
    await rec.close()


async def test_kept_records_are_bounded(engine: Engine, reader: Engine) -> None:
    rec = AuditRecorder(engine, max_retained=3, retry_delay=3600)
    await rec.start()
    await rec.session_started(make_session())
    await rec.command_started(make_command())
    execute(reader, "DROP TABLE commands")
    for _ in range(5):
        rec.command_finished("s-1", 1, DONE)
    with pytest.raises(AuditUnavailable, match="its tables are missing"):
        await rec.command_started(make_command(seq=2))
    assert rec.stats.dropped == 2
    await rec.close()
    assert rec.stats.dropped == 5  # the store never came back: the rest is lost at shutdown


async def test_timestamps_are_utc(recorder: AuditRecorder, reader: Engine) -> None:
    from zoneinfo import ZoneInfo

    local = datetime(2024, 5, 1, 14, 0, tzinfo=ZoneInfo("Europe/Paris"))
    await recorder.session_started(make_session(started_at=local))
    (s,) = rows(reader, sessions)
    assert s.started_at == datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    with reader.connect() as conn:
        raw = conn.exec_driver_sql("SELECT started_at FROM sessions").scalar()
    assert raw == "2024-05-01 12:00:00.000000"


def test_group_commit_under_uvloop(engine: Engine, reader: Engine) -> None:
    async def main() -> None:
        rec = AuditRecorder(engine)
        await rec.start()
        await rec.session_started(make_session())
        before = rec.stats.flushes
        await asyncio.gather(*(rec.command_started(make_command(seq=i)) for i in range(1, 51)))
        assert rec.stats.flushes == before + 1
        rec.command_finished("s-1", 50, DONE)
        await rec.close()

    uvloop.run(main())
    found = rows(reader, commands)
    assert len(found) == 50
    assert [c.status for c in found if c.seq == 50] == ["SELECT 3"]


async def test_several_recorders_share_one_file(db_path: Path, reader: Engine) -> None:
    """Several worker processes write the same file; here two engines stand in for them."""
    engines = [make_engine(f"sqlite:///{db_path}") for _ in range(2)]
    recs = [AuditRecorder(e) for e in engines]
    for rec in recs:
        await rec.start()

    async def client(rec: AuditRecorder, sid: str) -> None:
        await rec.session_started(make_session(sid))
        for seq in range(1, 21):
            await rec.command_started(make_command(sid, seq))

    await asyncio.gather(*(client(recs[n % 2], f"w{n}") for n in range(10)))
    for rec in recs:
        await rec.close()
    for e in engines:
        e.dispose()
    assert len(rows(reader, commands)) == 200
