"""Writes audit records into the SQL store (SQLite by default, PostgreSQL for many hosts).

Used by the journal ingester thread, never on the hot path. A batch is written in one
transaction together with the journal position it reaches, so replaying a journal after a
crash neither loses nor duplicates records. A batch rejected by a constraint (a duplicate
or a command of an unknown session) is rewritten record by record, so one bad record is
skipped (and logged) instead of blocking everything behind it.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.engine import Engine

from lockgate.audit.chain import ChainWriter, EventLayout
from lockgate.audit.dbapi import BulkInsert, insert_sql, marker, update_sql
from lockgate.audit.tables import (
    CHAIN_TABLES,
    command_results,
    commands,
    journal_positions,
    refusals,
    sessions,
)
from lockgate.errors import AuditUnavailable
from lockgate.store import metadata

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
    "result_sha256",
    "result_rows",
    "result_rows_dropped",
    "result_bytes_dropped",
    "masked_cells",
    "masked_by_rule",
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
    """Counters for monitoring: journal appends, records ingested, records skipped."""

    flushes: int = 0
    failed_flushes: int = 0
    records: int = 0
    dropped: int = 0


class StoreGone(Exception):
    """The SQLite file was removed; reconnecting would silently create an empty one."""


class Batch:
    """Records read from a journal, by kind, in table column order."""

    __slots__ = (
        "cmd_rows",
        "cmd_updates",
        "refusal_rows",
        "result_rows",
        "sess_rows",
        "sess_updates",
    )
    # The order rows are written in: a session before its commands, rows before updates.
    ORDER = (
        "sess_rows",
        "cmd_rows",
        "refusal_rows",
        "cmd_updates",
        "result_rows",
        "sess_updates",
    )

    def __init__(self) -> None:
        self.sess_rows: list[Row] = []
        self.cmd_rows: list[Row] = []
        self.refusal_rows: list[Row] = []
        self.cmd_updates: list[Row] = []
        self.sess_updates: list[Row] = []
        # Captured results: (session_id, seq, format, codec, data), after their commands.
        self.result_rows: list[Row] = []

    def __bool__(self) -> bool:
        return self.size() > 0

    def size(self) -> int:
        return (
            len(self.sess_rows)
            + len(self.cmd_rows)
            + len(self.refusal_rows)
            + len(self.cmd_updates)
            + len(self.sess_updates)
            + len(self.result_rows)
        )


class _Statements:
    """Plain DBAPI SQL derived from the Core tables, in the driver's positional paramstyle."""

    def __init__(self, engine: Engine) -> None:
        dialect = engine.dialect
        mark = marker(dialect)
        quote = dialect.identifier_preparer.quote

        self.session_columns = [
            c.name for c in sessions.columns if c.name not in _SESSION_END_COLUMNS
        ]
        # Inserts carry the outcome columns too: the ingester merges a command's outcome
        # into its insert when both are in one batch (the common case), saving an UPDATE.
        self.command_columns = [
            c.name for c in commands.columns if c.name not in _COMMAND_FINISH_COLUMNS
        ] + list(_COMMAND_FINISH_COLUMNS)
        self.refusal_columns = [c.name for c in refusals.columns if c.name != "id"]
        self.finish_columns = [*_COMMAND_FINISH_COLUMNS, "session_id", "seq"]
        self.end_columns = [*_SESSION_END_COLUMNS, "id"]
        # Where the fast path finds a command row's keys, statement and outcome.
        self.command_at = tuple(
            self.command_columns.index(name)
            for name in ("session_id", "seq", "text", "finished_at")
        )
        # A command alone (its outcome comes in a later batch), or with its outcome.
        self.command_layouts = (
            EventLayout("C", self.command_columns),
            EventLayout("X", self.command_columns),
        )
        self.finish_layout = EventLayout("F", self.finish_columns)
        self.end_layout = EventLayout("E", self.end_columns)
        self.insert_sessions = BulkInsert(dialect, sessions, self.session_columns)
        self.insert_commands = BulkInsert(dialect, commands, self.command_columns)
        self.insert_refusal = insert_sql(dialect, refusals, self.refusal_columns)
        self.insert_results = BulkInsert(
            dialect, command_results, [c.name for c in command_results.columns]
        )
        self.insert_refusal_id = insert_sql(dialect, refusals, self.refusal_columns, "id")
        self.finish_command = update_sql(
            dialect, commands, _COMMAND_FINISH_COLUMNS, ("session_id", "seq")
        )
        self.end_session = update_sql(dialect, sessions, _SESSION_END_COLUMNS, ("id",))

        self.save_position = (
            f"UPDATE {quote(journal_positions.name)} SET {quote('position')} = {mark(1)} "
            f"WHERE {quote('journal')} = {mark(2)}"
        )
        self.add_position = (
            f"INSERT INTO {quote(journal_positions.name)} "
            f"({quote('journal')}, {quote('position')}) VALUES ({mark(1)}, {mark(2)})"
        )
        self.get_position = (
            f"SELECT {quote('position')} FROM {quote(journal_positions.name)} "
            f"WHERE {quote('journal')} = {mark(1)}"
        )
        self.drop_position = (
            f"DELETE FROM {quote(journal_positions.name)} WHERE {quote('journal')} = {mark(1)}"
        )


