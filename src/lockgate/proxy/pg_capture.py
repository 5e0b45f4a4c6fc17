"""Result capture: the rows a PostgreSQL client received, per statement, for `lockgate replay`.

Theory of operation
-------------------
The relay already holds every response message as bytes on their way to the client (after
masking). For a statement it admitted (`Query`, `Execute`), it hands this module the runs of
`DataRow`s it writes, and the `RowDescription` and `CommandComplete` around them; they are
copied as they are, in wire format, into one `bytearray` per statement, up to the
resource's caps (rows and bytes, each a number or `full`). Past a cap, only what was not
kept is counted: bytes from the run lengths, rows from the `CommandComplete` tags. Nothing
is decoded here; `pg_results.py` decodes when `lockgate replay` renders.

In the extended protocol the `RowDescription` answers a `Describe`, not the `Execute`: it
is remembered per prepared statement (a `Describe` of a portal counts for the portal's
statement) and put in front of the `Execute`'s rows. A `Parse` forgets the old one.

Parameters (Bind values) are scrubbed before they are recorded: secrets (keys, tokens)
always, and whatever the session's masking detectors find.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from struct import Struct
from typing import Any

from lockgate.config.model import ResultCapture
from lockgate.masking import detectors as det
from lockgate.model import CapturedResult

FORMAT = "pgwire"

_T, _D = b"T"[0], b"D"[0]
_LEN = Struct("!I")
_SECRETS = det.resolve(["secrets"])
# No secret detector matches fewer characters (a JWT needs "eyJ" + 4, ".", "eyJ" + 4, ".";
# an AWS key 20; a private key block far more): shorter values are not scanned.
_SHORTEST_SECRET = 16


@dataclass(slots=True)
class Taken:
    """One statement's captured messages and what was left out."""

    # The prepared statement whose RowDescription goes in front (Execute), or None (Query).
    statement: str | None
    data: bytearray
    rows: int = 0
    # Rows of the result sets seen (from CommandComplete tags); None if one had no tag.
    total_rows: int | None = 0
    row_bytes: int = 0
    seen_row_bytes: int = 0
    full: bool = False
    described: bool = False
    in_set: bool = False


class SessionCapture:
    """Capture state of one session: the caps and the known row descriptions."""

    def __init__(self, caps: ResultCapture) -> None:
        self.max_rows = -1 if caps.rows == "full" else int(caps.rows)
        self.max_bytes = -1 if caps.bytes == "full" else int(caps.bytes)
        self._descriptions: dict[str, bytes] = {}
        self._portals: dict[str, str] = {}

    # -- client side (planning) ------------------------------------------------------------
    def parsed(self, statement: str) -> None:
        self._descriptions.pop(statement, None)

    def bound(self, portal: str, statement: str) -> None:
        self._portals[portal] = statement

    def describing(self, payload: bytes) -> str | None:
        """For a Describe message: the statement its RowDescription belongs to."""
        if not payload:
            return None
        name = payload[1:].split(b"\x00", 1)[0].decode("utf-8", "replace")
        return self._portals.get(name) if payload[:1] == b"P" else name

    def statement(self, kind: int, portal: str) -> Taken:
        """A new capture for an admitted Query (kind `Q`) or Execute of `portal`."""
        if kind == b"Q"[0]:
            return Taken(None, bytearray())
        return Taken(self._portals.get(portal, ""), bytearray())

    # -- upstream side (responses, in order) -----------------------------------------------
    def description(self, taken: Any, msg: bytes | bytearray | memoryview) -> None:
        """A RowDescription sent to the client: a Describe's (str key) or a Query's."""
        if isinstance(taken, str):
            self._descriptions[taken] = bytes(msg)
        elif isinstance(taken, Taken):
            # Descriptions and tags are kept past the caps (which count rows): an investigator
            # still sees which result sets were returned, and their tags.
            taken.in_set = True
            taken.data += msg

    def rows(self, taken: Any, data: bytes | bytearray, start: int, stop: int) -> None:
        """A run of DataRows `data[start:stop]` as the client received them."""
        if not isinstance(taken, Taken):
            return
        taken.seen_row_bytes += stop - start
        taken.in_set = True
        if taken.full:
            return
        if taken.statement is not None and not taken.described:
            taken.described = True
            desc = self._descriptions.get(taken.statement)
            if desc is not None:
                taken.data += desc
        max_rows, max_bytes = self.max_rows, self.max_bytes
        if max_rows < 0 and max_bytes < 0:
            taken.data += data[start:stop]
            taken.row_bytes += stop - start
            taken.rows += _count(data, start, stop)
            return
        pos = start
        kept, used = taken.rows, taken.row_bytes
        while pos < stop:
            size = _LEN.unpack_from(data, pos + 1)[0] + 1
            if (0 <= max_rows <= kept) or (0 <= max_bytes < used + size):
                taken.full = True
                break
            pos += size
            kept += 1
            used += size
        taken.data += data[start:pos]
        taken.rows, taken.row_bytes = kept, used

    def completed(self, taken: Any, msg: bytes | bytearray | memoryview, rows: int | None) -> None:
        """A CommandComplete for the statement (one per result set of a Query)."""
        if not isinstance(taken, Taken) or not taken.in_set:
            return  # not a result set (an INSERT's tag, say): nothing to replay
        if rows is None or taken.total_rows is None:
            taken.total_rows = None
        else:
            taken.total_rows += rows
        taken.in_set = False
        taken.data += msg

    def result(self, taken: Any) -> CapturedResult | None:
        """The captured result of a finished statement (None if it returned no rows)."""
        if not isinstance(taken, Taken) or not (taken.data or taken.seen_row_bytes):
            return None
        dropped: int | None
        if not taken.full:
            dropped = 0
        elif taken.total_rows is None or taken.in_set:
            dropped = None  # a set without its tag (a suspended portal): not known
        else:
            dropped = max(0, taken.total_rows - taken.rows)
        # Positional (format, data, rows, rows_dropped, bytes_dropped): once per statement.
        return CapturedResult(
            FORMAT, bytes(taken.data), taken.rows, dropped, taken.seen_row_bytes - taken.row_bytes
        )


def _count(data: bytes | bytearray, start: int, stop: int) -> int:
    n = 0
    unpack = _LEN.unpack_from
    while start < stop:
        start += unpack(data, start + 1)[0] + 1
        n += 1
    return n


def for_session(gate: Any, resource_name: str) -> SessionCapture | None:
    """The capture for a session on `resource_name`, None when its results are not kept."""
    manifest = gate.manifest
    resource = manifest.resource(resource_name)
    caps = manifest.audit.capture_for(resource) if resource is not None else None
    return None if caps is None else SessionCapture(caps)


def scrub_params(
    params: tuple[str | None, ...] | None, scrub: Callable[[str], tuple[str, int]] | None
) -> tuple[str | None, ...] | None:
    """Bind values as recorded: secrets always masked, and what the session's masking finds."""
    if not params:
        return params
    out: list[str | None] = []
    changed = False
    for p in params:
        if p is not None:
            q = _scrub_secrets(p) if len(p) >= _SHORTEST_SECRET else p
            if scrub is not None:
                q = scrub(q)[0]
            if q != p:
                changed = True
                p = q
        out.append(p)
    return tuple(out) if changed else params


def _scrub_secrets(text: str) -> str:
    found = det.scan(text, _SECRETS)
    if not found:
        return text
    parts: list[str] = []
    pos = 0
    for start, end, name in found:
        parts.append(text[pos:start])
        parts.append(f"[{name} redacted]")
        pos = end
    parts.append(text[pos:])
    return "".join(parts)
