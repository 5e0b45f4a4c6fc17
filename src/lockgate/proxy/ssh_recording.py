"""Recordings of SSH channels, kept under `STATE/recordings/SESSION/`.

* Interactive shells: asciicast v2 (`SEQ.cast.gz`): a JSON header line, then one event per
  line, `[seconds, "o", text]` for output, `[seconds, "r", "COLSxROWS"]` for a window size
  change and `[seconds, "i", text]` for input when the manifest records input. Any asciinema
  player plays it after `gunzip`; `lockgate ssh-replay SESSION` plays it in the terminal.
* Exec and subsystem channels carry binary data (scp, sftp, tar...): each stream is kept raw
  (`SEQ.in`, `SEQ.out`, `SEQ.err`) up to a size cap. An exec stream's SHA-256 covers all of
  it; an SFTP stream's covers what is kept (its files have their own checksums).

Each channel also gets `SEQ.json`, a summary with every file's size and checksum. The audit
row of the channel's command (same session id, same seq) carries the summary's SHA-256 in its
status, so the audit trail vouches for the recording.

Raw streams are hashed and written by one background thread per process (`in_order`), in
the order the relay handed the bytes over: hashlib lets go of the GIL while it hashes, so a
fast copy is relayed on one core while its checksums are computed on another. Closing a
stream waits for the work queued before it, so a summary always covers every byte.
"""

from __future__ import annotations

import atexit
import codecs
import gzip
import hashlib
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import IO, Any, TypeVar

import orjson

RECORDINGS = "recordings"

T = TypeVar("T")
log = logging.getLogger("lockgate.ssh")


class _RecordingThread:
    """One thread running the work handed to it, in the order it was handed over.

    A bare `SimpleQueue` and thread rather than a one-worker `ThreadPoolExecutor`: its
    `submit` takes a semaphore and a condition's lock per call, which the relay thread
    then waits on (and for the GIL) while the recording thread is using them.
    """

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[tuple[Callable[..., Any], tuple[Any, ...], Any]] = (
            queue.SimpleQueue()
        )
        self._thread = threading.Thread(target=self._run, name="lockgate-recording", daemon=True)
        self._thread.start()
        # At exit, what was handed over is still done (the thread is a daemon: never waited
        # for by itself, so a process that exits while a relay is idle does not hang).
        atexit.register(self.stop)

    def put(self, fn: Callable[..., Any], args: tuple[Any, ...], done: Any = None) -> None:
        self._queue.put((fn, args, done))

    def stop(self) -> None:
        self._queue.put((_stop_marker, (), None))
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while True:
            fn, args, done = self._queue.get()
            if fn is _stop_marker:
                return
            try:
                result = fn(*args)
            except BaseException as exc:  # handed to the waiter, or logged: never lost
                if done is not None:
                    done.set_exception(exc)
                else:
                    log.exception("recording work failed")
            else:
                if done is not None:
                    done.set_result(result)


def _stop_marker() -> None:
    """Tells the recording thread to end (a marker, never called)."""


_worker: _RecordingThread | None = None
_worker_lock = threading.Lock()


def _background() -> _RecordingThread:
    global _worker
    with _worker_lock:
        if _worker is None:
            _worker = _RecordingThread()
        return _worker


def in_order(fn: Callable[..., object], *args: object) -> None:
    """Run `fn(*args)` on the recording thread, after everything handed over before."""
    _background().put(fn, args)


def after_pending(fn: Callable[[], T]) -> T:
    """Run `fn` on the recording thread once the work before it is done; wait for it."""
    done: Future[T] = Future()
    _background().put(fn, (), done)
    return done.result()


class OrderedFeed:
    """Hands chunks to `consume` on the recording thread, in order, about 1 MiB at a time.

    Batches keep the per-chunk cost on the event loop to a list append; call `flush` before
    asking for a result (`after_pending`).
    """

    __slots__ = ("_batch", "_consume", "_size")
    BATCH = 1 << 20

    def __init__(self, consume: Callable[[list[bytes]], None]) -> None:
        self._consume = consume
        self._batch: list[bytes] = []
        self._size = 0

    def add(self, data: bytes) -> None:
        """Queue immutable bytes (they are read later, on the thread)."""
        self._batch.append(data)
        self._size += len(data)
        if self._size >= self.BATCH:
            self.flush()

    def flush(self) -> None:
        if self._batch:
            in_order(self._consume, self._batch)
            self._batch = []
            self._size = 0


def joined(batch: list[bytes]) -> bytes:
    """A batch as one buffer, for one hash update (and one write).

    hashlib lets go of the GIL for the length of each update; one per batch instead of one
    per chunk means the recording thread takes the GIL back from the relay once per batch.
    """
    return batch[0] if len(batch) == 1 else b"".join(batch)


def session_dir(state_dir: Path, session_id: str) -> Path:
    return state_dir / RECORDINGS / session_id


def summary_path(state_dir: Path, session_id: str, seq: int) -> Path:
    return session_dir(state_dir, session_id) / f"{seq}.json"


def _open_private(path: Path) -> IO[bytes]:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    return os.fdopen(fd, "wb")


def _write_summary(path: Path, summary: dict[str, Any]) -> str:
    data = json.dumps(summary, indent=1, sort_keys=True).encode()
    with _open_private(path) as f:
        f.write(data)
    return hashlib.sha256(data).hexdigest()