def _identity(value: Any) -> Any:
    return value


def _iso(moment: datetime) -> str:
    return moment.replace(tzinfo=None).isoformat(" ", "microseconds")


class StoreWriter:
    """Synchronous batch writer for one thread: one DBAPI connection, reopened after errors."""

    def __init__(self, engine: Engine, chain: ChainWriter | None = None) -> None:
        self._engine = engine
        self._chain = chain
        self._chain_tables = False
        self._sql = _Statements(engine)
        self._dbapi: Any = engine.dialect.dbapi
        ts = commands.c.started_at.type.dialect_impl(engine.dialect).bind_processor(engine.dialect)
        self._ts: Callable[[datetime], Any] = ts or _identity
        db = engine.url.database or ""
        self._sqlite_path = (
            os.path.abspath(db)
            if engine.dialect.name == "sqlite"
            and db
            and db != ":memory:"
            and not db.startswith("file:")
            else None
        )
        self._file_id: tuple[int, int] | None = None
        self._conn: Any = None
        # SQLAlchemy's SQLite processor formats in Python; ISO formatting in C gives the
        # same text several times faster. Used only when it provably gives the same text.
        probe = datetime(2026, 1, 2, 3, 4, 5, 60708, tzinfo=UTC)
        self._fast_ts = engine.dialect.name == "sqlite" and self._ts(probe) == _iso(probe)
        self._second = -1
        self._second_text = ""

    def timestamp(self, epoch: float) -> Any:
        """A journal timestamp (seconds since the epoch) as the store's driver wants it."""
        if self._fast_ts and epoch >= 0:
            return self._text_ts(epoch)
        return self._ts(datetime.fromtimestamp(epoch, UTC))

    def _text_ts(self, epoch: float) -> str:
        """`_iso(datetime.fromtimestamp(epoch, UTC))`, formatting each second only once.

        Rounds like `fromtimestamp` (the fraction to microseconds, half to even): the text
        is chained, so it must not differ by a microsecond (tests compare both ways).
        """
        sec = int(epoch)
        micro = round((epoch - sec) * 1e6)
        if sec != self._second or micro >= 1_000_000:
            if micro >= 1_000_000:
                sec += 1
                micro -= 1_000_000
            self._second_text = datetime.fromtimestamp(sec, UTC).isoformat(" ")[:19]
            self._second = sec
        # %-formatting: cheaper than an f-string's format spec, twice per statement.
        return "%s.%06d" % (self._second_text, micro)  # noqa: UP031

    def connect(self) -> None:
        if self._sqlite_path is not None:
            try:
                st = os.stat(self._sqlite_path)
            except FileNotFoundError:
                raise StoreGone() from None
            self._file_id = (st.st_dev, st.st_ino)
        chain = self._chain
        if chain is not None and not self._chain_tables:
            # Stores created before the chain existed get its tables (and search index).
            metadata.create_all(self._engine, tables=CHAIN_TABLES)
            self._chain_tables = True
        self._conn = self._engine.raw_connection()
        if chain is not None:
            try:
                chain.attach(self._conn, self._engine.dialect, self.timestamp)
            except BaseException:
                self.disconnect(invalidate=True)
                raise

    def disconnect(self, *, invalidate: bool = False) -> None:
        if self._chain is not None:
            self._chain.detach()
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
            self.disconnect(invalidate=True)
            raise StoreGone() from None
        if (st.st_dev, st.st_ino) != self._file_id:
            self.disconnect(invalidate=True)
            self.connect()

    def position(self, journal: str) -> int:
        """How far `journal` has been ingested (0 if never)."""
        if self._conn is None:
            self.connect()
        cur = self._conn.cursor()
        try:
            cur.execute(self._sql.get_position, (journal,))
            row = cur.fetchone()
            self._conn.commit()
        finally:
            cur.close()
        return int(row[0]) if row else 0

    def forget(self, journal: str) -> None:
        """Drop a fully ingested, deleted journal's position."""
        if self._conn is None:
            self.connect()
        cur = self._conn.cursor()
        try:
            cur.execute(self._sql.drop_position, (journal,))
            self._conn.commit()
        finally:
            cur.close()

    def write(self, batch: Batch, positions: Mapping[str, int]) -> int:
        """Write `batch` and the journal positions it reaches in one transaction; records
        skipped.

        Raises on a store failure (the caller retries later: the journals keep the records).
        """
        try:
            self._write(batch, positions)
            return 0
        except Exception as exc:
            if not isinstance(exc, self._dbapi.IntegrityError):
                self.disconnect(invalidate=True)
                raise
        # A record is rejected (duplicate after a crash replay, unknown session): go one by one.
        skipped = 0
        for kind in Batch.ORDER:
            for row in getattr(batch, kind):
                single = Batch()
                getattr(single, kind).append(row)
                try:
                    self._write(single, {})
                except Exception as exc:
                    if not isinstance(exc, self._dbapi.IntegrityError):
                        self.disconnect(invalidate=True)
                        raise
                    skipped += 1
                    log.warning("audit record skipped (%s): %s", kind, _first_line(exc))
        self._write(Batch(), positions)
        return skipped

    def seal(self, *, force: bool = False) -> None:
        """Sign a checkpoint of the chain's head if one is due (or `force`d)."""
        chain = self._chain
        if chain is None or not chain.attached or not (force or chain.seal_due()):
            return
        self._write(Batch(), {}, force_seal=True)

    def _write(
        self, batch: Batch, positions: Mapping[str, int], *, force_seal: bool = False
    ) -> None:
        if self._conn is None:
            self.connect()
        elif self._sqlite_path is not None:
            self._check_file()
        conn = self._conn
        sql = self._sql
        chain = self._chain
        cur = conn.cursor()
        try:
            if chain is None:
                self._write_rows(cur, batch)
            else:
                chain.begin()
                self._write_chained(cur, batch, chain)
                chain.write(cur, force_seal=force_seal)
            for journal, position in positions.items():
                cur.execute(sql.save_position, (position, journal))
                if cur.rowcount == 0:
                    cur.execute(sql.add_position, (journal, position))
            conn.commit()
        except BaseException:
            if chain is not None:
                chain.rolled_back()
            try:
                conn.rollback()
            except Exception:
                log.debug("rolling back a failed audit write failed", exc_info=True)
            raise
        finally:
            cur.close()
        if chain is not None:
            chain.committed()

    def _write_rows(self, cur: Any, batch: Batch) -> None:
        sql = self._sql
        if batch.sess_rows:
            sql.insert_sessions(cur, batch.sess_rows)
        if batch.cmd_rows:
            sql.insert_commands(cur, batch.cmd_rows)
        if batch.refusal_rows:
            cur.executemany(sql.insert_refusal, batch.refusal_rows)
        if batch.cmd_updates:
            cur.executemany(sql.finish_command, batch.cmd_updates)
        if batch.result_rows:
            sql.insert_results(cur, batch.result_rows)
        if batch.sess_updates:
            cur.executemany(sql.end_session, batch.sess_updates)

    def _write_chained(self, cur: Any, batch: Batch, chain: ChainWriter) -> None:
        """Write the rows and chain one event per start, outcome, end and refusal.

        A command whose outcome is in the same batch is one event with it (`X`).
        """
        sql = self._sql
        if batch.sess_rows:
            sql.insert_sessions(cur, batch.sess_rows)
            names = sql.session_columns
            for row in batch.sess_rows:
                chain.add("S", row[0], None, dict(zip(names, row, strict=True)))
        if batch.cmd_rows:
            sql.insert_commands(cur, batch.cmd_rows)
            names = sql.command_columns
            started, completed = sql.command_layouts
            add = chain.add_row
            sid, seq, text, fin = sql.command_at
            for row in batch.cmd_rows:
                if row[fin] is None:
                    add(started, "C", row[sid], row[seq], names, row, row[text])
                else:
                    add(completed, "X", row[sid], row[seq], names, row, row[text])
        if batch.refusal_rows:
            names = sql.refusal_columns
            for row in batch.refusal_rows:
                cur.execute(sql.insert_refusal_id, row)
                m = dict(zip(names, row, strict=True))
                m["id"] = int(cur.fetchone()[0])
                chain.add("R", None, m["id"], m)
        for rows, statement, names, kind, layout in (
            (batch.cmd_updates, sql.finish_command, sql.finish_columns, "F", sql.finish_layout),
            (batch.sess_updates, sql.end_session, sql.end_columns, "E", sql.end_layout),
        ):
            if not rows:
                continue
            cur.executemany(statement, rows)
            applied: list[Row] = list(rows)
            if cur.rowcount != len(rows):
                # Some matched no row (an outcome of a command never stored): chain only the
                # updates that did apply; running them again sets the same values.
                applied = []
                for row in rows:
                    cur.execute(statement, row)
                    if cur.rowcount == 1:
                        applied.append(row)
                    else:
                        log.warning("audit record skipped (%s of an unknown record)", kind)
            for row in applied:
                # Both end with their keys: (…, session_id, seq) and (…, id).
                if kind == "F":
                    chain.add_row(layout, "F", row[-2], row[-1], names, row)
                else:
                    chain.add_row(layout, "E", row[-1], None, names, row)
        if batch.result_rows:
            # Not events of their own: their hash is in the command's outcome (chained above).
            sql.insert_results(cur, batch.result_rows)


def unavailable(exc: BaseException, consequence: str) -> AuditUnavailable:
    """An error safe to show a client: a short cause, never SQL or values."""
    return AuditUnavailable(
        f"audit store unavailable: {reason(exc)}; {consequence}",
        hint="Lockgate retries on the next attempt; ask the operator to check the audit store",
    )


def reason(exc: BaseException) -> str:
    if isinstance(exc, StoreGone):
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
