"""Waiting for reviewers inside a gateway process.

Theory of operation
-------------------
A protocol handler that must hold a command calls `ApprovalBroker.open` (the request is
stored, then announced) and gets back a future from `wait`. Decisions are written to the
store by whoever takes them (the CLI, the admin API, another host), so each process
watches: one task, alive only while this process holds requests, asks the store for the
status of those requests (one indexed query) and resolves the futures of the ones that
closed. It asks when woken (every change to a request notifies `APPROVALS`, see
wakeups.py: `NOTIFY` from any host on a PostgreSQL store, and in-process from this one),
at the earliest expiry it holds, and at least every `poll_interval` (the fallback when a
notification cannot arrive: another process on a SQLite store, a lost listener). A request
past its expiry is closed as `expired` by the poller itself. A handler whose client goes
away calls `withdraw`. Nothing here runs per row or per byte.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from lockgate.approvals.store import (
    APPROVED,
    EXPIRED,
    PENDING,
    WITHDRAWN,
    ApprovalRequest,
    ApprovalStore,
)
from lockgate.tasks import spawn
from lockgate.wakeups import APPROVALS, Wakeups

log = logging.getLogger("lockgate.approvals")


@dataclass(frozen=True, slots=True)
class ApprovalOutcome:
    """How a held request ended, as the waiting handler needs it."""

    request_id: str
    status: str
    reason: str

    @property
    def approved(self) -> bool:
        return self.status == APPROVED


Notify = Callable[[str, ApprovalRequest], None]


class ApprovalBroker:
    """Stores requests, wakes the handlers waiting on them; one per gateway process."""

    def __init__(
        self,
        store: ApprovalStore,
        poll_interval: float = 0.5,
        notify: Notify | None = None,
        wakeups: Wakeups | None = None,
    ) -> None:
        self.store = store
        self.poll_interval = poll_interval
        self._notify = notify
        self._wakeups = wakeups
        self._waiting: dict[str, tuple[ApprovalRequest, asyncio.Future[ApprovalOutcome]]] = {}
        self._poller: asyncio.Task[None] | None = None

    async def open(self, make: Callable[[], ApprovalRequest]) -> ApprovalRequest:
        """Store a request (`make` runs in a thread: it writes to the store) and announce it."""
        request = await asyncio.to_thread(make)
        if self._notify is not None:
            self._notify("request.created", request)
        return request

    def wait(self, request: ApprovalRequest) -> asyncio.Future[ApprovalOutcome]:
        """A future resolved when the request is decided, expires or is withdrawn."""
        fut: asyncio.Future[ApprovalOutcome] = asyncio.get_running_loop().create_future()
        self._waiting[request.id] = (request, fut)
        if self._poller is None or self._poller.done():
            self._poller = spawn(self._poll(), name="approval-poll")
        return fut

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    async def withdraw(self, request_id: str, why: str) -> None:
        """Close a request nobody waits for any more (the client went away)."""
        entry = self._waiting.pop(request_id, None)
        if entry is not None and not entry[1].done():
            entry[1].set_result(ApprovalOutcome(request_id, WITHDRAWN, why))
        try:
            closed = await asyncio.to_thread(self.store.close, request_id, WITHDRAWN, why)
        except Exception:  # the request stays pending and expires on its own
            log.exception("could not withdraw approval request %s", request_id)
            return
        if closed and entry is not None and self._notify is not None:
            self._notify("request.withdrawn", entry[0])

    async def _poll(self) -> None:
        watch = self._wakeups.watch(APPROVALS) if self._wakeups is not None else None
        try:
            # At once first: a decision taken before the watch existed woke nobody.
            while self._waiting:
                try:
                    await self._check()
                except Exception:  # a store hiccup must not strand the waiting clients
                    log.exception("approval poll failed")
                if not self._waiting:
                    break
                if watch is None:
                    await asyncio.sleep(self._next_wait())
                else:
                    await watch.wait(self._next_wait())
        finally:
            if watch is not None:
                watch.close()

    def _next_wait(self) -> float:
        """Seconds until the next look: the fallback interval or the earliest expiry."""
        soonest = min((r.expires_at for r, _ in self._waiting.values()), default=None)
        left = (soonest - datetime.now(UTC)).total_seconds() if soonest else 0.0
        # Past due means closing it failed just now: retry at the fallback pace.
        return min(self.poll_interval, left + 0.01) if left > 0 else self.poll_interval

    async def _check(self) -> None:
        ids = list(self._waiting)
        if not ids:
            return
        now = datetime.now(UTC)
        for rid in ids:
            entry = self._waiting.get(rid)
            if entry is not None and entry[0].expires_at <= now:
                await asyncio.to_thread(
                    self.store.close, rid, EXPIRED, "no reviewer decided in time", now
                )
        outcomes = await asyncio.to_thread(self.store.outcomes, ids)
        for rid, (status, outcome) in outcomes.items():
            if status == PENDING:
                continue
            entry = self._waiting.pop(rid, None)
            if entry is None or entry[1].done():
                continue
            entry[1].set_result(ApprovalOutcome(rid, status, outcome or status))
            # Decisions are announced by whoever took them; expiry only here.
            if self._notify is not None and status == EXPIRED:
                self._notify(f"request.{status}", entry[0])
        for rid in ids:
            if rid not in outcomes:  # deleted under us: never run it
                entry = self._waiting.pop(rid, None)
                if entry is not None and not entry[1].done():
                    entry[1].set_result(ApprovalOutcome(rid, WITHDRAWN, "the request vanished"))
