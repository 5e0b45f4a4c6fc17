"""The write-ahead audit recorder that protocol handlers call on their hot path.

Theory of operation
-------------------
Handlers call the recorder from one asyncio loop thread. Each call appends one tuple to the
current `_Batch`; the first append in a loop iteration schedules `_flush` with `loop.call_soon`,
so everything enqueued during that iteration is written in ONE transaction (group commit):
inserts first (sessions, commands, refusals, each with `executemany`), then updates (finished
commands, ended sessions), so a finish queued in the same batch as its start still lands. Only
after the commit are the batch's futures resolved: a write-ahead caller (`session_started`,
`command_started`) admits the session or forwards the command once its future succeeded.

SQLite: the flush runs synchronously in the loop thread on a raw DBAPI connection; a WAL commit
with synchronous=NORMAL costs microseconds, less than handing the batch to a thread.
Other databases: one writer thread writes one batch at a time; whatever arrives meanwhile forms
the next batch, so batches grow with the database's latency.

Fail closed: when a flush fails (disk full, locked, file removed, server gone) every write-ahead
future of the batch fails with `AuditUnavailable`, the connection is dropped, and the next flush
opens a new one, so the gateway recovers by itself once the store is back. Fire-and-forget
records (finishes, ends, refusals) of a failed batch are kept for the next flush, at most
`max_retained` of them (oldest dropped first), and a retry is scheduled even without new traffic.
A batch rejected by a constraint (a duplicate id, an unknown session) is rewritten record by
record so one bad record fails only its own caller.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Table
from sqlalchemy.engine import Engine

from lockgate.audit.tables import commands, refusals, sessions
from lockgate.errors import AuditUnavailable
from lockgate.model import ClientInfo, Command, ResultSummary, Session, SessionEnd

log = logging.getLogger(__name__)

Row = tuple[Any, ...]

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode

_COMMAND_FINISH_COLUMNS = (
    "finished_at",
    "rows",
    "status",
    "error_code",
    "error_message",
    "bytes_out",
    "duration_ms",
)
_SESSION_END_COLUMNS = ("ended_at", "end_reason", "bytes_from_client", "bytes_to_client", "error")

_SQLITE_REASONS = {
    "SQLITE_FULL": "the disk is full",
    "SQLITE_BUSY": "the database is locked by another writer",
    "SQLITE_LOCKED": "the database is locked",
    "SQLITE_READONLY": "the database is read-only",
    "SQLITE_CANTOPEN": "the database file cannot be opened",
    "SQLITE_IOERR": "the database file cannot be written",
    "SQLITE_CORRUPT": "the database file is damaged",
    "SQLITE_NOTADB": "the database file is damaged",
    "SQLITE_CONSTRAINT": "a record was rejected (duplicate or unknown session)",
}


@dataclass(slots=True)
class RecorderStats:
    """Counters for monitoring: flushes attempted and failed, records written and dropped."""

    flushes: int = 0
    failed_flushes: int = 0
    records: int = 0
    dropped: int = 0


class _StoreGone(Exception):
    """The SQLite file was removed; reconnecting would silently create an empty one."""


class _Batch:
    """Records enqueued in one loop iteration (plus fire-and-forget ones kept from a failure)."""

    __slots__ = (
        "cmd_futs",
        "cmd_rows",
        "cmd_updates",
        "refusal_rows",
        "sess_futs",
        "sess_rows",
        "sess_updates",
        "waiters",
    )

    def __init__(self) -> None:
        self.sess_rows: list[Row] = []
        self.sess_futs: list[asyncio.Future[None]] = []
        self.cmd_rows: list[Row] = []
        self.cmd_futs: list[asyncio.Future[None]] = []
        self.refusal_rows: list[Row] = []
        self.cmd_updates: list[Row] = []
        self.sess_updates: list[Row] = []
        # Resolved after the flush whatever its outcome (refusals wait for one attempt).
        self.waiters: list[asyncio.Future[None]] = []

    def __bool__(self) -> bool:
        return bool(
            self.sess_rows
            or self.cmd_rows
            or self.refusal_rows
            or self.cmd_updates
            or self.sess_updates
            or self.waiters
        )

    def size(self) -> int:
        return (
            len(self.sess_rows)
            + len(self.cmd_rows)
            + len(self.refusal_rows)
            + len(self.cmd_updates)
            + len(self.sess_updates)
        )


@dataclass(slots=True)
class _Outcome:
    """How a write went. Per-record errors are set only when the batch was written one by one."""

    error: BaseException | None = None
    sess_errors: list[BaseException | None] | None = None
    cmd_errors: list[BaseException | None] | None = None


class _Statements:
    """Plain DBAPI SQL derived from the Core tables, in the driver's positional paramstyle."""

    def __init__(self, engine: Engine) -> None:
        dialect = engine.dialect
        style = dialect.paramstyle
        if style == "qmark":
            mark: Callable[[int], str] = lambda _i: "?"  # noqa: E731
        elif style in ("format", "pyformat"):
            mark = lambda _i: "%s"  # noqa: E731
        elif style == "numeric":
            mark = lambda i: f":{i}"  # noqa: E731
        else:
            raise ValueError(f"the audit recorder needs a positional DBAPI paramstyle, not {style}")
        quote = dialect.identifier_preparer.quote

        def insert(table: Table, columns: Sequence[str]) -> str:
            names = ", ".join(quote(c) for c in columns)
            marks = ", ".join(mark(i + 1) for i in range(len(columns)))
            return f"INSERT INTO {quote(table.name)} ({names}) VALUES ({marks})"

        def update(table: Table, columns: Sequence[str], keys: Sequence[str]) -> str:
            sets = ", ".join(f"{quote(c)} = {mark(i + 1)}" for i, c in enumerate(columns))
            n = len(columns)
            where = " AND ".join(f"{quote(k)} = {mark(n + i + 1)}" for i, k in enumerate(keys))
            return f"UPDATE {quote(table.name)} SET {sets} WHERE {where}"

        self.session_columns = [
            c.name for c in sessions.columns if c.name not in _SESSION_END_COLUMNS
        ]
        self.command_columns = [
            c.name for c in commands.columns if c.name not in _COMMAND_FINISH_COLUMNS
        ]
        self.refusal_columns = [c.name for c in refusals.columns if c.name != "id"]
        self.insert_session = insert(sessions, self.session_columns)
        self.insert_command = insert(commands, self.command_columns)
        self.insert_refusal = insert(refusals, self.refusal_columns)
        self.finish_command = update(commands, _COMMAND_FINISH_COLUMNS, ("session_id", "seq"))
        self.end_session = update(sessions, _SESSION_END_COLUMNS, ("id",))


