"""The recorder's writer-thread path on a real PostgreSQL server (the multi-replica store)."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from audit_builders import make_command, make_engine, make_session
from sqlalchemy import select, text
from sqlalchemy.engine import Engine

from lockgate.audit.recorder import AuditRecorder
from lockgate.audit.tables import commands, refusals, sessions
from lockgate.errors import AuditUnavailable
from lockgate.model import ClientInfo, ResultSummary, SessionEnd

pytestmark = pytest.mark.pg

SERVER = os.environ.get("LOCKGATE_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432")
DONE = ResultSummary(rows=1, status="SELECT 1", bytes_out=40, duration_ms=0.7)


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
        engine = make_engine(f"{SERVER}/{name}")
        try:
            yield engine
        finally:
            engine.dispose()
            admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


@pytest.fixture
async def pg_recorder(pg_engine: Engine) -> AsyncIterator[AuditRecorder]:
    rec = AuditRecorder(pg_engine)
    await rec.start()
    yield rec
    await rec.close()


def rows(engine: Engine, table: Any) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(select(table)))


async def test_group_commit_and_same_batch_finish(
    pg_recorder: AuditRecorder, pg_engine: Engine
) -> None:
    await pg_recorder.session_started(make_session())
    futures = [pg_recorder.command_started(make_command(seq=i)) for i in range(1, 101)]
    pg_recorder.command_finished("s-1", 100, DONE)
    await asyncio.gather(*futures)
    found = {c.seq: c for c in rows(pg_engine, commands)}
    assert len(found) == 100
    assert found[100].status == "SELECT 1"
    assert found[1].started_at.utcoffset() is not None


async def test_concurrent_clients_and_close_flush(
    pg_recorder: AuditRecorder, pg_engine: Engine
) -> None:
    async def client(n: int) -> None:
        sid = f"s-{n}"
        await pg_recorder.session_started(make_session(sid))
        for seq in range(1, 6):
            await pg_recorder.command_started(make_command(sid, seq))
            pg_recorder.command_finished(sid, seq, DONE)
        pg_recorder.session_ended(sid, SessionEnd.CLIENT_TERMINATED, 1, 2)

    await asyncio.gather(*(client(n) for n in range(20)))
    await pg_recorder.connection_refused(
        ClientInfo("192.0.2.1:1", "postgres"), "shop", None, "28P01", "bad token"
    )
    await pg_recorder.close()
    assert sum(c.finished_at is not None for c in rows(pg_engine, commands)) == 100
    assert all(s.end_reason == "client_terminated" for s in rows(pg_engine, sessions))
    assert len(rows(pg_engine, refusals)) == 1


async def test_fail_closed_then_recover(pg_recorder: AuditRecorder, pg_engine: Engine) -> None:
    await pg_recorder.session_started(make_session())
    with pg_engine.begin() as conn:
        conn.execute(text("ALTER TABLE commands RENAME TO commands_away"))
    with pytest.raises(AuditUnavailable, match="the command was not forwarded"):
        await pg_recorder.command_started(make_command(seq=1))
    with pg_engine.begin() as conn:
        conn.execute(text("ALTER TABLE commands_away RENAME TO commands"))
    await pg_recorder.command_started(make_command(seq=1))
    assert [c.seq for c in rows(pg_engine, commands)] == [1]


async def test_rejected_record_fails_only_its_caller(
    pg_recorder: AuditRecorder, pg_engine: Engine
) -> None:
    await pg_recorder.session_started(make_session())
    await pg_recorder.command_started(make_command(seq=1))
    good = pg_recorder.command_started(make_command(seq=2))
    duplicate = pg_recorder.command_started(make_command(seq=1))
    await good
    with pytest.raises(AuditUnavailable, match="rejected"):
        await duplicate
    assert sorted(c.seq for c in rows(pg_engine, commands)) == [1, 2]
