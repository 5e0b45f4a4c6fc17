"""Changes to reviews and sessions, found in the state store, fanned out to streams.

Requests are decided and sessions open in any gateway process (or the CLI), so the store is
the one place that sees them all. One task per admin app looks at it while at least one
stream listens, compares with what it saw last, and hands each change to every listener's
queue. It looks at once when a request is created, decided or closed anywhere (the
`APPROVALS` notification, wakeups.py: `NOTIFY` on a PostgreSQL store, in-process and on
this host on any store), when an audit ingester has stored sessions that started or ended
(`AUDIT`), or after a local change (`kick`); and every `admin.events_interval` otherwise,
for changes no notification reaches.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from lockgate.admin.context import AdminContext
from lockgate.approvals.store import ApprovalRequest
from lockgate.audit.query import list_sessions
from lockgate.tasks import spawn
from lockgate.wakeups import APPROVALS, AUDIT, Wakeups, Watch

log = logging.getLogger("lockgate.admin.events")
# Bounded: a listener that stops reading loses events rather than growing memory.
QUEUE_SIZE = 256
WATCHED_REVIEWS = 500
WATCHED_SESSIONS = 200
# The least time between two looks at the store, however many wake-ups come (seconds).
MIN_GAP = 0.1


@dataclass(frozen=True, slots=True)
class Change:
    """A review created or decided (`request`), or a session started or ended (`session`)."""

    kind: str
    request: ApprovalRequest | None = None
    session: dict[str, Any] | None = None


class EventHub:
    """Polls the store while someone listens; each listener gets every change."""

    def __init__(self, ctx: AdminContext) -> None:
        self._ctx = ctx
        self._listeners: set[asyncio.Queue[Change]] = set()
        self._watch: Watch | None = None
        self._task: asyncio.Task[None] | None = None
        self._reviews: dict[str, tuple[str, int]] | None = None
        self._sessions: dict[str, bool] | None = None

    def subscribe(self) -> asyncio.Queue[Change]:
        queue: asyncio.Queue[Change] = asyncio.Queue(QUEUE_SIZE)
        self._listeners.add(queue)
        if self._task is None or self._task.done():
            self._task = spawn(self._run(), name="admin-events")
        return queue

    def unsubscribe(self, queue: asyncio.Queue[Change]) -> None:
        self._listeners.discard(queue)

    def kick(self) -> None:
        """Look now (something changed here), not at the next interval."""
        if self._watch is not None:
            self._watch.fire()

    async def _run(self) -> None:
        admin = self._ctx.manifest.admin
        interval = admin.events_interval if admin else 1.0
        self._reviews = self._sessions = None  # a fresh baseline: no replay of old news
        wakeups, own = self._ctx.wakeups, None
        if wakeups is None:  # an app without a gateway: its own, closed with the stream
            wakeups = own = Wakeups(self._ctx.engine)
        self._watch = watch = wakeups.watch(APPROVALS, AUDIT)
        try:
            await self._look(watch, interval)
        finally:
            watch.close()
            if own is not None:
                await own.close()

    async def _look(self, watch: Watch, interval: float) -> None:
        while self._listeners and not self._ctx.stopping.is_set():
            try:
                changes = await asyncio.to_thread(self._poll)
            except SQLAlchemyError as exc:
                log.warning("admin events: the state store failed: %s", type(exc).__name__)
                changes = []
            for change in changes:
                for queue in list(self._listeners):
                    if not queue.full():
                        queue.put_nowait(change)
            # Wake-ups that come in a burst (many sessions opening) share a look.
            await asyncio.sleep(MIN_GAP)
            await watch.wait(max(interval - MIN_GAP, 0.0))

    def _poll(self) -> list[Change]:
        out: list[Change] = []
        requests = self._ctx.approvals.requests(None, WATCHED_REVIEWS)
        reviews = {r.id: (r.status, len(r.decisions)) for r in requests}
        if self._reviews is not None:
            out += [
                Change("review", request=r)
                for r in reversed(requests)
                if self._reviews.get(r.id) != reviews[r.id]
            ]
        self._reviews = reviews
        rows = list_sessions(self._ctx.engine, limit=WATCHED_SESSIONS, held=True)
        sessions = {row["id"]: row["ended_at"] is None for row in rows}
        if self._sessions is not None:
            out += [
                Change("session", session=row)
                for row in reversed(rows)
                if self._sessions.get(row["id"]) != sessions[row["id"]]
            ]
        self._sessions = sessions
        return out


def hub(ctx: AdminContext) -> EventHub:
    """The context's hub, made on first use (it needs the running loop)."""
    found = ctx.events
    if found is None:
        found = ctx.events = EventHub(ctx)
    assert isinstance(found, EventHub)
    return found
