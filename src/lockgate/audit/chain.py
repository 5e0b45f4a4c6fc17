"""Hash chains over audit events, and the signed checkpoints that anchor them.

Theory of operation
-------------------
The ingester is the only writer of its state folder's records, so it chains them as it
writes them, in the same transaction. Each *event* (a session's start or end, a command's
start or outcome, a refused connection) gets a row in `audit_events`:

    digest = SHA-256(canonical encoding of the event, taken from its store row)
    hash   = SHA-256(previous hash || digest)          (the first link: SHA-256 of the name)

Events, not rows, are chained: a command's row is written at its start and completed with
its outcome, and both are links; when the ingester writes a command and its outcome in one
transaction (the usual case: the outcome follows within milliseconds) they are one link, an
`X` event whose encoding holds both (half the hashing and event rows per statement). The
canonical encoding is a JSON array of the values as the store keeps them (timestamps as UTC
text to the microsecond, lists as their stored JSON text), so `verify` recomputes every
digest from the rows it reads back.

Each chain is named after the fingerprint of an Ed25519 key kept in the state folder
(`audit-signing-key.pem`, mode 0600). Several gateway hosts sharing one PostgreSQL store
each write their own chain: no coordination between hosts. Every few seconds of activity
the ingester signs a *checkpoint* (chain, seq, hash); a store-only attacker who rewrites a
chain from some point on cannot re-sign it. Events after the last checkpoint are anchored by
the head file (`audit-chain-head.json`) the ingester rewrites after each commit; when the
ingester finds the store's chain shorter than its head file says, it signs a `break`
checkpoint that `verify` reports forever.

Retention removes rows but keeps their events, marked with the `purge` checkpoint that
sealed the removal (it signs how many events of the chain went and a digest over their
positions and digests), so the chain still verifies across purged records.
"""

from __future__ import annotations

import hashlib
import logging
import operator
import os
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import Dialect

from lockgate.audit.dbapi import BulkInsert, insert_sql, marker
from lockgate.audit.tables import (
    FTS_TABLE,
    audit_chains,
    audit_checkpoints,
    audit_events,
)
from lockgate.errors import LockgateError
from lockgate.keyfiles import check_owner_only, create_private_file, new_ed25519

log = logging.getLogger(__name__)

KEY_FILE = "audit-signing-key.pem"
HEAD_FILE = "audit-chain-head.json"

# What each event kind's canonical encoding holds, by store column.
EVENT_FIELDS: dict[str, tuple[str, ...]] = {
    "S": (
        "id",
        "subject",
        "groups",
        "principal_kind",
        "issuer",
        "token_id",
        "resource",
        "protocol",
        "client_addr",
        "user_name",
        "application_name",
        "started_at",
    ),
    "E": ("id", "ended_at", "end_reason", "bytes_from_client", "bytes_to_client", "error"),
    "C": (
        "session_id",
        "seq",
        "started_at",
        "text",
        "kind",
        "tables",
        "params",
        "decision",
        "rule",
        "reason",
    ),
    "F": (
        "session_id",
        "seq",
        "finished_at",
        "rows",
        "status",
        "error_code",
        "error_message",
        "bytes_out",
        "duration_ms",
    ),
    "R": ("id", "at", "client_addr", "protocol", "resource", "subject", "code", "reason"),
}
# A command and its outcome chained as one event: the command's fields, then the outcome's.
EVENT_FIELDS["X"] = EVENT_FIELDS["C"] + EVENT_FIELDS["F"][2:]
# Kinds whose encoding holds a command's outcome (and so its masked cells, if any).
OUTCOMES = frozenset({"F", "X"})
# Kinds whose encoding holds a command's statement (indexed for search).
STATEMENTS = frozenset({"C", "X"})
# Kinds that describe a row of `commands`.
COMMANDS = OUTCOMES | STATEMENTS
# Fields an event's encoding holds only when the first is set (schema version 2): older
# events, and outcomes without a captured result, encode exactly as before.
OPTIONAL_FIELDS: dict[str, tuple[str, ...]] = {
    "F": ("result_sha256", "result_rows", "result_rows_dropped", "result_bytes_dropped"),
}
OPTIONAL_FIELDS["X"] = OPTIONAL_FIELDS["F"]
KIND_NAMES = {
    "S": "session start",
    "E": "session end",
    "C": "command",
    "F": "command outcome",
    "X": "command",  # with its outcome
    "R": "refused connection",
}
_TIMES = frozenset({"started_at", "ended_at", "finished_at", "at"})
_FLOATS = frozenset({"duration_ms"})


