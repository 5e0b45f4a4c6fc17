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
  in worker 0 thus reaches worker 0's broker without waiting for a poll.
- Other processes on a SQLite file store (the workers, the CLI): each `Wakeups` binds a
  unix datagram socket in a folder next to the database file (`lockgate.db.wake/`), and the
  same check-in hook sends the channel names to every socket there but its own. A socket
  nobody reads any more (a killed process) is removed by the first sender it refuses.
A rolled-back change wakes the loops for nothing: they find nothing new, one query.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import threading
import weakref
from collections.abc import Collection
from pathlib import Path
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from lockgate.tasks import spawn

log = logging.getLogger(__name__)

REVOKED = "lockgate_revoked"  # a token or identity revoked: live sessions are checked
APPROVALS = "lockgate_approvals"  # an approval request created, decided or closed
SESSIONS = "lockgate_sessions"  # a live session asked to end, or a grant revoked
AUDIT = "lockgate_audit"  # sessions that started or ended reached the audit store
CHANNELS = (REVOKED, APPROVALS, SESSIONS, AUDIT)
# Live sessions must be re-checked on either.
LIVE_SESSIONS = (REVOKED, SESSIONS)

_PENDING = "lockgate_wakeups"  # key in the pooled connection's info: channels to wake
_local: weakref.WeakKeyDictionary[Engine, weakref.WeakSet[Wakeups]] = weakref.WeakKeyDictionary()
_local_lock = threading.Lock()


def notify(conn: Any, channel: str) -> None:
    """Wake `channel`'s loops, on every host and in this process, when `conn` commits."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_notify(:channel, '')"), {"channel": channel})
    _hooked(conn.engine)
    conn.info.setdefault(_PENDING, set()).add(channel)


def announce(engine: Engine, channel: str) -> None:
    """Wake `channel`'s loops now, for a change `engine` has already committed.

    For writers that do not go through the pool (the audit ingester's own connection). On
    PostgreSQL a transaction of its own carries the `NOTIFY`; on SQLite no connection is
    opened (a store file removed under a running gateway must not be recreated empty): this
    process's loops and the other processes on this host are told directly. Best effort,
    like every wake-up.
    """
    if engine.dialect.name == "postgresql":
        try:
            with engine.begin() as conn:
                notify(conn, channel)
        except SQLAlchemyError as exc:
            log.debug("wake-up on %s not sent: %s", channel, type(exc).__name__)
        return
    _wake(engine, {channel})


def _wake(engine: Engine, channels: set[str]) -> None:
    """Wake `channels` in this process's loops on `engine` and in other processes here."""
    with _local_lock:
        targets = list(_local.get(engine, ()))
    for wakeups in targets:
        wakeups.wake_threadsafe(channels)
    peers = _peer_folder(engine)
    if peers is not None:
        _tell_peers(peers, channels, {w.peer_path for w in targets})


def _hooked(engine: Engine) -> weakref.WeakSet[Wakeups]:
    """This process's `Wakeups` on `engine`, its check-in hook installed on first use."""
    with _local_lock:
        found = _local.get(engine)
        if found is None:
            found = _local[engine] = weakref.WeakSet()
            event.listen(engine, "checkin", _wake_on_checkin(engine))
        return found


def _wake_on_checkin(engine: Engine) -> Any:
    """The pool check-in hook (after the commit or rollback) that wakes `engine`'s loops."""
    ref = weakref.ref(engine)

    def checked_in(dbapi_connection: Any, record: Any) -> None:
        channels = record.info.pop(_PENDING, None)
        found = ref()
        if channels and found is not None:
            _wake(found, channels)

    return checked_in


def _peer_folder(engine: Engine) -> Path | None:
    """Where processes sharing a SQLite file store bind their wake-up sockets."""
    db = engine.url.database
    if engine.dialect.name != "sqlite" or not db or db == ":memory:" or db.startswith("file:"):
        return None
    path = Path(db)
    return path.parent / f"{path.name}.wake"


def _tell_peers(folder: Path, channels: Collection[str], skip: set[str | None]) -> None:
    """Send `channels` to every other process's socket in `folder` (never blocks)."""
    try:
        paths = [e.path for e in os.scandir(folder) if e.name.endswith(".sock")]
    except OSError:
        return  # no process listens yet
    data = "\n".join(sorted(channels)).encode()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
        sender.setblocking(False)
        for path in paths:
            if path in skip:
                continue
            try:
                sender.sendto(data, path)
            except ConnectionRefusedError:  # nobody reads it: its process is gone
                with contextlib.suppress(OSError):
                    os.unlink(path)
            except OSError:  # a full queue (it has wake-ups to read anyway), gone meanwhile
                pass


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
        self._peers = _peer_folder(engine)
        self._peer: socket.socket | None = None
        self.peer_path: str | None = None  # this process's socket among `_peers`
        found = _hooked(engine)
        with _local_lock:
            found.add(self)

    @property
    def enabled(self) -> bool:
        """True when other hosts' changes arrive by `NOTIFY` (a PostgreSQL store)."""
        return self._dsn is not None

    def watch(self, *channels: str) -> Watch:
        """A subscription to `channels` (call from the event loop that will wait on it)."""
        self._loop = asyncio.get_running_loop()
        found = Watch(self, channels)
        self._watches.add(found)
        self.start()  # from now on, a change anywhere wakes it
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
        if self._peers is not None and self._peer is None:
            self._bind_peer(self._peers)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._peer is not None and self._loop is not None:
            self._loop.remove_reader(self._peer.fileno())
            self._peer.close()
            self._peer = None
            with contextlib.suppress(OSError):
                os.unlink(self.peer_path or "")

    def _bind_peer(self, folder: Path) -> None:
        """Bind this process's socket for other processes' changes to a SQLite store."""
        self._loop = loop = asyncio.get_running_loop()
        path = folder / f"{os.getpid()}-{secrets.token_hex(4)}.sock"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            if len(os.fsencode(path)) > 100:  # sun_path holds 104 to 108 bytes
                raise OSError(f"the path {path} is too long for a unix socket")
            folder.mkdir(mode=0o700, exist_ok=True)
            sock.setblocking(False)
            sock.bind(str(path))
        except OSError as exc:
            sock.close()
            self._peers = None  # once: the fallback poll is correct, only slower
            log.warning("same-host wake-ups unavailable (%s); polling only", exc)
            return
        self._peer, self.peer_path = sock, str(path)
        loop.add_reader(sock.fileno(), self._on_peer, sock)

    def _on_peer(self, sock: socket.socket) -> None:
        channels: set[str] = set()
        while True:
            try:
                data = sock.recv(512)
            except OSError:  # drained (BlockingIOError) or closed
                break
            channels.update(data.decode("ascii", "replace").split("\n"))
        self.wake(channels)

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
