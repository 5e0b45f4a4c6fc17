"""Store changes wake the loops that poll it: in-process on any store, by NOTIFY across hosts.

Every broker here polls every 30 s as its fallback and every wait is bounded well below
that, so a waiter released in time can only have been woken by a notification.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine

from lockgate.approvals.broker import ApprovalBroker, ApprovalOutcome
from lockgate.approvals.store import STATEMENT, ApprovalStore
from lockgate.config.model import ApprovalRule
from lockgate.identity.session_limits import request_end
from lockgate.identity.tables import session_terminations
from lockgate.model import Principal
from lockgate.store import open_engine
from lockgate.wakeups import APPROVALS, AUDIT, LIVE_SESSIONS, SESSIONS, Wakeups, announce, notify

ALICE = Principal("alice", frozenset({"it"}))
BOB = Principal("bob", frozenset({"sre"}))
RULE = ApprovalRule(name="r", reviewers=["sre"])
FALLBACK = 30.0  # the brokers' poll interval: far longer than any bounded wait below
BOUND = 10.0


@pytest.fixture
def sqlite(tmp_path: Path) -> Iterator[Engine]:
    engine = open_engine(f"sqlite:///{tmp_path}/state.db")
    yield engine
    engine.dispose()


@pytest.fixture
def pg_store(pg_server: tuple[str, int, str]) -> Iterator[str]:
    """The URL of a fresh PostgreSQL state store (a database of its own, dropped after)."""
    host, port, user = pg_server
    name = f"lockgate_wake_{secrets.token_hex(4)}"
    admin = {"host": host, "port": port, "user": user, "dbname": "postgres", "autocommit": True}
    with psycopg.connect(**admin) as c:  # type: ignore[arg-type]
        c.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://{user}@{host}:{port}/{name}"
    finally:
        with psycopg.connect(**admin) as c:  # type: ignore[arg-type]
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def _held(
    broker: ApprovalBroker, store: ApprovalStore
) -> tuple[str, asyncio.Future[ApprovalOutcome]]:
    req = await broker.open(lambda: store.create(STATEMENT, ALICE, "db", RULE, "held"))
    waiting = broker.wait(req)
    await asyncio.sleep(0.05)  # the poller's first look has run: only a wake-up is left
    assert not waiting.done()
    return req.id, waiting


async def test_a_decision_in_this_process_wakes_the_broker_at_once(sqlite: Engine) -> None:
    store = ApprovalStore(sqlite)
    wakeups = Wakeups(sqlite)
    assert not wakeups.enabled  # SQLite: no NOTIFY, only the in-process path
    broker = ApprovalBroker(store, FALLBACK, wakeups=wakeups)
    req_id, waiting = await _held(broker, store)
    # The admin API decides in a worker thread of the same process.
    await asyncio.to_thread(store.decide, req_id, BOB, "approve", "fine")
    outcome = await asyncio.wait_for(waiting, BOUND)
    assert outcome.approved
    assert broker.waiting == 0


async def test_a_decision_in_another_process_on_sqlite_wakes_the_broker(sqlite: Engine) -> None:
    """Another engine on the same file stands for another process (a worker, the CLI)."""
    store = ApprovalStore(sqlite)
    wakeups = Wakeups(sqlite)
    broker = ApprovalBroker(store, FALLBACK, wakeups=wakeups)
    req_id, waiting = await _held(broker, store)
    assert wakeups.peer_path is not None
    assert await asyncio.to_thread(os.path.exists, wakeups.peer_path)
    other = open_engine(str(sqlite.url))
    try:
        await asyncio.to_thread(ApprovalStore(other).decide, req_id, BOB, "deny", "no")
    finally:
        other.dispose()
    outcome = await asyncio.wait_for(waiting, BOUND)
    assert outcome.status == "denied"
    await wakeups.close()
    assert not await asyncio.to_thread(os.path.exists, wakeups.peer_path)


async def test_a_change_nobody_notified_is_found_by_the_poll(sqlite: Engine) -> None:
    """An older version's decision (no notification): the fallback poll still sees it."""
    store = ApprovalStore(sqlite)
    broker = ApprovalBroker(store, 0.05, wakeups=Wakeups(sqlite))
    req_id, waiting = await _held(broker, store)
    with sqlite.begin() as conn:
        conn.execute(
            text("UPDATE approval_requests SET status = 'denied', outcome = 'old' WHERE id = :i"),
            {"i": req_id},
        )
    outcome = await asyncio.wait_for(waiting, BOUND)
    assert outcome.status == "denied" and outcome.reason == "old"


