"""Cross-host wake-ups through a shared PostgreSQL store (`LISTEN`/`NOTIFY`).

Theory of operation
-------------------
Several gateway hosts share one PostgreSQL state store. A change another host must act on
at once (a revoked token or identity) is written with `notify(conn, CHANNEL)` in the same
transaction: PostgreSQL delivers the notification to every listener when, and only if, it
commits. Each gateway process keeps one connection that `LISTEN`s (`Wakeups`), and the loops
that poll the store (the live-session check) wait on `Wakeups.wait(channel, interval)`
instead of a plain sleep: they run at once on a notification, and still every `interval`
when none comes (a lost connection, a change made by an older version, a SQLite store).
So polling stays the correctness mechanism and notifications only make it prompt.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Engine

from lockgate.tasks import spawn

log = logging.getLogger(__name__)

REVOKED = "lockgate_revoked"
CHANNELS = (REVOKED,)


def notify(conn: Any, channel: str) -> None:
    """Wake the other hosts' listeners of `channel` when `conn`'s transaction commits."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_notify(:channel, '')"), {"channel": channel})


class Wakeups:
    """This process's listener on a PostgreSQL store (does nothing on SQLite)."""

    def __init__(self, engine: Engine) -> None:
        url = engine.url
        self._dsn = (
            url.set(drivername="postgresql").render_as_string(hide_password=False)
            if url.get_backend_name() == "postgresql"
            else None
        )
        self._events: dict[str, asyncio.Event] = {c: asyncio.Event() for c in CHANNELS}
        self._task: asyncio.Task[None] | None = None
        self.listening = asyncio.Event()

    @property
    def enabled(self) -> bool:
        return self._dsn is not None

    def start(self) -> None:
        if self._dsn is not None and self._task is None:
            self._task = spawn(self._listen(self._dsn), name="store-wakeups")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def wait(self, channel: str, seconds: float) -> bool:
        """Sleep up to `seconds`, less if `channel` is notified; True if it was."""
        self.start()
        event = self._events[channel]
        try:
            await asyncio.wait_for(event.wait(), seconds)
        except TimeoutError:
            return False
        event.clear()
        return True

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
                    # A reconnection may have missed notifications: wake every waiter once.
                    for event in self._events.values():
                        event.set()
                    async for note in conn.notifies():
                        found = self._events.get(note.channel)
                        if found is not None:
                            found.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.listening.clear()
                failures += 1
                if failures == 1 or failures % 60 == 0:
                    log.warning("store wake-ups unavailable (%s); polling only", type(exc).__name__)
                await asyncio.sleep(min(5.0, 0.2 * failures))
