"""The audit journal: append-only files that make a record durable before a command runs.

Theory of operation
-------------------
Each gateway process appends its audit records to its own journal file with ONE `write`
per group of records (everything recorded in one event-loop iteration). Once `write`
returns, the bytes are in the operating system's page cache: killing the gateway (even
with SIGKILL) loses nothing; `fsync: true` also survives a power cut, at the cost of one
`fdatasync` per group. No lock is shared between processes on this path, so several
workers never wait for each other.

An ingester (one thread per process) copies journal records into the SQL audit store in
large transactions, and stores how far it got *in the same transaction*, so a crash at any
point neither loses nor duplicates a record. A journal file whose writer is gone (its
`flock` is free) is ingested by whichever process finds it, then deleted.

Framing: `length:u32 | crc32:u32 | payload` with a JSON array payload (orjson: about a
microsecond per record). A torn or corrupt
tail (a crash in the middle of a write) ends the readable part of a file.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import struct
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

_HEAD = struct.Struct("!II")
# Bound once: the workers encode every record they journal.
_pack = _HEAD.pack
_crc32 = zlib.crc32
_dumps = orjson.dumps
SUFFIX = ".jnl"

_last_created = 0


def frame(rec: list[Any]) -> tuple[bytes, bytes]:
    """One record framed ahead of its append: its header and payload, which `encode` takes
    as they are."""
    payload = _dumps(rec, default=str)
    return _pack(len(payload), _crc32(payload)), payload


def encode(records: list[list[Any] | bytes]) -> bytes:
    """Frame records for one append; what is already `frame`d (bytes) goes as it is."""
    parts: list[bytes] = []
    for rec in records:
        if isinstance(rec, bytes):
            parts.append(rec)
        else:
            parts += frame(rec)
    return b"".join(parts)


def decode(data: bytes, start: int = 0) -> tuple[list[list[Any]], int]:
    """Records framed in `data[start:]` and the offset after the last whole, valid one."""
    records: list[list[Any]] = []
    pos = start
    n = len(data)
    while pos + 8 <= n:
        length, crc = _HEAD.unpack_from(data, pos)
        end = pos + 8 + length
        # length 0 is never written: zeroes are a file extended but not filled (power cut).
        if end > n or length == 0:
            break
        payload = data[pos + 8 : end]
        if zlib.crc32(payload) != crc:
            break
        try:
            records.append(orjson.loads(payload))
        except orjson.JSONDecodeError:
            break
        pos = end
    return records, pos


def frame_size(data: bytes) -> int:
    """The size of the record framed at the start of `data` (0 if not even its header is)."""
    return 0 if len(data) < _HEAD.size else _HEAD.size + int(_HEAD.unpack_from(data)[0])


class JournalWriter:
    """This process's journal file, held with an exclusive `flock` while it is open."""

    def __init__(self, folder: Path, *, fsync: bool = False) -> None:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.folder = folder
        self.fsync = fsync
        # Names sort in creation order, and ingesters read files in name order: a session's
        # records continued in a newer file (after a rotation) never reach the store before
        # the session itself, which would reject them.
        global _last_created
        _last_created = max(time.time_ns(), _last_created + 1)
        self.path = folder / f"{_last_created:020d}-{os.getpid()}-{os.urandom(4).hex()}{SUFFIX}"
        # Lock the file before giving it its journal name: an ingester that found it unlocked
        # would take it for an orphan and delete it under its writer.
        hidden = self.path.with_name(self.path.name + ".new")
        self._fd = os.open(hidden, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.rename(hidden, self.path)
        except BaseException:
            os.close(self._fd)
            hidden.unlink(missing_ok=True)
            raise
        self.size = 0
        # Set when an append failed: the file may end in a torn record, so nothing may be
        # appended after it (the records would be unreadable); the caller starts a new file.
        self.broken = False

    def append(self, data: bytes) -> None:
        """Append framed records; durable (against a process crash) when this returns."""
        if self.broken:
            raise OSError(errno.EIO, "the audit journal failed earlier; start a new one")
        try:
            written = os.write(self._fd, data)
            if written < len(data):  # a short write (a signal, a full disk): write the rest
                view = memoryview(data)
                while written < len(data):
                    written += os.write(self._fd, view[written:])
            if self.fsync:
                os.fdatasync(self._fd)
        except OSError as exc:
            self.broken = True
            if exc.errno == errno.EBADF:
                self._fd = -1  # not ours any more: never close a number someone may reuse
            else:
                # Take back a partial write, so the failed (refused) records are not read.
                with contextlib.suppress(OSError):
                    os.ftruncate(self._fd, self.size)
            raise
        self.size += len(data)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def orphaned(folder: Path, own: Path | None) -> Iterator[tuple[Path, int]]:
    """Journal files whose writer is gone, each opened and locked: (path, fd)."""
    if not folder.exists():
        return
    for path in sorted(folder.glob(f"*{SUFFIX}")):
        if own is not None and path == own:
            continue
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        yield path, fd


def read_from(path: Path, offset: int, limit: int = 8 << 20) -> bytes:
    """Up to `limit` bytes of a journal file from `offset` (the writer may still append)."""
    with path.open("rb") as f:
        f.seek(offset)
        return f.read(limit)
