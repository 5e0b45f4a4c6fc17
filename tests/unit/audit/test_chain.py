"""The ingester's fast encodings give exactly what `verify` recomputes from the stored rows."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from lockgate.audit.chain import EVENT_FIELDS, EventLayout, HeadFile, event_digest, read_head
from lockgate.audit.writer import StoreWriter
from lockgate.store import open_engine

COMMAND_ROW: dict[str, Any] = {
    "session_id": "s-1",
    "seq": 7,
    "started_at": "2026-11-23 14:49:22.123456",
    "text": "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
    "kind": "select",
    "tables": '["pgbench_accounts"]',
    "params": '["42"]',
    "decision": "allow",
    "rule": "read-only",
    "reason": "",
    "finished_at": "2026-11-23 14:49:22.125000",
    "rows": 1,
    "status": "SELECT 1",
    "error_code": None,
    "error_message": None,
    "bytes_out": 71,
    "duration_ms": 0.12,
    "result_sha256": None,
    "result_rows": None,
    "result_rows_dropped": None,
    "result_bytes_dropped": None,
    "masked_cells": None,
    "masked_by_rule": None,
}

VARIANTS: list[dict[str, Any]] = [
    {},
    {"result_sha256": "ab" * 32, "result_rows": 1, "result_rows_dropped": 0},
    {"result_rows_dropped": None, "result_sha256": "cd" * 32, "result_bytes_dropped": 9},
    {"masked_cells": 3, "masked_by_rule": '{"pii":2,"cards":1}'},
    {"result_sha256": "ef" * 32, "masked_cells": 1, "masked_by_rule": '{"pii":1}'},
    {"params": None, "error_code": "42P01", "error_message": "no such table", "rows": None},
    # PostgreSQL hands the writer datetimes, and duration as an int may come from JSON.
    {
        "started_at": datetime(2026, 11, 23, 14, 49, 22, 123456, tzinfo=UTC),
        "finished_at": datetime(2026, 11, 23, 14, 49, 23, tzinfo=UTC),
        "duration_ms": 3,
    },
]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("kind", ["C", "F"])
def test_a_command_row_tuple_digests_like_its_mapping(kind: str, variant: dict[str, Any]) -> None:
    row = {**COMMAND_ROW, **variant}
    columns = list(row)
    random.Random(kind).shuffle(columns)  # any column order
    values = tuple(row[name] for name in columns)
    assert EventLayout(kind, columns).digest(values) == event_digest(kind, row)


def test_a_session_end_tuple_digests_like_its_mapping() -> None:
    row = {name: f"v-{name}" for name in EVENT_FIELDS["E"]}
    row["ended_at"] = "2026-11-23 14:49:22.000001"
    row["bytes_to_client"] = 5
    columns = [*EVENT_FIELDS["E"], "extra"]
    values = (*(row[name] for name in EVENT_FIELDS["E"]), "ignored")
    assert EventLayout("E", columns).digest(values) == event_digest("E", row)
    assert EventLayout("E", columns).digest(values) != event_digest("E", {**row, "error": "x"})


def test_an_outcome_layout_without_the_result_columns_is_refused() -> None:
    with pytest.raises(ValueError, match="result_sha256"):
        EventLayout("F", [*EVENT_FIELDS["F"]])


def test_journal_timestamps_read_exactly_as_datetime_formats_them(tmp_path: Path) -> None:
    engine = open_engine(f"sqlite:///{tmp_path / 'state.db'}")
    writer = StoreWriter(engine)
    rnd = random.Random(9)
    moments = [rnd.uniform(0, 4e9) for _ in range(20_000)]
    # Halves of a microsecond (rounded to even), fractions that round up to the next second,
    # whole seconds, and the same second twice in a row (the cached part).
    moments += [1.7e9 + k / 1e6 + 0.5e-6 for k in range(2_000)]
    moments += [1.7e9 + k + 0.9999996 for k in range(100)] + [0.0, 1.0, 1.7e9, 1.7e9 + 0.25]
    for epoch in moments:
        expected = datetime.fromtimestamp(epoch, UTC).isoformat(" ", "microseconds")[:-6]
        assert writer.timestamp(epoch) == expected, epoch
    engine.dispose()


def test_a_layout_converts_what_needs_it_like_event_digest() -> None:
    # An integral duration is encoded as a float; a datetime as the store's text.
    row = {
        **COMMAND_ROW,
        "duration_ms": 3,
        "finished_at": datetime(2026, 11, 23, 14, 49, 22, 125000, tzinfo=UTC),
    }
    columns = list(COMMAND_ROW)
    digest = EventLayout("X", columns).digest(tuple(row[name] for name in columns))
    assert digest == event_digest("X", row)
    assert digest == event_digest("X", {**COMMAND_ROW, "duration_ms": 3.0})


def test_the_head_file_is_rewritten_in_place_and_anew_when_replaced(tmp_path: Path) -> None:
    path = tmp_path / "head.json"
    head = HeadFile(path)
    head.write("c" * 16, 10**18, b"\x01" * 32)
    head.write("c" * 16, 7, b"\x02" * 32)
    assert read_head(path) == {"chain": "c" * 16, "seq": 7, "hash": "02" * 32}
    assert path.stat().st_size == HeadFile.SIZE
    path.unlink()  # e.g. a state folder restored from a backup
    head.write("c" * 16, 8, b"\x03" * 32)
    assert read_head(path) == {"chain": "c" * 16, "seq": 8, "hash": "03" * 32}
    head.write("c" * 16, 9, b"\x04" * 32)  # in place, into the new file
    assert read_head(path) == {"chain": "c" * 16, "seq": 9, "hash": "04" * 32}
    head.close()
