"""Ships committed audit events to sinks (file, syslog, webhook) through persistent queues.

Theory of operation
-------------------
After each committed batch the ingester hands the batch's events to `SinkHub.observe`,
which appends them, one JSON line each, to every sink's queue file
(`STATE/sinks/NAME/queue.jsonl`): one `write`, no network, so a slow or dead sink never
holds back the store. One delivery thread per sink reads the queue from its cursor
(`STATE/sinks/NAME/cursor`), delivers up to `batch_max` events, and only then moves the
cursor; a failed delivery is retried after a delay that doubles up to `backoff_max`.
Queued events survive a restart (the cursor names the queue file's inode, so a cursor
never points into another file), and delivery is at least once: a crash between a delivery
and the cursor's move sends those events again, so consumers deduplicate by
(`chain`, `chain_seq`).

A queue holds at most `queue_max_bytes` of undelivered events; events that arrive while it
is full are not queued for that sink (counted as dropped; the store still has them). The
delivered head of a queue file is cut off by rewriting the tail into a new file once it
is large.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import orjson

from lockgate.audit.events import Event
from lockgate.audit.sink_transports import make_transport
from lockgate.config.sinks import AnySink, FileSink

if TYPE_CHECKING:
    from lockgate.config.model import Manifest

log = logging.getLogger(__name__)

QUEUE_FILE = "queue.jsonl"
CURSOR_FILE = "cursor"
_READ_CHUNK = 1 << 20
_COMPACT_AT = 1 << 20


class Transport(Protocol):
    """Delivers JSON lines (one event each) or raises; called from one thread."""

    def deliver(self, lines: list[bytes]) -> None: ...

    def close(self) -> None: ...


@dataclass(slots=True)
class SinkStats:
    """Counters of one sink, for /metrics."""

    delivered: int = 0
    failures: int = 0
    dropped: int = 0
    queued_bytes: int = 0


class SinkQueue:
    """A sink's append-only queue file and its delivery cursor; thread-safe."""

    def __init__(self, folder: Path, max_bytes: int) -> None:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = folder / QUEUE_FILE
        self._cursor_path = folder / CURSOR_FILE
        self.max_bytes = max_bytes
        self.changed = threading.Condition()
        self._fd = -1
        self._open()
        self.cursor = self._load_cursor()

    def _open(self) -> None:
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        st = os.fstat(self._fd)
        self._inode = st.st_ino
        self.size = st.st_size
        if self.size:
            # A crash in the middle of an append leaves a line without its newline: cut it,
            # or the next append would glue an event onto half of another.
            tail = os.pread(self._fd, min(self.size, _READ_CHUNK), max(0, self.size - _READ_CHUNK))
            if not tail.endswith(b"\n"):
                cut = tail.rfind(b"\n")
                keep = self.size - len(tail) + cut + 1 if cut >= 0 else 0
                log.warning("audit sink queue %s ends with a torn event; cut", self.path)
                os.ftruncate(self._fd, keep)
                self.size = keep

    def _load_cursor(self) -> int:
        try:
            inode, offset = self._cursor_path.read_text().split()
            if int(inode) == self._inode and 0 <= int(offset) <= self.size:
                return int(offset)
        except (OSError, ValueError):
            pass
        return 0

    def _save_cursor(self) -> None:
        tmp = self._cursor_path.with_name(CURSOR_FILE + ".tmp")
        tmp.write_text(f"{self._inode} {self.cursor}\n")
        os.replace(tmp, self._cursor_path)

    @property
    def pending(self) -> int:
        """Bytes queued and not delivered yet."""
        return self.size - self.cursor

    def append(self, data: bytes) -> bool:
        """Queue JSON lines (each ending in a newline); False when the queue is full."""
        with self.changed:
            if self.pending + len(data) > self.max_bytes:
                return False
            view = memoryview(data)
            try:
                while view:
                    view = view[os.write(self._fd, view) :]
            except OSError:
                os.ftruncate(self._fd, self.size)  # no half event for the reader
                raise
            self.size += len(data)
            self.changed.notify_all()
            return True

    def read(self, max_events: int) -> tuple[list[bytes], int]:
        """Up to `max_events` whole lines from the cursor, and the offset after them."""
        with self.changed:
            start, size, fd = self.cursor, self.size, self._fd
        if start >= size:
            return [], start
        chunk = _READ_CHUNK
        while True:
            data = os.pread(fd, min(chunk, size - start), start)
            end = data.rfind(b"\n")
            if end >= 0 or len(data) >= size - start:
                break
            chunk *= 4  # one event longer than a chunk
        lines = data[: end + 1].split(b"\n", max_events)
        if len(lines) > max_events:
            lines.pop()
        lines = [line for line in lines if line]
        used = sum(len(line) + 1 for line in lines)
        return lines, start + used

    def advance(self, offset: int) -> None:
        """Mark everything before `offset` delivered (and cut a large delivered head)."""
        with self.changed:
            self.cursor = offset
            if self.cursor >= _COMPACT_AT and self.cursor * 2 >= self.size:
                self._compact()
            self._save_cursor()

    def _compact(self) -> None:
        tail = os.pread(self._fd, self.size - self.cursor, self.cursor)
        tmp = self.path.with_name(QUEUE_FILE + ".tmp")
        with tmp.open("wb") as f:
            f.write(tail)
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.path)
        os.close(self._fd)
        self._open()
        self.cursor = 0

    def close(self) -> None:
        with self.changed:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


