"""The shipped audit event: one JSON object per chained event (schema in docs/audit-events.md).

Built by the ingester from the rows it has just committed, so what a sink receives is what
the store holds, with the event's place in the hash chain (`chain`, `chain_seq`, `hash`) that
`lockgate audit verify` checks.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from lockgate.audit.chain import EVENT_FIELDS, OPTIONAL_FIELDS, OUTCOMES, masked_pairs, ts_text

# 3: a command chained with its outcome is one `command` event holding both.
SCHEMA_VERSION = 3

EVENT_TYPES: dict[str, str] = {
    "S": "session.start",
    "E": "session.end",
    "C": "command",
    "F": "command.outcome",
    "X": "command",
    "R": "connection.refused",
}
# The field that says when each event happened, copied into `time`.
_TIME_FIELD = {
    "S": "started_at",
    "E": "ended_at",
    "C": "started_at",
    "F": "finished_at",
    "X": "started_at",
    "R": "at",
}
_TIMES = frozenset({"started_at", "ended_at", "finished_at", "at"})
# Stored as JSON text; shipped as JSON values.
_JSON_TEXT = frozenset({"groups", "tables", "params"})
# Store column -> shipped name, where the column name would be unclear outside the store.
_RENAMED = {"id": "session_id"}

Event = dict[str, Any]


def iso(value: Any) -> str | None:
    """A store timestamp as RFC 3339 UTC (`2026-11-23T09:15:48.123456Z`)."""
    text = ts_text(value)
    return None if text is None else text.replace(" ", "T") + "Z"


def build(chain: str, kind: str, seq: int, hash_: bytes, row: Mapping[str, Any]) -> Event:
    """The shipped form of one chained event.

    A command chained with its outcome (`X`, the usual case) ships as one `command` event
    that also holds the outcome's fields; a `command.outcome` event is shipped only for a
    command that was chained before its outcome was known.
    """
    event: Event = {
        "schema_version": SCHEMA_VERSION,
        "type": EVENT_TYPES[kind],
        "time": iso(row[_TIME_FIELD[kind]]),
        "chain": chain,
        "chain_seq": seq,
        "hash": hash_.hex(),
    }
    for name in EVENT_FIELDS[kind]:
        value = row[name]
        if name in _TIMES:
            value = iso(value)
        elif name in _JSON_TEXT and isinstance(value, str | bytes):
            value = orjson.loads(value)
        elif name == "duration_ms" and value is not None:
            value = float(value)
        if kind == "R" and name == "id":
            event["refusal_id"] = value
            continue
        event[_RENAMED.get(name, name)] = value
    optional = OPTIONAL_FIELDS.get(kind)
    if optional is not None and row.get(optional[0]) is not None:
        for name in optional:
            event[name] = row.get(name)
    if kind in OUTCOMES and row.get("masked_cells") is not None:
        event["masked_cells"] = row["masked_cells"]
        event["masked_by_rule"] = dict(masked_pairs(row.get("masked_by_rule")))
    return event


def severity(event: Mapping[str, Any]) -> int:
    """The syslog severity of an event: warning for refusals and denials, else info."""
    if event["type"] == "connection.refused" or event.get("decision") in ("deny", "review"):
        return 4
    if event["type"] in ("command", "command.outcome") and event.get("error_code"):
        return 5
    return 6
