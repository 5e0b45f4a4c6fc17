"""Prompt wake-ups of the loops that poll the state store (`LISTEN`/`NOTIFY`, in-process).

Theory of operation
-------------------
Several loops poll the store for changes made elsewhere: the approval broker (decisions on
the requests this process holds), the live-session checks (revocations, revoked grants,
administrators' end-session requests) and the admin console's event hub. Whoever changes
the store calls `notify(conn, CHANNEL)` inside the transaction of the change, and each loop
waits on a `Watch` of its channels instead of a plain sleep: it runs at once on a
notification, and still every `interval` when none comes (a lost connection, a change made
by an older version). So polling stays the correctness mechanism and notifications only
make it prompt.

Two paths carry a notification:
- PostgreSQL store: `notify` adds `pg_notify(channel)` to the transaction; PostgreSQL
  delivers it to every listener, on every host, when and only if it commits. Each gateway
  process keeps one connection that `LISTEN`s (`Wakeups`).
- The same process (any store, SQLite too): `notify` marks the connection, and when it goes
  back to the pool, after its commit, the process's own `Wakeups` on that engine are woken
  (thread-safe: the change may be written from a worker thread). An admin-console decision
  in worker 0 thus reaches worker 0's broker without waiting for a poll. A rolled-back
  change wakes the loops for nothing: they find nothing new, which costs one query.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import weakref
from collections.abc import Collection
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import Engine

from lockgate.tasks import spawn

log = logging.getLogger(__name__)

REVOKED = "lockgate_revoked"  # a token or identity revoked: live sessions are checked
APPROVALS = "lockgate_approvals"  # an approval request created, decided or closed
SESSIONS = "lockgate_sessions"  # a live session asked to end, or a grant revoked
CHANNELS = (REVOKED, APPROVALS, SESSIONS)
# Live sessions must be re-checked on either.
LIVE_SESSIONS = (REVOKED, SESSIONS)

_PENDING = "lockgate_wakeups"  # key in the pooled connection's info: channels to wake
_local: weakref.WeakKeyDictionary[Engine, weakref.WeakSet[Wakeups]] = weakref.WeakKeyDictionary()
_local_lock = threading.Lock()


def notify(conn: Any, channel: str) -> None:
    """Wake `channel`'s loops, on every host and in this process, when `conn` commits."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_notify(:channel, '')"), {"channel": channel})
    with _local_lock:
        local = conn.engine in _local
    if local:
        conn.info.setdefault(_PENDING, set()).add(channel)


def _wake_on_checkin(engine: Engine) -> Any:
    """The pool check-in hook (after the commit or rollback) that wakes `engine`'s loops."""
    ref = weakref.ref(engine)

    def checked_in(dbapi_connection: Any, record: Any) -> None:
        channels = record.info.pop(_PENDING, None)
        found = ref()
        if not channels or found is None:
            return
        with _local_lock:
            targets = list(_local.get(found, ()))
        for wakeups in targets:
            wakeups.wake_threadsafe(channels)

    return checked_in


class Watch:
    """One loop's subscription to some channels; a notification is never lost to it."""

    def __init__(self, owner: Wakeups, channels: tuple[str, ...]) -> None:
        self._owner = owner
        self.channels = channels
        self._event = asyncio.Event()

    def fire(self) -> None:
        self._event.set()

    async def wait(self, seconds: float) -> bool:
        """Sleep up to `seconds`, less if a channel is notified; True if one was."""
        self._owner.start()
        try:
            await asyncio.wait_for(self._event.wait(), seconds)
        except TimeoutError:
            return False
        self._event.clear()
        return True

    def close(self) -> None:
        self._owner.unwatch(self)


class Wakeups:
    """This process's wake-ups on one store: a LISTEN connection on PostgreSQL, local calls."""

    def __init__(self, engine: Engine) -> None:
        url = engine.url
        self._dsn = (
            url.set(drivername="postgresql").render_as_string(hide_password=False)
            if url.get_backend_name() == "postgresql"
            else None
        )
        self._watches: set[Watch] = set()
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.listening = asyncio.Event()
        with _local_lock:
            if engine not in _local:
                _local[engine] = weakref.WeakSet()
                event.listen(engine, "checkin", _wake_on_checkin(engine))
            _local[engine].add(self)

    @property
    def enabled(self) -> bool:
        """True when other hosts' changes arrive by `NOTIFY` (a PostgreSQL store)."""
        return self._dsn is not None

    def watch(self, *channels: str) -> Watch:
        """A subscription to `channels` (call from the event loop that will wait on it)."""
        self._loop = asyncio.get_running_loop()
        found = Watch(self, channels)
        self._watches.add(found)
        return found

    def unwatch(self, watch: Watch) -> None:
        self._watches.discard(watch)

    def wake(self, channels: Collection[str]) -> None:
        """Wake every watch of any of `channels` (on the event loop's thread)."""
        for w in list(self._watches):
            if any(c in channels for c in w.channels):
                w.fire()

    def wake_threadsafe(self, channels: set[str]) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(self.wake, frozenset(channels))

    def start(self) -> None:
        if self._dsn is not None and self._task is None:
            self._task = spawn(self._listen(self._dsn), name="store-wakeups")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _listen(self, dsn: str) -> None:
        import psycopg

        failures = 0
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
                    for channel in CHANNELS:
                        await conn.execute(f"LISTEN {channel}")
                    failures = 0
                    self.listening.set()
                    # A reconnection may have missed notifications: wake every watch once.
                    self.wake(CHANNELS)
                    async for note in conn.notifies():
                        self.wake((note.channel,))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.listening.clear()
                failures += 1
                if failures == 1 or failures % 60 == 0:
                    log.warning("store wake-ups unavailable (%s); polling only", type(exc).__name__)
                await asyncio.sleep(min(5.0, 0.2 * failures))