class SinkRunner:
    """One sink: its queue, its transport, and the thread that delivers."""

    def __init__(
        self, config: AnySink, state_dir: Path, transport: Transport | None = None
    ) -> None:
        self.config = config
        self.name = config.name
        self.queue = SinkQueue(state_dir / "sinks" / config.name, config.queue_max_bytes)
        self.transport: Transport = transport or make_transport(config)
        self.stats = SinkStats()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def offer(self, data: bytes, count: int) -> None:
        try:
            queued = self.queue.append(data)
        except OSError as exc:
            queued = False
            log.error("audit sink %s: its queue cannot be written (%s)", self.name, exc)
        if not queued:
            if self.stats.dropped == 0 or self.stats.dropped % 10_000 < count:
                log.error(
                    "audit sink %s: queue full (%d bytes); %d events not queued for it",
                    self.name,
                    self.queue.max_bytes,
                    count,
                )
            self.stats.dropped += count

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._run, name=f"lockgate-sink-{self.name}", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 15.0) -> None:
        self._stop.set()
        with self.queue.changed:
            self.queue.changed.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self.transport.close()
        self.queue.close()

    def _run(self) -> None:
        delay = 0.0
        cfg = self.config
        while not self._stop.is_set():
            lines, end = self.queue.read(cfg.batch_max)
            if not lines:
                with self.queue.changed:
                    if self.queue.pending == 0 and not self._stop.is_set():
                        self.queue.changed.wait(1.0)
                continue
            try:
                self.transport.deliver(lines)
            except Exception as exc:
                self.stats.failures += 1
                delay = min(cfg.backoff_max, delay * 2 if delay else cfg.backoff_initial)
                if self.stats.failures == 1 or self.stats.failures % 100 == 0:
                    log.warning(
                        "audit sink %s: delivery failed (%s); retrying in %.1f s",
                        self.name,
                        _why(exc),
                        delay,
                    )
                self._stop.wait(delay)
                continue
            delay = 0.0
            self.stats.delivered += len(lines)
            self.queue.advance(end)


class EventObserver(Protocol):
    """Gets each committed batch's events (from the ingester's thread); must not block."""

    def observe(self, events: Sequence[Event]) -> None: ...


class SinkHub:
    """Every configured sink of a state folder."""

    def __init__(self, runners: list[SinkRunner]) -> None:
        self.runners = runners

    @classmethod
    def from_config(cls, sinks: Sequence[AnySink], state_dir: Path) -> SinkHub:
        return cls([SinkRunner(s, state_dir) for s in sinks])

    @classmethod
    def from_manifest(cls, manifest: Manifest) -> SinkHub:
        """The manifest's sinks; a relative file sink path is relative to the manifest."""
        sinks = [
            s.model_copy(update={"path": manifest.path(s.path)}) if isinstance(s, FileSink) else s
            for s in manifest.audit.sinks
        ]
        return cls.from_config(sinks, manifest.state_dir)

    def start(self) -> None:
        for r in self.runners:
            r.start()

    def stop(self) -> None:
        for r in self.runners:
            r.stop()

    def observe(self, events: Sequence[Event]) -> None:
        """Queue a committed batch's events for every sink."""
        if not events or not self.runners:
            return
        data = b"".join(orjson.dumps(e) + b"\n" for e in events)
        for r in self.runners:
            r.offer(data, len(events))

    def stats(self) -> dict[str, SinkStats]:
        out: dict[str, SinkStats] = {}
        for r in self.runners:
            r.stats.queued_bytes = r.queue.pending
            out[r.name] = r.stats
        return out


def _why(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