class CastRecorder:
    """Writes one shell channel as a compressed asciicast v2 file."""

    def __init__(
        self,
        path: Path,
        width: int,
        height: int,
        term: str,
        *,
        record_input: bool,
        title: str = "",
    ) -> None:
        self.path = path
        self.record_input = record_input
        self._raw = _open_private(path)
        self._gz = gzip.GzipFile(fileobj=self._raw, mode="wb", compresslevel=6, mtime=0)
        self._start = time.monotonic()
        self._out = codecs.getincrementaldecoder("utf-8")("replace")
        self._in = codecs.getincrementaldecoder("utf-8")("replace")
        self.output_bytes = 0
        self.events = 0
        header: dict[str, Any] = {
            "version": 2,
            "width": width or 80,
            "height": height or 24,
            "timestamp": int(time.time()),
            "env": {"TERM": term or "", "SHELL": ""},
        }
        if title:
            header["title"] = title
        self._gz.write(orjson.dumps(header) + b"\n")

    def _event(self, code: str, text: str) -> None:
        if not text:
            return
        t = round(time.monotonic() - self._start, 6)
        self._gz.write(orjson.dumps([t, code, text]) + b"\n")
        self.events += 1

    def output(self, data: bytes) -> None:
        self.output_bytes += len(data)
        self._event("o", self._out.decode(data))

    def input(self, data: bytes) -> None:
        if self.record_input:
            self._event("i", self._in.decode(data))

    def resize(self, width: int, height: int) -> None:
        self._event("r", f"{width}x{height}")

    def close(self, extra: dict[str, Any]) -> str:
        """Finish the file and write its summary; returns the summary's SHA-256."""
        self._event("o", self._out.decode(b"", final=True))
        self._gz.close()
        self._raw.close()
        digest = hashlib.sha256(self.path.read_bytes()).hexdigest()
        summary = {
            "format": "asciicast-v2+gzip",
            "file": self.path.name,
            "file_sha256": digest,
            "file_bytes": self.path.stat().st_size,
            "output_bytes": self.output_bytes,
            "events": self.events,
            "input_recorded": self.record_input,
            **extra,
        }
        return _write_summary(self.path.with_name(self.path.name.split(".")[0] + ".json"), summary)


class _Stream:
    """One raw stream, kept up to `cap` bytes; the work runs on the thread.

    `whole`: its SHA-256 covers every byte (exec channels: the only fingerprint of what they
    carried). Otherwise it covers the kept bytes, the log file itself, and the relay stops
    handing bytes over at the cap and only counts the rest: SFTP channels, whose files are
    hashed one by one, where a digest of the protocol stream past the log would vouch for
    nothing the gateway keeps, and would cost a second SHA-256 pass over every file byte.
    """

    __slots__ = ("add", "cap", "error", "feed", "file", "handed", "kept", "path", "sha", "total")

    def __init__(self, path: Path, cap: int, *, whole: bool = True) -> None:
        self.path = path
        self.cap = cap
        self.file: IO[bytes] | None = None
        self.sha = hashlib.sha256()
        self.total = 0
        self.kept = 0
        # Bytes the relay saw, when they are not all handed over (counted on the loop).
        self.handed: int | None = None if whole else 0
        self.error: OSError | None = None
        self.feed = OrderedFeed(self._consume)
        # The relay calls this per chunk: the bound method of the feed, nothing more.
        self.add: Callable[[bytes], None] = self.feed.add if whole else self._add_kept

    def _add_kept(self, data: bytes) -> None:
        assert self.handed is not None
        room = self.cap - self.handed
        self.handed += len(data)
        if room > 0:
            self.feed.add(data if len(data) <= room else data[:room])

    def _consume(self, batch: list[bytes]) -> None:
        data = joined(batch)
        self.total += len(data)
        self.sha.update(data)
        room = self.cap - self.kept
        if room > 0 and self.error is None:
            piece = data if len(data) <= room else data[:room]
            self.kept += len(piece)
            try:
                if self.file is None:
                    self.file = _open_private(self.path)
                self.file.write(piece)
            except OSError as exc:
                self.error = exc

    def close(self) -> dict[str, Any]:
        """The stream's summary (on the recording thread, after its bytes); raises OSError."""
        if self.file is not None:
            self.file.close()
        if self.error is not None:
            raise self.error
        # `handed` is read here while the loop waits for this (`RawLog.close`).
        total = self.total if self.handed is None else self.handed
        return {
            "file": self.path.name if self.kept else None,
            "bytes": total,
            "kept": self.kept,
            "truncated": self.kept < total,
            "sha256": self.sha.hexdigest(),
            "sha256_of": "stream" if self.handed is None else "kept",
        }


class RawLog:
    """The raw, size-capped byte streams of one exec or subsystem channel."""

    def __init__(self, base: Path, cap: int, *, whole: bool = True) -> None:
        self.base = base
        self.input = _Stream(base.with_suffix(".in"), cap, whole=whole)
        self.output = _Stream(base.with_suffix(".out"), cap, whole=whole)
        self.stderr = _Stream(base.with_suffix(".err"), cap, whole=whole)

    def close(self, extra: dict[str, Any]) -> str:
        """Close the streams and write their summary; returns the summary's SHA-256."""
        for stream in (self.input, self.output, self.stderr):
            stream.feed.flush()
        return after_pending(lambda: self._close(extra))

    def _close(self, extra: dict[str, Any]) -> str:
        summary = {
            "format": "raw",
            "stdin": self.input.close(),
            "stdout": self.output.close(),
            "stderr": self.stderr.close(),
            **extra,
        }
        return _write_summary(self.base.with_suffix(".json"), summary)


def read_cast(path: Path) -> tuple[dict[str, Any], list[list[Any]]]:
    """The header and events of a recorded shell."""
    with gzip.open(path, "rb") as f:
        lines = f.read().splitlines()
    header = orjson.loads(lines[0])
    return header, [orjson.loads(line) for line in lines[1:] if line.strip()]
