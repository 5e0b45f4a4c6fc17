"""Copies audit journals into the SQL audit store.

Theory of operation
-------------------
One ingester runs per state folder at a time (it holds `journal/.ingest.lock`): the
`lockgate serve` supervisor process, an in-process thread for an embedded gateway, or a
`lockgate audit …` command catching up after a crash. It reads every journal file:

* a file whose writer is alive (its `flock` is held) is read up to its last whole record;
* a file whose writer is gone is read to the end, then deleted.

A pass's records from every file are written with each file's new position in ONE
transaction (one commit per pass, not per worker's file; a new one after 8 MiB, and before
a dead writer's file is deleted), so replay after a crash resumes exactly where the store
left off. Running in its own process keeps the
gateway workers' event loops free of the store's latency and of lock waits.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import threading
import time
import zlib
from binascii import a2b_base64
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from sqlalchemy.engine import Engine

from lockgate import wakeups
from lockgate.audit import events as audit_events
from lockgate.audit import journal
from lockgate.audit.chain import ChainWriter
from lockgate.audit.writer import Batch, RecorderStats, StoreWriter, reason

if TYPE_CHECKING:
    from lockgate.audit.sinks import EventObserver

log = logging.getLogger(__name__)

LOCK_NAME = ".ingest.lock"
_CHUNK = 8 << 20


class JournalIngester:
    """Moves records from the journal files in `folder` into the store behind `engine`."""

    def __init__(
        self,
        engine: Engine,
        folder: Path,
        interval: float = 0.05,
        observers: Sequence[EventObserver] = (),
    ) -> None:
        self.engine = engine
        self.folder = folder
        self.interval = interval
        # After a pass that wrote at least `busy_records`, the next one waits longer.
        self.busy_records = 200
        self.busy_interval = max(interval, 0.25)
        self.stats = RecorderStats()
        # One hash chain per ingester, keyed in the state folder that holds the journals.
        self.chain = ChainWriter(folder.parent)
        self._writer = StoreWriter(engine, self.chain)
        # Sinks and metrics get each committed batch's events (after the commit).
        self.observers = list(observers)
        self.chain.collect = bool(self.observers)
        self.store_failures = 0
        self._positions: dict[str, int] = {}
        # Records read in this pass but not written yet, from every journal file: written in
        # ONE transaction with each file's new position (one commit per pass, not per file).
        self._pending: list[list[Any]] = []
        self._pending_positions: dict[str, int] = {}
        self._pending_bytes = 0
        self._lock_fd = -1
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # Passes are numbered; `wait_idle` waits for an idle pass that began after it was
        # called (a pass already under way may have missed the latest appends).
        self._passes = threading.Condition()
        self._started = 0
        self._idle_pass = 0

    # -- the single-ingester lock ---------------------------------------------------------
    def try_lock(self) -> bool:
        """Become this folder's ingester, unless another process already is."""
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._lock_fd = fd
        return True

    def unlock(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1
        self._writer.disconnect()

    # -- running --------------------------------------------------------------------------
    def ingest_once(self, *, seal: bool = False) -> int:
        """One pass over every journal file; returns the records written.

        Signs a checkpoint of the chain when one is due, or whenever `seal` is set.
        """
        written = 0
        try:
            for path in sorted(self.folder.glob(f"*{journal.SUFFIX}")):
                written += self._ingest_file(path)
            written += self._flush()
        finally:
            self._pending.clear()
            self._pending_positions.clear()
            self._pending_bytes = 0
        self._writer.seal(force=seal)
        return written

    def run(self, stop: threading.Event, *, nice: int = 0) -> None:
        """Ingest every `interval` seconds until `stop` is set, then a final full pass.

        `nice` lowers this thread's CPU priority (Linux), so that on a busy host the
        gateway's workers, whose records are already durable in the journal, come first.
        """
        if nice:
            try:
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
            except (AttributeError, OSError):
                pass
        failures = 0
        while True:
            stopping = stop.is_set()
            with self._passes:
                self._started += 1
                number = self._started
            try:
                busy = self.ingest_once(seal=stopping)
                failures = 0
            except Exception as exc:
                failures += 1
                self.store_failures += 1
                if failures == 1 or failures % 100 == 0:
                    log.error(
                        "audit store write failed (%s); the journal keeps the records", reason(exc)
                    )
                busy = 0
                if stopping:
                    log.error("audit journal left in %s for the next start to ingest", self.folder)
                    return
            if stopping:
                return
            if not busy:
                with self._passes:
                    self._idle_pass = number
                    self._passes.notify_all()
            if failures:
                stop.wait(min(2.0, self.interval * failures))
            elif busy >= self.busy_records:
                # Heavy traffic: let records gather into fewer, larger transactions (each
                # commit, and each statement's share of it, costs CPU the workers need).
                stop.wait(self.busy_interval)
            else:
                stop.wait(self.interval)

    def start_thread(self) -> bool:
        """Run in a thread of this process if no other ingester holds the folder."""
        if not self.try_lock():
            return False
        self._thread = threading.Thread(
            target=self.run, args=(self._stop,), name="lockgate-audit-ingest", daemon=True
        )
        self._thread.start()
        return True

    def stop_thread(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
            self._thread = None
        self.unlock()

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Wait for a pass that found nothing new (everything journaled so far is stored)."""
        with self._passes:
            target = self._started + 1
            return self._passes.wait_for(lambda: self._idle_pass >= target, timeout)

    # -- one file -------------------------------------------------------------------------
    def _ingest_file(self, path: Path) -> int:
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return 0
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                writer_gone = True
            except BlockingIOError:
                writer_gone = False
            name = path.name
            pos = self._positions.get(name)
            if pos is None:
                pos = self._writer.position(name)
            total = 0
            chunk = _CHUNK
            while True:
                data = os.pread(fd, chunk, pos)
                records, used = journal.decode(data)
                if not records:
                    need = journal.frame_size(data)
                    if len(data) == chunk and need > chunk:
                        chunk = need  # one record larger than a chunk: read all of it
                        continue
                    break
                chunk = _CHUNK
                self._pending += records
                pos += used
                self._pending_positions[name] = pos
                self._pending_bytes += used
                if self._pending_bytes >= _CHUNK:
                    total += self._flush()
            if writer_gone:
                # Its records must be in the store before the file goes.
                total += self._flush()
                size = os.fstat(fd).st_size
                if pos < size:
                    log.warning("audit journal %s ends with %d unreadable bytes", name, size - pos)
                path.unlink()
                self._writer.forget(name)
                self._positions.pop(name, None)
            return total
        finally:
            os.close(fd)

    def _flush(self) -> int:
        """Write the pending records with their files' positions; the records written."""
        if not self._pending_positions:
            return 0
        records = self._pending
        positions = self._pending_positions
        batch = to_batch(records, self._writer.timestamp)
        try:
            skipped = self._writer.write(batch, positions)
        finally:
            if self.observers:
                self._publish()
        if batch.sess_rows or batch.sess_updates:
            # The console's live view lists sessions from the store: tell it they changed.
            wakeups.announce(self.engine, wakeups.AUDIT)
        self._positions.update(positions)
        self._pending = []
        self._pending_positions = {}
        self._pending_bytes = 0
        # Counted in journal records: an outcome merged into its command's row counts too.
        self.stats.records += len(records) - skipped
        self.stats.dropped += skipped
        return len(records)

    def _publish(self) -> None:
        chained = self.chain.take_published()
        if not chained:
            return
        name = self.chain.name
        shipped = [audit_events.build(name, k, seq, h, row) for k, seq, h, row in chained]
        for observer in self.observers:
            try:
                observer.observe(shipped)
            except Exception:
                log.exception("an audit event observer failed")

    def backlog_bytes(self) -> int:
        """Journal bytes not yet in the store (files not seen yet count whole)."""
        positions = dict(self._positions)
        total = 0
        for path in self.folder.glob(f"*{journal.SUFFIX}"):
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                continue
            total += max(0, size - positions.get(path.name, 0))
        return total


def to_batch(records: list[list[Any]], ts: Any) -> Batch:
    """Journal records (see recorder.py for their layout) as store rows."""
    batch = Batch()
    cmd_rows = batch.cmd_rows
    add_command = cmd_rows.append
    add_result = batch.result_rows.append
    # (session, seq) -> index in cmd_rows, to merge an outcome into its command's insert.
    started: dict[tuple[str, int], int] = {}
    for r in records:
        kind = r[0]
        if kind == "C":
            # [C, session, seq, at, text, kind, tables, params, decision, rule, reason]
            params = r[7]
            if params is not None and type(params) is not str:
                params = _dumps(params).decode()
            tables = r[6]
            if type(tables) is not str:
                tables = _dumps(tables).decode()
            # A repeat (rejected as a duplicate) must not take the outcome from the first.
            started.setdefault((r[1], r[2]), len(cmd_rows))
            # The statement alone; its outcome (or _NO_OUTCOME) is joined on below.
            add_command((r[1], r[2], ts(r[3]), r[4], r[5], tables, params, r[8], r[9], r[10]))
        elif kind == "F":
            # [F, at, rows, status, error_code, error_message, bytes_out, duration_ms, session, seq
            #  (, format, base64 data, rows kept, rows dropped, bytes dropped
            #   (, masked cells per rule)))]; the result fields are None when not captured.
            if len(r) > 15 and r[15]:
                per_rule = {str(k): int(v) for k, v in r[15].items()}
                masked: tuple[Any, ...] = (
                    sum(per_rule.values()),
                    orjson.dumps(per_rule, option=orjson.OPT_SORT_KEYS).decode(),
                )
            else:
                masked = _NO_MASKED
            # The outcome's columns, built in one display (no unpacking of partial tuples).
            if len(r) > 10 and r[11] is not None:
                raw = a2b_base64(r[11])
                outcome = (
                    ts(r[1]), r[2], r[3], r[4], r[5], r[6], r[7],
                    _sha256(raw).hexdigest(), r[12], r[13], r[14], *masked,
                )  # fmt: skip
                # Small results do not shrink, and a deflate stream costs more to set up.
                if len(raw) < _COMPRESS_FROM:
                    add_result((r[8], r[9], r[10], "raw", raw))
                else:
                    add_result((r[8], r[9], r[10], CODEC, zlib.compress(raw, 1)))
            else:
                outcome = (ts(r[1]), r[2], r[3], r[4], r[5], r[6], r[7], *_NO_RESULT, *masked)
            i = started.get((r[8], r[9]))
            if i is None:
                batch.cmd_updates.append((*outcome, r[8], r[9]))
            else:
                row = cmd_rows[i]
                # A repeated outcome replaces the first one's columns.
                cmd_rows[i] = (row if len(row) == _STATEMENT else row[:_STATEMENT]) + outcome
        elif kind == "S":
            # [S, id, subject, groups, kind, issuer, token, resource, protocol, addr, user, app, at]
            batch.sess_rows.append((r[1], r[2], _json(r[3]), *r[4:12], ts(r[12])))
        elif kind == "E":
            batch.sess_updates.append((ts(r[1]), *r[2:]))
        elif kind == "R":
            batch.refusal_rows.append((ts(r[1]), *r[2:]))
    # Commands whose outcome is not in this batch (an UPDATE sets it when it comes).
    for i, row in enumerate(cmd_rows):
        if len(row) == _STATEMENT:
            cmd_rows[i] = row + _NO_OUTCOME
    return batch


# A command row: the statement's columns, then its outcome's (as _NO_OUTCOME).
_STATEMENT = 10
_NO_OUTCOME = (None,) * 13
_NO_RESULT = (None,) * 4
_NO_MASKED = (None,) * 2
# How captured results are compressed in the store (level 1: the ingester shares the CPU).
CODEC = "zlib"
_COMPRESS_FROM = 256


_dumps = orjson.dumps
_sha256 = hashlib.sha256


def _json(value: Any) -> str:
    return value if isinstance(value, str) else _dumps(value).decode()


def catch_up(engine: Engine, folder: Path, timeout: float = 5.0) -> None:
    """Before reading the store: ingest what a stopped gateway left, if no ingester runs."""
    if not folder.exists():
        return
    ingester = JournalIngester(engine, folder)
    deadline = time.monotonic() + timeout
    if not ingester.try_lock():
        return  # a running gateway ingests continuously
    try:
        while time.monotonic() < deadline and ingester.ingest_once(seal=True):
            pass
    except Exception as exc:
        log.warning("could not ingest the audit journal: %s", reason(exc))
    finally:
        ingester.unlock()
