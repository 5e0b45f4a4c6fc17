"""Recordings of SSH channels, kept under `STATE/recordings/SESSION/`.

* Interactive shells: asciicast v2 (`SEQ.cast.gz`): a JSON header line, then one event per
  line, `[seconds, "o", text]` for output, `[seconds, "r", "COLSxROWS"]` for a window size
  change and `[seconds, "i", text]` for input when the manifest records input. Any asciinema
  player plays it after `gunzip`; `lockgate ssh-replay SESSION` plays it in the terminal.
* Exec and subsystem channels carry binary data (scp, sftp, tar...): each stream is kept raw
  (`SEQ.in`, `SEQ.out`, `SEQ.err`) up to a size cap, while its SHA-256 covers all of it.

Each channel also gets `SEQ.json`, a summary with every file's size and checksum. The audit
row of the channel's command (same session id, same seq) carries the summary's SHA-256 in its
status, so the audit trail vouches for the recording.
"""

from __future__ import annotations

import codecs
import gzip
import hashlib
import json
import os
import time
from pathlib import Path
from typing import IO, Any

import orjson

RECORDINGS = "recordings"


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
    __slots__ = ("cap", "file", "kept", "path", "sha", "total")

    def __init__(self, path: Path, cap: int) -> None:
        self.path = path
        self.cap = cap
        self.file: IO[bytes] | None = None
        self.sha = hashlib.sha256()
        self.total = 0
        self.kept = 0

    def add(self, data: bytes) -> None:
        self.total += len(data)
        self.sha.update(data)
        room = self.cap - self.kept
        if room > 0:
            if self.file is None:
                self.file = _open_private(self.path)
            piece = data[:room]
            self.file.write(piece)
            self.kept += len(piece)

    def close(self) -> dict[str, Any]:
        if self.file is not None:
            self.file.close()
        return {
            "file": self.path.name if self.kept else None,
            "bytes": self.total,
            "kept": self.kept,
            "truncated": self.kept < self.total,
            "sha256": self.sha.hexdigest(),
        }


class RawLog:
    """The raw, size-capped byte streams of one exec or subsystem channel."""

    def __init__(self, base: Path, cap: int) -> None:
        self.base = base
        self.input = _Stream(base.with_suffix(".in"), cap)
        self.output = _Stream(base.with_suffix(".out"), cap)
        self.stderr = _Stream(base.with_suffix(".err"), cap)

    def close(self, extra: dict[str, Any]) -> str:
        """Close the streams and write their summary; returns the summary's SHA-256."""
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
