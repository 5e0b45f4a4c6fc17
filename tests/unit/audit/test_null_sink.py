"""The benchmark-only null recorder (LOCKGATE_AUDIT_NULL=1) is refused outside a benchmark."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from audit_builders import journaled, make_command, make_session
from sqlalchemy.engine import Engine

from lockgate.audit import recorder as audit_recorder
from lockgate.audit.recorder import NULL_SINK_ENV, AuditRecorder, check_null_sink
from lockgate.errors import AuditUnavailable


@pytest.fixture
def null_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv(NULL_SINK_ENV, "1")
    yield
    monkeypatch.delenv(NULL_SINK_ENV)
    check_null_sink(False)
    assert not audit_recorder._null_sink_allowed


def test_serve_refuses_the_variable_without_the_manifest_flag(null_env: None) -> None:
    with pytest.raises(AuditUnavailable, match="benchmark-only"):
        check_null_sink(False)


async def test_a_recorder_refuses_to_start_unrecorded_outside_a_benchmark(
    null_env: None, engine: Engine, journal_dir: Path
) -> None:
    rec = AuditRecorder(engine, journal_dir, ingest=False)
    with pytest.raises(AuditUnavailable, match="refusing to run unrecorded"):
        await rec.start()


async def test_benchmark_manifest_and_variable_record_nothing(
    null_env: None, engine: Engine, journal_dir: Path
) -> None:
    check_null_sink(True)
    rec = AuditRecorder(engine, journal_dir, ingest=False)
    await rec.start()
    await rec.session_started(make_session("s-1"))
    assert rec.commands_started([make_command("s-1", 1)]) is None
    await rec.close()
    assert journaled(journal_dir) == []


async def test_without_the_variable_the_flag_changes_nothing(
    engine: Engine, journal_dir: Path
) -> None:
    check_null_sink(True)
    rec = AuditRecorder(engine, journal_dir, ingest=False)
    await rec.start()
    await rec.session_started(make_session("s-1"))
    await rec.close()
    assert [r[0] for r in journaled(journal_dir)] == ["S"]