def _identity(value: Any) -> Any:
    return value


class AuditRecorder:
    """Write-ahead, group-committed audit writer; call it only from its event loop's thread."""

    def __init__(
        self,
        engine: Engine,
        *,
        max_retained: int = 100_000,
        retry_delay: float = 1.0,
    ) -> None:
        self._engine = engine
        self._sql = _Statements(engine)
        self._dbapi: Any = engine.dialect.dbapi
        ts = commands.c.started_at.type.dialect_impl(engine.dialect).bind_processor(engine.dialect)
        self._ts: Callable[[datetime], Any] = ts or _identity
        self._threaded = engine.dialect.name != "sqlite"
        db = engine.url.database or ""
        self._sqlite_path = (
            os.path.abspath(db)
            if not self._threaded and db and db != ":memory:" and not db.startswith("file:")
            else None
        )
        self._file_id: tuple[int, int] | None = None
        self.max_retained = max_retained
        self.retry_delay = retry_delay
        self.stats = RecorderStats()

        self._loop: asyncio.AbstractEventLoop | None = None
        self._accepting = False
        self._closed = False
        self._batch = _Batch()
        self._scheduled = False
        self._retry_handle: asyncio.TimerHandle | None = None
        self._conn: Any = None  # the raw DBAPI connection of whichever thread writes
        # Writer thread (databases other than SQLite).
        self._queue: queue.SimpleQueue[_Batch | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._in_flight = False
        self._flush_wanted = False
        self._idle: list[asyncio.Future[None]] = []

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Bind to the running loop and open the writer connection (raises AuditUnavailable)."""
        if self._loop is not None:
            raise RuntimeError("AuditRecorder.start() was already called")
        loop = asyncio.get_running_loop()
        if self._threaded:
            ready: asyncio.Future[None] = loop.create_future()
            self._loop = loop
            self._thread = threading.Thread(
                target=self._writer_main, args=(ready,), name="lockgate-audit-writer", daemon=True
            )
            self._thread.start()
            try:
                await ready
            except BaseException:
                self._loop = None
                self._thread = None
                raise
        else:
            try:
                self._connect()
            except Exception as exc:
                raise _unavailable(exc, "the gateway cannot start") from None
            self._loop = loop
        self._accepting = True

    async def close(self) -> None:
        """Flush everything still queued, then close the writer connection."""
        if self._closed or self._loop is None:
            self._closed = True
            return
        self._accepting = False
        self._closed = True
        if self._retry_handle is not None:
            self._retry_handle.cancel()
            self._retry_handle = None
        if self._threaded:
            await self._wait_idle()
            self._flush()
            await self._wait_idle()  # also waits for re-flushes the writer asked for
            self._queue.put(None)
            thread = self._thread
            if thread is not None:
                await asyncio.get_running_loop().run_in_executor(None, thread.join)
        else:
            self._flush()
            self._disconnect(invalidate=False)
        lost = self._batch.size()
        if lost:
            self.stats.dropped += lost
            log.error(
                "audit store unavailable at shutdown: %d audit records were not written", lost
            )
        self._batch = _Batch()

    # ------------------------------------------------------------------ the hot path

    async def session_started(self, session: Session) -> None:
        """Record an admitted session; durable when this returns, else AuditUnavailable."""
        fut = self._new_future("the connection was not admitted")
        if fut.done():
            return await fut
        p = session.principal
        c = session.client
        b = self._batch
        b.sess_rows.append(
            (
                session.id,
                p.subject,
                _dumps(sorted(p.groups)),
                p.kind.value,
                p.issuer,
                p.token_id,
                session.resource,
                c.protocol,
                c.address,
                c.user_name,
                c.application_name,
                self._ts(session.started_at),
            )
        )
        b.sess_futs.append(fut)
        if not self._scheduled:
            self._schedule()
        await fut

    async def connection_refused(
        self, client: ClientInfo, resource: str, subject: str | None, code: str, reason: str
    ) -> None:
        """Record a refused connection; waits for one write attempt, never raises on failure.

        The connection is refused either way, so a failed write only keeps the record queued.
        """
        if not self._accepting:
            self._dropped_after_close()
            return
        loop = self._loop
        assert loop is not None
        waiter: asyncio.Future[None] = loop.create_future()
        b = self._batch
        b.refusal_rows.append(
            (
                self._ts(datetime.now(UTC)),
                client.address,
                client.protocol,
                resource,
                subject,
                code,
                reason,
            )
        )
        b.waiters.append(waiter)
        if not self._scheduled:
            self._schedule()
        await waiter

    def command_started(self, cmd: Command) -> asyncio.Future[None]:
        """Record a command before it is forwarded; the future fails with AuditUnavailable."""
        fut = self._new_future("the command was not forwarded")
        if fut.done():
            return fut
        d = cmd.decision
        params = cmd.params
        b = self._batch
        b.cmd_rows.append(
            (
                cmd.session_id,
                cmd.seq,
                self._ts(datetime.now(UTC)),
                cmd.text,
                cmd.kind,
                _dumps(cmd.tables) if cmd.tables else "[]",
                None if params is None else _dumps(params),
                d.kind.value,
                d.rule,
                d.reason,
            )
        )
        b.cmd_futs.append(fut)
        if not self._scheduled:
            self._schedule()
        return fut

    def command_finished(self, session_id: str, seq: int, summary: ResultSummary) -> None:
        """Complete a command's record with its outcome (fire-and-forget, batched)."""
        if not self._accepting:
            self._dropped_after_close()
            return
        self._batch.cmd_updates.append(
            (
                self._ts(datetime.now(UTC)),
                summary.rows,
                summary.status,
                summary.error_code,
                summary.error_message,
                summary.bytes_out,
                summary.duration_ms,
                session_id,
                seq,
            )
        )
        if not self._scheduled:
            self._schedule()

    def session_ended(
        self,
        session_id: str,
        end: SessionEnd,
        bytes_from_client: int,
        bytes_to_client: int,
        error: str | None = None,
    ) -> None:
        """Close a session's record (fire-and-forget, batched)."""
        if not self._accepting:
            self._dropped_after_close()
            return
        self._batch.sess_updates.append(
            (
                self._ts(datetime.now(UTC)),
                end.value,
                bytes_from_client,
                bytes_to_client,
                error,
                session_id,
            )
        )
        if not self._scheduled:
            self._schedule()

    # ------------------------------------------------------------------ scheduling

    def _new_future(self, consequence: str) -> asyncio.Future[None]:
        loop = self._loop
        if loop is None:
            raise RuntimeError("call `await AuditRecorder.start()` before recording")
        fut: asyncio.Future[None] = loop.create_future()
        if not self._accepting:
            fut.set_exception(
                AuditUnavailable(
                    f"audit store unavailable: the gateway is shutting down; {consequence}",
                    hint="reconnect and retry",
                )
            )
        return fut

    def _dropped_after_close(self) -> None:
        if self._loop is None:
            raise RuntimeError("call `await AuditRecorder.start()` before recording")
        self.stats.dropped += 1
        log.warning("audit record dropped: the recorder is already closed")

    def _schedule(self) -> None:
        self._scheduled = True
        loop = self._loop
        assert loop is not None
        loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        batch = self._batch
        if not batch:
            return
        if self._threaded:
            if self._in_flight:
                self._flush_wanted = True
                return
            self._batch = _Batch()
            self._in_flight = True
            self._queue.put(batch)
            return
        self._batch = _Batch()
        self._settle(batch, self._commit(batch))

    def _retry(self) -> None:
        self._retry_handle = None
        self._flush()

    # ------------------------------------------------------------------ writing (any thread)

    def _connect(self) -> None:
        if self._sqlite_path is not None:
            try:
                st = os.stat(self._sqlite_path)
            except FileNotFoundError:
                raise _StoreGone() from None
            self._file_id = (st.st_dev, st.st_ino)
        self._conn = self._engine.raw_connection()

    def _disconnect(self, *, invalidate: bool) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            if invalidate:
                conn.invalidate()
            else:
                conn.close()
        except Exception:
            log.debug("closing the audit writer connection failed", exc_info=True)

    def _check_file(self) -> None:
        """Notice a removed or replaced SQLite file; writes to an unlinked file would be lost."""
        assert self._sqlite_path is not None
        try:
            st = os.stat(self._sqlite_path)
        except FileNotFoundError:
            self._disconnect(invalidate=True)
            raise _StoreGone() from None
        if (st.st_dev, st.st_ino) != self._file_id:
            self._disconnect(invalidate=True)
            self._connect()

    def _commit(self, batch: _Batch) -> _Outcome:
        """Write a batch in one transaction; on a constraint error, record by record."""
        try:
            self._write(batch)
        except Exception as exc:
            if isinstance(exc, self._dbapi.IntegrityError) and (
                len(batch.sess_rows) + len(batch.cmd_rows) > 1
            ):
                return self._commit_one_by_one(batch)
            self._disconnect(invalidate=True)
            return _Outcome(error=exc)
        return _Outcome()

    def _commit_one_by_one(self, batch: _Batch) -> _Outcome:
        outcome = _Outcome(sess_errors=[], cmd_errors=[])
        assert outcome.sess_errors is not None and outcome.cmd_errors is not None
        single = _Batch()
        for row in batch.sess_rows:
            single.sess_rows = [row]
            outcome.sess_errors.append(self._try_write(single))
        single.sess_rows = []
        for row in batch.cmd_rows:
            single.cmd_rows = [row]
            outcome.cmd_errors.append(self._try_write(single))
        rest = _Batch()
        rest.refusal_rows = batch.refusal_rows
        rest.cmd_updates = batch.cmd_updates
        rest.sess_updates = batch.sess_updates
        if rest:
            outcome.error = self._try_write(rest)
        return outcome

    def _try_write(self, batch: _Batch) -> BaseException | None:
        try:
            self._write(batch)
        except Exception as exc:
            if not isinstance(exc, self._dbapi.IntegrityError):
                self._disconnect(invalidate=True)
            return exc
        return None

    def _write(self, batch: _Batch) -> None:
        if self._conn is None:
            self._connect()
        elif self._sqlite_path is not None:
            self._check_file()
        conn = self._conn
        sql = self._sql
        cur = conn.cursor()
        try:
            if batch.sess_rows:
                cur.executemany(sql.insert_session, batch.sess_rows)
            if batch.cmd_rows:
                cur.executemany(sql.insert_command, batch.cmd_rows)
            if batch.refusal_rows:
                cur.executemany(sql.insert_refusal, batch.refusal_rows)
            if batch.cmd_updates:
                cur.executemany(sql.finish_command, batch.cmd_updates)
            if batch.sess_updates:
                cur.executemany(sql.end_session, batch.sess_updates)
            conn.commit()
        except BaseException:
            try:
                conn.rollback()
            except Exception:
                log.debug("rolling back a failed audit write failed", exc_info=True)
            raise
        finally:
            cur.close()

    def _writer_main(self, ready: asyncio.Future[None]) -> None:
        loop = self._loop
        assert loop is not None
        try:
            self._connect()
        except Exception as exc:
            loop.call_soon_threadsafe(_fail_start, ready, exc)
            return
        loop.call_soon_threadsafe(_resolve, ready)
        while True:
            batch = self._queue.get()
            if batch is None:
                break
            outcome = self._commit(batch)
            try:
                loop.call_soon_threadsafe(self._settle_written, batch, outcome)
            except RuntimeError:  # the loop is gone; nobody is waiting any more
                break
        self._disconnect(invalidate=False)

    # ------------------------------------------------------------------ settling (loop thread)

    def _settle_written(self, batch: _Batch, outcome: _Outcome) -> None:
        self._in_flight = False
        self._settle(batch, outcome)
        idle, self._idle = self._idle, []
        for fut in idle:
            _resolve(fut)
        if self._flush_wanted:
            self._flush_wanted = False
            self._flush()

    async def _wait_idle(self) -> None:
        loop = self._loop
        assert loop is not None
        while self._in_flight:
            fut: asyncio.Future[None] = loop.create_future()
            self._idle.append(fut)
            await fut

    def _settle(self, batch: _Batch, outcome: _Outcome) -> None:
        stats = self.stats
        stats.flushes += 1
        _settle_futures(
            batch.sess_futs, outcome.sess_errors, outcome.error, "the connection was not admitted"
        )
        _settle_futures(
            batch.cmd_futs, outcome.cmd_errors, outcome.error, "the command was not forwarded"
        )
        written = sum(e is None for e in outcome.sess_errors or ()) + sum(
            e is None for e in outcome.cmd_errors or ()
        )
        if outcome.error is None:
            if outcome.sess_errors is None:
                written += len(batch.sess_rows) + len(batch.cmd_rows)
            written += len(batch.refusal_rows) + len(batch.cmd_updates) + len(batch.sess_updates)
        else:
            stats.failed_flushes += 1
            log.error(
                "audit store write failed (%s: %s); %d records refused or kept for retry",
                type(outcome.error).__name__,
                _first_line(outcome.error),
                batch.size(),
            )
            self._retain(batch)
        stats.records += written
        for waiter in batch.waiters:
            _resolve(waiter)

    def _retain(self, failed: _Batch) -> None:
        """Keep a failed batch's fire-and-forget records, oldest first, within the bound."""
        b = self._batch
        b.refusal_rows[:0] = failed.refusal_rows
        b.cmd_updates[:0] = failed.cmd_updates
        b.sess_updates[:0] = failed.sess_updates
        excess = len(b.refusal_rows) + len(b.cmd_updates) + len(b.sess_updates) - self.max_retained
        if excess > 0:
            # Session ends summarise whole sessions: give up command finishes first.
            for rows in (b.cmd_updates, b.refusal_rows, b.sess_updates):
                cut = min(excess, len(rows))
                del rows[:cut]
                excess -= cut
                self.stats.dropped += cut
            log.error("audit store unavailable: retry queue full, oldest audit updates dropped")
        if b and self._accepting and self._retry_handle is None:
            loop = self._loop
            assert loop is not None
            self._retry_handle = loop.call_later(self.retry_delay, self._retry)


def _settle_futures(
    futs: list[asyncio.Future[None]],
    errors: list[BaseException | None] | None,
    error: BaseException | None,
    consequence: str,
) -> None:
    if errors is None:
        if error is None:
            for fut in futs:
                if not fut.done():
                    fut.set_result(None)
        else:
            for fut in futs:
                if not fut.done():
                    fut.set_exception(_unavailable(error, consequence))
        return
    for fut, exc in zip(futs, errors, strict=True):
        if fut.done():
            continue
        if exc is None:
            fut.set_result(None)
        else:
            fut.set_exception(_unavailable(exc, consequence))


def _unavailable(exc: BaseException, consequence: str) -> AuditUnavailable:
    """An error safe to show a client: a short cause, never SQL or values."""
    return AuditUnavailable(
        f"audit store unavailable: {_reason(exc)}; {consequence}",
        hint="Lockgate retries on the next attempt; ask the operator to check the audit store",
    )


def _reason(exc: BaseException) -> str:
    if isinstance(exc, _StoreGone):
        return "the database file is missing"
    name = getattr(exc, "sqlite_errorname", None)
    if isinstance(name, str):
        base = name.split("_", 2)
        key = "_".join(base[:2])
        if key in _SQLITE_REASONS:
            return _SQLITE_REASONS[key]
        if "no such table" in str(exc):
            return "its tables are missing"
        return "the write failed"
    kinds = {cls.__name__ for cls in type(exc).__mro__}  # DBAPI classes, any driver
    if "IntegrityError" in kinds:
        return _SQLITE_REASONS["SQLITE_CONSTRAINT"]
    if "OperationalError" in kinds:
        return "the database cannot be reached"
    return "the write failed"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _fail_start(fut: asyncio.Future[None], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(_unavailable(exc, "the gateway cannot start"))