# Full-text rows are keyed by chain id and event seq: 2**40 events per chain.
FTS_SHIFT = 40


class ChainKeyError(LockgateError):
    """The audit signing key is unreadable, malformed or readable by other users."""


# ---------------------------------------------------------------------- encoding


def ts_text(value: Any) -> str | None:
    """A timestamp as the canonical encoding holds it: naive UTC, to the microsecond."""
    if value is None:
        return None
    if isinstance(value, str):
        return value  # already the store's own text (SQLite), formatted the same way
    moment: datetime = value
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return moment.isoformat(" ", "microseconds")


def _converter(name: str) -> Any:
    if name in _TIMES:
        return ts_text
    return float if name in _FLOATS else None


_CONVERTERS: dict[str, tuple[tuple[str, Any], ...]] = {
    kind: tuple((name, _converter(name)) for name in names) for kind, names in EVENT_FIELDS.items()
}


def event_digest(kind: str, row: Mapping[str, Any]) -> bytes:
    """SHA-256 of an event's canonical encoding, from its row's column values."""
    values: list[Any] = [kind]
    append = values.append
    # The ingester runs this for every event: the field kinds are looked up once per kind.
    for name, conv in _CONVERTERS[kind]:
        v = row[name]
        if conv is not None and v is not None:
            v = conv(v)
        append(v)
    optional = OPTIONAL_FIELDS.get(kind)
    if optional is not None and row.get(optional[0]) is not None:
        values.extend(row.get(name) for name in optional)
    if kind in OUTCOMES and row.get("masked_cells") is not None:
        # Tagged, so it cannot be read as result fields; pairs, so key order cannot differ.
        values.append(["masked", row["masked_cells"], masked_pairs(row.get("masked_by_rule"))])
    return hashlib.sha256(orjson.dumps(values)).digest()


class EventLayout:
    """One event kind's canonical encoding, read from rows laid out as `columns`.

    The ingester's fast path: it digests the tuples it inserts, without a dict per row.
    Gives the same digest as `event_digest` over the same values (tested).
    """

    __slots__ = ("_conversions", "_fields", "_kind", "_masked", "_optional")

    def __init__(self, kind: str, columns: Sequence[str]) -> None:
        at = {name: i for i, name in enumerate(columns)}
        names = EVENT_FIELDS[kind]
        self._kind = kind
        self._fields = _getter([at[name] for name in names])
        # Positions in the encoded list (after the kind) of the values to convert, with the
        # type a value already has when converting it changes nothing (the call is skipped).
        self._conversions = tuple(
            (i + 1, conv, str if conv is ts_text else float)
            for i, (_name, conv) in enumerate(_CONVERTERS[kind])
            if conv is not None
        )
        optional = OPTIONAL_FIELDS.get(kind, ())
        self._optional = (
            _getter([at[name] for name in optional])
            if optional and all(name in at for name in optional)
            else None
        )
        self._masked = (
            (at["masked_cells"], at["masked_by_rule"])
            if kind in OUTCOMES and "masked_cells" in at and "masked_by_rule" in at
            else None
        )
        if optional and self._optional is None:
            raise ValueError(f"rows for {kind} events lack {', '.join(optional)}")

    def digest(self, row: Sequence[Any]) -> bytes:
        """SHA-256 of the canonical encoding of the event held in `row`."""
        values: list[Any] = [self._kind, *self._fields(row)]
        for i, conv, done in self._conversions:
            v = values[i]
            if v is not None and type(v) is not done:
                values[i] = conv(v)
        if self._optional is not None:
            extra = self._optional(row)
            if extra[0] is not None:
                values.extend(extra)
        masked = self._masked
        if masked is not None and row[masked[0]] is not None:
            values.append(["masked", row[masked[0]], masked_pairs(row[masked[1]])])
        return hashlib.sha256(orjson.dumps(values)).digest()


def _getter(positions: list[int]) -> Callable[[Sequence[Any]], tuple[Any, ...]]:
    """The values at `positions` of a row, always as a tuple (itemgetter of one is not)."""
    if len(positions) == 1:
        (only,) = positions
        return lambda row: (row[only],)
    return operator.itemgetter(*positions)


def masked_pairs(value: Any) -> list[list[Any]]:
    """Masked cells per rule as sorted [rule, count] pairs, from the column's text or dict."""
    if value is None:
        return []
    per_rule = orjson.loads(value) if isinstance(value, str | bytes) else value
    return sorted([str(k), int(v)] for k, v in per_rule.items())


