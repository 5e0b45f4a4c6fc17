"""The broker wakes a waiting handler when another writer decides in the store."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from lockgate.approvals.broker import ApprovalBroker
from lockgate.approvals.store import STATEMENT, ApprovalStore
from lockgate.config.model import ApprovalRule
from lockgate.model import Principal
from lockgate.store import open_engine

ALICE = Principal("alice", frozenset({"it"}))
BOB = Principal("bob", frozenset({"sre"}))
RULE = ApprovalRule(name="r", reviewers=["sre"])


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ApprovalStore]:
    engine = open_engine(f"sqlite:///{tmp_path}/state.db")
    yield ApprovalStore(engine)
    engine.dispose()


async def test_a_decision_in_the_store_wakes_the_waiter(store: ApprovalStore) -> None:
    events: list[str] = []
    broker = ApprovalBroker(store, 0.01, notify=lambda e, r: events.append(e))
    req = await broker.open(lambda: store.create(STATEMENT, ALICE, "db", RULE, "held"))
    waiting = broker.wait(req)
    assert not waiting.done()
    # Another process (the CLI) decides, straight in the store.
    await asyncio.to_thread(store.decide, req.id, BOB, "deny", "no")
    outcome = await asyncio.wait_for(waiting, 10)
    assert not outcome.approved and outcome.reason == "denied by bob: no"
    assert broker.waiting == 0
    assert events == ["request.created"]


async def test_withdraw_closes_the_request(store: ApprovalStore) -> None:
    broker = ApprovalBroker(store, 0.01)
    req = await broker.open(lambda: store.create(STATEMENT, ALICE, "db", RULE, "held"))
    waiting = broker.wait(req)
    await broker.withdraw(req.id, "client left")
    assert waiting.result().status == "withdrawn"
    assert store.outcomes([req.id]) == {req.id: ("withdrawn", "client left")}
