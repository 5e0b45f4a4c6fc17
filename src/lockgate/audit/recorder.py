"""The write-ahead audit recorder that protocol handlers call on their hot path.

Theory of operation
-------------------
Handlers call the recorder from one asyncio loop thread. A write-ahead call
(`session_started`, `command_started`) adds a record to the current group and schedules
one flush for the end of this loop iteration (`call_soon`); the flush appends the whole
group to this process's journal with one `write` (see `journal.py`) and only then resolves
the callers' futures, so a command is forwarded only once its record is durable. Records
that need not precede anything (a command's outcome, a session's end) ride along with the
next flush, or go out on a short timer when traffic stops.

An ingester (`ingest.py`: the `lockgate serve` supervisor process, or a thread here when
`ingest=True`) copies journals into the SQL audit store in large transactions; readers
(`lockgate audit …`, the admin API) see records once they are there, normally within
tens of milliseconds.

Fail closed: if the journal cannot be written (disk full, I/O error), the group's futures
fail with `AuditUnavailable` and the commands are refused. The journal *is* the record: if
the SQL store is down, records wait in the journal and the ingester retries.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from base64 import b64encode
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine

from lockgate.audit import journal
from lockgate.audit.ingest import JournalIngester
from lockgate.audit.writer import RecorderStats, unavailable
from lockgate.errors import AuditUnavailable
from lockgate.model import ClientInfo, Command, ResultSummary, Session, SessionEnd

log = logging.getLogger(__name__)


# Journal record kinds.
_SESSION, _COMMAND, _REFUSAL, _FINISH, _END = "S", "C", "R", "F", "E"
# An outcome's result fields when nothing was captured but cells were masked.
_NO_RESULT = [None] * 5

__all__ = ["AuditRecorder", "RecorderStats", "check_null_sink"]

# BENCHMARK ONLY. LOCKGATE_AUDIT_NULL=1 makes the recorder fake durability: nothing is
# journaled, every write-ahead call succeeds at once. It exists so bench/audit_cost can
# measure what recording costs. `lockgate serve` honours it only for a manifest that says
# `audit.benchmark_null_sink: true`; anywhere else the variable stops the gateway.
NULL_SINK_ENV = "LOCKGATE_AUDIT_NULL"
_null_sink_allowed = False


def check_null_sink(allowed_by_manifest: bool) -> None:
    """Before workers fork: refuse LOCKGATE_AUDIT_NULL unless the manifest allows it."""
    global _null_sink_allowed
    if os.environ.get(NULL_SINK_ENV, "") in ("", "0"):
        _null_sink_allowed = False
        return
    if not allowed_by_manifest:
        raise AuditUnavailable(
            f"{NULL_SINK_ENV} is set: that benchmark-only mode records nothing, and this "
            "manifest does not allow it",
            hint=f"unset {NULL_SINK_ENV} (only benchmark manifests set "
            "audit.benchmark_null_sink: true)",
        )
    log.warning("BENCHMARK ONLY: %s=1, nothing is recorded in the audit trail", NULL_SINK_ENV)
    _null_sink_allowed = True


@dataclass(slots=True)
class _Group:
    # Records to write ahead, and (framed at once, see `_later`) those riding along.
    records: list[list[Any] | bytes]
    futures: list[asyncio.Future[None]]


class AuditRecorder:
    """Write-ahead audit recorder; call it only from its event loop's thread."""

    def __init__(
        self,
        engine: Engine,
        journal_dir: Path | None = None,
        *,
        fsync: bool = False,
        ingest: bool = True,
        linger: float = 0.05,
        rotate_bytes: int = 64 << 20,
    ) -> None:
        self._engine = engine
        self._journal_dir = journal_dir or _default_journal_dir(engine)
        self._fsync = fsync
        self._linger = linger
        self._ingest = ingest
        self.rotate_bytes = rotate_bytes
        self.stats = RecorderStats()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._journal: journal.JournalWriter | None = None
        self._ingester: JournalIngester | None = None
        self._group = _Group([], [])
        self._scheduled = False
        self._timer: asyncio.TimerHandle | None = None
        self._accepting = False
        self._null = False

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Open this process's journal and start ingesting (raises AuditUnavailable)."""
        if self._loop is not None:
            raise RuntimeError("AuditRecorder.start() was already called")
        if os.environ.get(NULL_SINK_ENV, "") not in ("", "0"):
            if not _null_sink_allowed:
                raise AuditUnavailable(
                    f"{NULL_SINK_ENV} is set outside a benchmark: refusing to run unrecorded",
                    hint=f"unset {NULL_SINK_ENV}",
                )
            self._null = True
        try:
            self._journal = journal.JournalWriter(self._journal_dir, fsync=self._fsync)
            if self._ingest:
                ingester = JournalIngester(self._engine, self._journal_dir)
                if ingester.start_thread():
                    self._ingester = ingester
        except Exception as exc:
            raise unavailable(exc, "the gateway cannot start") from None
        self._loop = asyncio.get_running_loop()
        self._accepting = True

    async def close(self) -> None:
        """Flush what is queued, copy the whole journal into the store, stop."""
        if self._loop is None or not self._accepting:
            self._accepting = False
            return
        self._accepting = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._flush()
        assert self._journal is not None
        self._journal.close()
        if self._ingester is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._ingester.stop_thread)

    async def sync(self) -> None:
        """Wait until everything recorded so far is in the SQL store (tests)."""
        self._flush()
        if self._ingester is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._ingester.wait_idle)

    # ------------------------------------------------------------------ the hot path
    async def session_started(self, session: Session) -> None:
        """Record an admitted session; durable when this returns, else AuditUnavailable."""
        p, c = session.principal, session.client
        await self._ahead(
            [
                _SESSION,
                session.id,
                p.subject,
                sorted(p.groups),
                p.kind.value,
                p.issuer,
                p.token_id,
                session.resource,
                c.protocol,
                c.address,
                c.user_name,
                c.application_name,
                session.started_at.timestamp(),
            ],
            "the connection was not admitted",
        )

    async def connection_refused(
        self, client: ClientInfo, resource: str, subject: str | None, code: str, reason_: str
    ) -> None:
        """Record a refused connection; never raises (the connection is refused anyway)."""
        rec = [
            _REFUSAL,
            time.time(),
            client.address,
            client.protocol,
            resource,
            subject,
            code,
            reason_,
        ]
        try:
            await self._ahead(rec, "the refusal was not recorded")
        except AuditUnavailable:
            log.error("could not record a refused connection from %s", client.address)

    def command_started(self, cmd: Command) -> asyncio.Future[None]:
        """Record a command before it is forwarded; the future fails with AuditUnavailable."""
        return self._enqueue(_command_record(cmd), "the command was not forwarded")

    def commands_started(self, cmds: list[Command]) -> asyncio.Future[None] | None:
        """Record commands before they are forwarded, the fast way.

        Without `fsync` the records (with any outcomes waiting to ride along) are appended
        at once, one `write`: None means durable, and a failure raises AuditUnavailable.
        With `fsync`, commands of all sessions share one `fdatasync` per loop iteration:
        the returned future completes when they are durable.
        """
        if self._null and self._accepting:
            self._group.records.clear()  # BENCHMARK ONLY: nothing is recorded
            return None
        if self._fsync or not self._accepting or self._loop is None:
            futs = [self.command_started(c) for c in cmds]
            return futs[0] if len(futs) == 1 else _all(futs)
        group = self._group
        records = group.records
        records += map(_command_record, cmds)
        if group.futures:
            # Other write-ahead callers are waiting for this iteration's flush: join them.
            fut = self._loop.create_future()
            group.futures.append(fut)
            return fut
        group.records = []  # no caller waits on this group: it stays, emptied
        # A linger timer that is set stays set: outcomes recorded after this write wait for
        # it (or the next write), and no timer is made and cancelled per command.
        assert self._journal is not None
        try:
            if self._journal.broken or self._journal.size > self.rotate_bytes:
                self._rotate()
            self._journal.append(journal.encode(records))
        except OSError as exc:
            self.stats.failed_flushes += 1
            log.error("audit journal write failed: %s", exc)
            self._group.records[:0] = [r for r in records if type(r) is bytes]
            raise unavailable(exc, "the command was not forwarded") from None
        self.stats.flushes += 1
        return None

    def command_refused(self, cmd: Command, summary: ResultSummary) -> None:
        """Record a command policy refused (never forwarded): its record and its outcome.

        Not write-ahead (nothing runs), so it rides along with the next flush.
        """
        self._later(_command_record(cmd))
        self.command_finished(cmd.session_id, cmd.seq, summary)

    def command_finished(self, session_id: str, seq: int, summary: ResultSummary) -> None:
        """Complete a command's record with its outcome (rides along with the next flush)."""
        rec = [
            _FINISH,
            time.time(),
            summary.rows,
            summary.status,
            summary.error_code,
            summary.error_message,
            summary.bytes_out,
            summary.duration_ms,
            session_id,
            seq,
        ]
        r = summary.result
        if r is not None:
            # The ingester hashes and compresses it (off this loop); base64 suits JSON framing.
            rec += [r.format, b64encode(r.data).decode(), r.rows, r.rows_dropped, r.bytes_dropped]
        if summary.masked:
            if r is None:
                rec += _NO_RESULT
            rec.append(dict(summary.masked))
        self._later(rec)

    def session_ended(
        self,
        session_id: str,
        end: SessionEnd,
        bytes_from_client: int,
        bytes_to_client: int,
        error: str | None = None,
    ) -> None:
        """Close a session's record (rides along with the next flush)."""
        self._later(
            [_END, time.time(), end.value, bytes_from_client, bytes_to_client, error, session_id]
        )

    # ------------------------------------------------------------------ grouping
    async def _ahead(self, rec: list[Any], consequence: str) -> None:
        await self._enqueue(rec, consequence)

    def _enqueue(self, rec: list[Any], consequence: str) -> asyncio.Future[None]:
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
        self._group.records.append(rec)
        self._group.futures.append(fut)
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return fut

    def _later(self, rec: list[Any]) -> None:
        if self._loop is None:
            raise RuntimeError("call `await AuditRecorder.start()` before recording")
        if not self._accepting:
            self.stats.dropped += 1
            log.warning("audit record dropped: the recorder is already closed")
            return
        # Framed now, while the client has its answer, not when the next command waits on
        # the write it rides along with.
        self._group.records += journal.frame(rec)
        if not self._scheduled and self._timer is None:
            self._timer = self._loop.call_later(self._linger, self._lingered)

    def _lingered(self) -> None:
        self._timer = None
        self._flush()

    def _flush(self) -> None:
        self._scheduled = False
        group = self._group
        if not group.records:
            return
        self._group = _Group([], [])
        assert self._journal is not None
        if self._null:
            group.records.clear()  # BENCHMARK ONLY: durability faked
            for fut in group.futures:
                if not fut.done():
                    fut.set_result(None)
            return
        self.stats.flushes += 1
        try:
            if self._journal.broken or self._journal.size > self.rotate_bytes:
                self._rotate()
            self._journal.append(journal.encode(group.records))
        except OSError as exc:
            self.stats.failed_flushes += 1
            log.error("audit journal write failed: %s", exc)
            for fut in group.futures:
                if not fut.done():
                    fut.set_exception(unavailable(exc, "the command was not forwarded"))
            # What needed no writing ahead (outcomes, session ends, refused commands: all
            # of what happened) is kept for the next attempt.
            self._group.records[:0] = [r for r in group.records if type(r) is bytes]
            return
        for fut in group.futures:
            if not fut.done():
                fut.set_result(None)

    def _rotate(self) -> None:
        """Start a new journal file; the old one is ingested and deleted as an orphan.

        Also how the recorder recovers from a failed append: it never appends after one.
        """
        assert self._journal is not None
        old = self._journal
        self._journal = journal.JournalWriter(self._journal_dir, fsync=self._fsync)
        old.close()


def _command_record(cmd: Command) -> list[Any]:
    d = cmd.decision
    return [
        _COMMAND,
        cmd.session_id,
        cmd.seq,
        time.time(),
        cmd.text,
        cmd.kind,
        cmd.tables,
        cmd.params,
        d.kind.value,
        d.rule,
        d.reason,
    ]


def _all(futs: list[asyncio.Future[None]]) -> asyncio.Future[None]:
    """A future done when all are; it fails with the first failure."""
    return asyncio.ensure_future(_gather(futs))


async def _gather(futs: list[asyncio.Future[None]]) -> None:
    for f in futs:
        await f


def _default_journal_dir(engine: Engine) -> Path:
    db = engine.url.database or ""
    if engine.dialect.name == "sqlite" and db and db != ":memory:":
        return Path(os.path.abspath(db)).parent / "journal"
    return Path(os.environ.get("LOCKGATE_JOURNAL_DIR", "lockgate-journal"))