def genesis(name: str) -> bytes:
    return hashlib.sha256(b"lockgate audit chain\x00" + name.encode()).digest()


def link(prev: bytes, digest: bytes) -> bytes:
    return hashlib.sha256(prev + digest).digest()


def purge_digest(events: Sequence[tuple[int, bytes]]) -> bytes:
    """The digest a purge checkpoint signs over its events: (seq, digest) in seq order."""
    h = hashlib.sha256()
    for seq, digest in events:
        h.update(seq.to_bytes(8, "big") + digest)
    return h.digest()


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """What a checkpoint signs."""

    chain: str
    seq: int
    hash: bytes
    kind: str
    at: str
    signer: str
    purged: int = 0
    purged_digest: bytes | None = None

    def message(self) -> bytes:
        return orjson.dumps(
            {
                "v": 1,
                "chain": self.chain,
                "seq": self.seq,
                "hash": self.hash.hex(),
                "kind": self.kind,
                "at": self.at,
                "signer": self.signer,
                "purged": self.purged,
                "purged_digest": None if self.purged_digest is None else self.purged_digest.hex(),
            },
            option=orjson.OPT_SORT_KEYS,
        )

    def verify(self, public_key_hex: str, signature: bytes) -> bool:
        try:
            Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_key_hex)).verify(
                signature, self.message()
            )
        except (InvalidSignature, ValueError):
            return False
        return True


# ---------------------------------------------------------------------- keys


def load_or_create_key(path: Path) -> Ed25519PrivateKey:
    """The state folder's audit signing key, created (mode 0600) on first use."""
    created = create_private_file(path, new_ed25519)
    if created is not None:
        return created
    check_owner_only(path, "audit signing key", ChainKeyError)
    try:
        loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise ChainKeyError(
            f"audit signing key {path} cannot be read ({type(exc).__name__})",
            hint="restore it from backup; a new key starts a new chain",
        ) from None
    if not isinstance(loaded, Ed25519PrivateKey):
        raise ChainKeyError(
            f"audit signing key {path} is not an Ed25519 key",
            hint="move it away; Lockgate creates a fresh key (and a new chain) on next use",
        )
    return loaded


def public_hex(key: Ed25519PrivateKey) -> str:
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return raw.hex()


def chain_name(public_key_hex: str) -> str:
    """A chain's name: the first 16 hex digits of SHA-256 of its public key."""
    return hashlib.sha256(bytes.fromhex(public_key_hex)).hexdigest()[:16]


def read_head(path: Path) -> dict[str, Any] | None:
    try:
        data = path.read_bytes()
        # The ingester rewrites the file in place (HeadFile): two equal reads in a row are
        # not one torn by a write that was under way.
        for _ in range(10):
            again = path.read_bytes()
            if again == data:
                break
            data = again
        head = orjson.loads(data)
    except (OSError, orjson.JSONDecodeError):
        return None
    return head if isinstance(head, dict) else None


class HeadFile:
    """The head file, rewritten after each commit that moved the chain.

    Created (or replaced) whole through a temporary file and a rename, then rewritten in
    place with one `pwrite` of a fixed size: writing a new file and renaming it over the old
    one cost ~140 µs of CPU per commit on ext4, the in-place write (and a `stat` to notice a
    replaced file) a few µs. The size never changes, so a write leaves no tail of an older,
    longer text; readers (`read_head`) read until two reads agree.
    """

    SIZE = 160  # spaces pad the JSON text (~130 bytes with a 19-digit seq)

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = -1
        self._file_id = (0, 0)

    def write(self, name: str, seq: int, hash_: bytes) -> None:
        data = orjson.dumps({"chain": name, "seq": seq, "hash": hash_.hex()}).ljust(self.SIZE)
        try:
            # A file removed or replaced meanwhile (a restored state folder) is written anew.
            if self._fd >= 0 and _file_id(self.path) == self._file_id:
                os.pwrite(self._fd, data, 0)
                return
            self.close()
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_bytes(data)
            os.replace(tmp, self.path)
            self._fd = os.open(self.path, os.O_WRONLY)
            st = os.fstat(self._fd)
            self._file_id = (st.st_dev, st.st_ino)
        except OSError as exc:
            self.close()
            log.warning("could not update the audit chain head file %s: %s", self.path, exc)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _file_id(path: Path) -> tuple[int, int]:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return (0, 0)
    return (st.st_dev, st.st_ino)


# ---------------------------------------------------------------------- writing