def test_the_socket_of_a_gone_process_is_removed(sqlite: Engine, tmp_path: Path) -> None:
    folder = tmp_path / "state.db.wake"
    folder.mkdir()
    gone = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    gone.bind(str(folder / "1-dead.sock"))
    gone.close()  # its process was killed: the file stays, nobody reads it
    with sqlite.begin() as conn:
        notify(conn, APPROVALS)
    assert not (folder / "1-dead.sock").exists()


async def test_a_watch_keeps_a_notification_that_came_while_it_was_busy(sqlite: Engine) -> None:
    wakeups = Wakeups(sqlite)
    broker_watch = wakeups.watch(APPROVALS)
    sessions_watch = wakeups.watch(*LIVE_SESSIONS)
    with sqlite.begin() as conn:
        notify(conn, SESSIONS)
    await asyncio.sleep(0)  # the wake is handed to the loop thread-safely
    # Nobody was waiting yet; the session watch still wakes, the broker's does not.
    assert await asyncio.wait_for(sessions_watch.wait(FALLBACK), BOUND)
    assert not await broker_watch.wait(0.05)


async def test_a_rolled_back_change_only_costs_a_look(sqlite: Engine) -> None:
    wakeups = Wakeups(sqlite)
    watch = wakeups.watch(APPROVALS)
    with pytest.raises(RuntimeError), sqlite.begin() as conn:
        notify(conn, APPROVALS)
        raise RuntimeError("rolled back")
    with sqlite.begin() as conn:  # the pooled connection carries no stale mark
        conn.execute(text("SELECT 1"))
    assert await asyncio.wait_for(watch.wait(FALLBACK), BOUND)
    assert not await watch.wait(0.05)


async def test_expiry_is_not_left_to_the_fallback_poll(sqlite: Engine) -> None:
    store = ApprovalStore(sqlite)
    broker = ApprovalBroker(store, FALLBACK, wakeups=Wakeups(sqlite))
    rule = ApprovalRule(name="quick", reviewers=["sre"], expires="1s")
    req = await broker.open(lambda: store.create(STATEMENT, ALICE, "db", rule, "held"))
    outcome = await asyncio.wait_for(broker.wait(req), BOUND)
    assert outcome.status == "expired"


@pytest.mark.pg
async def test_notify_from_another_host_wakes_the_broker_and_session_watch(
    pg_store: str,
) -> None:
    here, there = open_engine(pg_store), open_engine(pg_store)  # two hosts' engines
    wakeups = Wakeups(here)
    try:
        assert wakeups.enabled
        store = ApprovalStore(here)
        broker = ApprovalBroker(store, FALLBACK, wakeups=wakeups)
        sessions = wakeups.watch(*LIVE_SESSIONS)
        wakeups.start()
        await asyncio.wait_for(wakeups.listening.wait(), BOUND)
        await sessions.wait(0.5)  # the wake-up every watch gets when the listener connects
        req_id, waiting = await _held(broker, store)
        await asyncio.to_thread(ApprovalStore(there).decide, req_id, BOB, "approve", "ok")
        outcome = await asyncio.wait_for(waiting, BOUND)
        assert outcome.approved
        # An administrator on the other host asks for a session's end.
        session_terminations.create(there, checkfirst=True)
        await asyncio.to_thread(request_end, there, "s-1", "root", "done")
        assert await asyncio.wait_for(sessions.wait(FALLBACK), BOUND)
    finally:
        await wakeups.close()
        here.dispose()
        there.dispose()


async def test_the_ingester_s_announcement_wakes_watchers_here_and_in_other_processes(
    sqlite: Engine, tmp_path: Path
) -> None:
    """`announce` (sessions the audit ingester stored) reaches this process's watches on the
    same engine, and those of another process (another engine on the file), without ever
    opening the store: a removed SQLite file must not come back empty."""
    here = Wakeups(sqlite)
    other = open_engine(str(sqlite.url))
    elsewhere = Wakeups(other)
    try:
        local, remote = here.watch(AUDIT), elsewhere.watch(AUDIT)
        unrelated = here.watch(APPROVALS)
        await asyncio.to_thread(announce, sqlite, AUDIT)
        assert await local.wait(BOUND) and await remote.wait(BOUND)
        assert not await unrelated.wait(0.2)
        db = tmp_path / "state.db"
        db.unlink()
        await asyncio.to_thread(announce, sqlite, AUDIT)
        assert await remote.wait(BOUND)
        assert not db.exists()
    finally:
        await here.close()
        await elsewhere.close()
        other.dispose()