class ChainWriter:
    """Chains the events of one ingester's transactions (see StoreWriter)."""

    def __init__(
        self,
        state_dir: Path,
        *,
        checkpoint_seconds: float = 5.0,
        checkpoint_events: int = 10_000,
    ) -> None:
        self.key_path = state_dir / KEY_FILE
        self.head_path = state_dir / HEAD_FILE
        self._head_file = HeadFile(self.head_path)
        self.checkpoint_seconds = checkpoint_seconds
        self.checkpoint_events = checkpoint_events
        self._key: Ed25519PrivateKey | None = None
        self.name = ""
        self.chain_id = 0
        self.seq = 0
        self.hash = b""
        self._sealed_seq = 0
        self._sealed_at = 0.0
        self._attached = False
        self._events: list[tuple[Any, ...]] = []
        self._fts: list[tuple[Any, ...]] = []
        self._head: tuple[int, bytes] = (0, b"")
        self._sql: dict[str, str] = {}
        self._sqlite = False
        # Set by an ingester that ships events (audit sinks): committed events, with their
        # position and hash, wait in `published` until it takes them (`take_published`).
        self.collect = False
        self._out: list[tuple[str, int, bytes, Mapping[str, Any]]] = []
        self.published: list[tuple[str, int, bytes, Mapping[str, Any]]] = []

    # -- connection ------------------------------------------------------------------------
    def attach(self, conn: Any, dialect: Dialect, ts: Any) -> None:
        """Register this chain in the store (once) and load its head; commits."""
        if self._key is None:
            self._key = load_or_create_key(self.key_path)
        public = public_hex(self._key)
        self.name = chain_name(public)
        self._ts = ts
        self._sqlite = dialect.name == "sqlite"
        mark = marker(dialect)
        q = dialect.identifier_preparer.quote
        self._sql = {
            "find": f"SELECT id FROM {audit_chains.name} WHERE name = {mark(1)}",
            "register": insert_sql(
                dialect, audit_chains, ["name", "public_key", "host", "created_at"]
            ),
            "head": f"SELECT seq, {q('hash')} FROM {audit_events.name} WHERE chain = {mark(1)} "
            "ORDER BY seq DESC LIMIT 1",
            "at": f"SELECT {q('hash')} FROM {audit_events.name} "
            f"WHERE chain = {mark(1)} AND seq = {mark(2)}",
            "sealed": f"SELECT max(seq) FROM {audit_checkpoints.name} "
            f"WHERE chain = {mark(1)} AND kind = 'periodic'",
            "checkpoint": insert_sql(
                dialect,
                audit_checkpoints,
                ["chain", "seq", "hash", "kind", "at", "purged", "signer", "signature"],
            ),
            "fts": f"INSERT INTO {FTS_TABLE} (rowid, text, session_id, seq) "
            f"VALUES ({mark(1)}, {mark(2)}, {mark(3)}, {mark(4)})",
        }
        self._insert_events = BulkInsert(
            dialect, audit_events, ["chain", "seq", "kind", "session_id", "item", "digest", "hash"]
        )
        cur = conn.cursor()
        try:
            cur.execute(self._sql["find"], (self.name,))
            row = cur.fetchone()
            if row is None:
                now = time.time()
                cur.execute(
                    self._sql["register"], (self.name, public, socket.gethostname(), ts(now))
                )
                cur.execute(self._sql["find"], (self.name,))
                row = cur.fetchone()
            self.chain_id = int(row[0])
            cur.execute(self._sql["head"], (self.chain_id,))
            head = cur.fetchone()
            self.seq, self.hash = (
                (int(head[0]), bytes(head[1])) if head else (0, genesis(self.name))
            )
            cur.execute(self._sql["sealed"], (self.chain_id,))
            self._sealed_seq = int(cur.fetchone()[0] or 0)
            self._sealed_at = time.monotonic()
            self._check_head_file(cur)
            conn.commit()
        except BaseException:
            conn.rollback()
            raise
        finally:
            cur.close()
        self._attached = True

    def detach(self) -> None:
        """Forget the head: it is read again from the store on the next attach."""
        self._attached = False
        self._head_file.close()

    @property
    def attached(self) -> bool:
        return self._attached

    def _check_head_file(self, cur: Any) -> None:
        """Sign a `break` checkpoint if the store lost links this ingester wrote."""
        head = read_head(self.head_path)
        if not head or head.get("chain") != self.name:
            return
        seq, expected = int(head.get("seq", 0)), str(head.get("hash", ""))
        found = None
        if 0 < seq <= self.seq:
            cur.execute(self._sql["at"], (self.chain_id, seq))
            row = cur.fetchone()
            found = bytes(row[0]).hex() if row else None
        if seq == 0 or found == expected:
            return
        log.error(
            "audit chain %s: the store holds %d events but this host wrote %d; "
            "records were removed or the store was restored from a backup",
            self.name,
            self.seq,
            seq,
        )
        self._sign(cur, "break", seq, bytes.fromhex(expected) if expected else b"\0" * 32)

    # -- one transaction -------------------------------------------------------------------
    def begin(self) -> None:
        self._events.clear()
        self._fts.clear()
        self._out.clear()
        self._head = (self.seq, self.hash)

    def add(
        self, kind: str, session_id: str | None, item: int | None, row: Mapping[str, Any]
    ) -> None:
        """Chain one event whose values `row` holds by column name."""
        text = row["text"] if kind in STATEMENTS else None
        seq, h = self._link(kind, session_id, item, event_digest(kind, row), text)
        if self.collect:
            self._out.append((kind, seq, h, row))

    def add_row(
        self,
        layout: EventLayout,
        kind: str,
        session_id: str | None,
        item: int | None,
        columns: Sequence[str],
        row: Sequence[Any],
        text: str | None = None,
    ) -> None:
        """Chain one event held in the tuple `row` (laid out as `columns`): the fast path.

        `text` is a command's statement, for the search index.
        """
        seq, h = self._link(kind, session_id, item, layout.digest(row), text)
        if self.collect:
            self._out.append((kind, seq, h, dict(zip(columns, row, strict=True))))

    def _link(
        self, kind: str, session_id: str | None, item: int | None, digest: bytes, text: str | None
    ) -> tuple[int, bytes]:
        """Append an event with `digest` to the chain (and `text` to the search index)."""
        seq, prev = self._head
        seq += 1
        h = link(prev, digest)
        self._head = (seq, h)
        self._events.append((self.chain_id, seq, kind, session_id, item, digest, h))
        if text is not None and self._sqlite:
            self._fts.append(((self.chain_id << FTS_SHIFT) | seq, text, session_id, item))
        return seq, h

    def write(self, cur: Any, *, force_seal: bool = False) -> None:
        """Insert this transaction's events (and a checkpoint when one is due)."""
        if self._events:
            self._insert_events(cur, self._events)
        if self._fts:
            cur.executemany(self._sql["fts"], self._fts)
        seq, h = self._head
        due = seq > self._sealed_seq and (
            force_seal
            or seq - self._sealed_seq >= self.checkpoint_events
            or time.monotonic() - self._sealed_at >= self.checkpoint_seconds
        )
        if due:
            self._sign(cur, "periodic", seq, h)
            self._sealed_pending = seq
        else:
            self._sealed_pending = 0

    def seal_due(self) -> bool:
        return (
            self._attached
            and self.seq > self._sealed_seq
            and (time.monotonic() - self._sealed_at >= self.checkpoint_seconds)
        )

    def committed(self) -> None:
        moved = self._head[0] != self.seq
        self.seq, self.hash = self._head
        if self._sealed_pending:
            self._sealed_seq = self._sealed_pending
            self._sealed_at = time.monotonic()
            self._sealed_pending = 0
        self._events.clear()
        self._fts.clear()
        if self._out:
            self.published.extend(self._out)
            self._out.clear()
        if moved:
            self._head_file.write(self.name, self.seq, self.hash)

    def rolled_back(self) -> None:
        self._events.clear()
        self._fts.clear()
        self._out.clear()
        self._head = (self.seq, self.hash)
        self._sealed_pending = 0

    def take_published(self) -> list[tuple[str, int, bytes, Mapping[str, Any]]]:
        """Committed events not taken yet: (kind, seq, hash, row), in chain order."""
        out, self.published = self.published, []
        return out

    def _sign(self, cur: Any, kind: str, seq: int, hash_: bytes) -> None:
        assert self._key is not None
        now = time.time()
        at = ts_text(datetime.fromtimestamp(now, UTC))
        assert at is not None
        cp = Checkpoint(self.name, seq, hash_, kind, at, self.name)
        signature = self._key.sign(cp.message())
        cur.execute(
            self._sql["checkpoint"],
            (self.chain_id, seq, hash_, kind, self._ts(now), 0, self.chain_id, signature),
        )

    _sealed_pending = 0
    _ts: Any = None
    _insert_events: BulkInsert
