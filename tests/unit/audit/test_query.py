"""Reading the audit store: filters, ordering, id prefixes, a session's statements."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from audit_builders import make_command, make_session
from sqlalchemy.engine import Engine

from lockgate.audit.query import AmbiguousSessionId, get_session, list_refusals, list_sessions
from lockgate.audit.recorder import AuditRecorder
from lockgate.model import ClientInfo, ResultSummary, SessionEnd

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
async def populated(recorder: AuditRecorder, engine: Engine) -> Engine:
    await recorder.session_started(make_session("aaa111", subject="alice", started_at=T0))
    await recorder.session_started(
        make_session(
            "aaa222", subject="bob", resource="billing", started_at=T0 + timedelta(hours=1)
        )
    )
    await recorder.session_started(
        make_session("bbb333", subject="alice", started_at=T0 + timedelta(hours=2))
    )
    for seq in (2, 1, 3):
        await recorder.command_started(make_command("aaa111", seq, f"SELECT {seq}"))
    recorder.command_finished("aaa111", 1, ResultSummary(rows=1, status="SELECT 1"))
    recorder.session_ended("aaa111", SessionEnd.CLIENT_TERMINATED, 300, 4000)
    client = ClientInfo("192.0.2.9:1234", "postgres")
    await recorder.connection_refused(client, "shop", None, "28P01", "first")
    await recorder.connection_refused(client, "shop", "eve", "42501", "second")
    await recorder.close()
    return engine


def test_list_sessions_newest_first_with_counts(populated: Engine) -> None:
    found = list_sessions(populated)
    assert [s["id"] for s in found] == ["bbb333", "aaa222", "aaa111"]
    first = found[2]
    assert first["statements"] == 3
    assert first["live"] is False
    assert first["end_reason"] == "client_terminated"
    assert first["duration_ms"] is not None and first["duration_ms"] > 0
    assert (first["bytes_from_client"], first["bytes_to_client"]) == (300, 4000)
    assert first["groups"] == ["dba", "eng"]
    assert found[0]["live"] is True and found[0]["duration_ms"] is None
    assert found[0]["statements"] == 0


def test_list_sessions_filters(populated: Engine) -> None:
    assert [s["id"] for s in list_sessions(populated, subject="alice")] == ["bbb333", "aaa111"]
    assert [s["id"] for s in list_sessions(populated, resource="billing")] == ["aaa222"]
    since = T0 + timedelta(minutes=30)
    assert [s["id"] for s in list_sessions(populated, since=since)] == ["bbb333", "aaa222"]
    until = T0 + timedelta(hours=1)
    assert [s["id"] for s in list_sessions(populated, until=until)] == ["aaa111"]
    assert [s["id"] for s in list_sessions(populated, limit=1)] == ["bbb333"]
    assert list_sessions(populated, subject="nobody") == []


def test_get_session_by_id_and_prefix(populated: Engine) -> None:
    full = get_session(populated, "aaa111")
    assert full is not None
    assert [c["seq"] for c in full["commands"]] == [1, 2, 3]
    assert full["commands"][0]["status"] == "SELECT 1"
    assert full["commands"][0]["params"] == ["42"]
    assert full["commands"][0]["tables"] == ["public.customers"]
    assert full["commands"][1]["finished_at"] is None
    by_prefix = get_session(populated, "bbb")
    assert by_prefix is not None and by_prefix["id"] == "bbb333"
    assert by_prefix["commands"] == []
    assert get_session(populated, "zzz") is None
    assert get_session(populated, "aaa_") is None  # LIKE wildcards are taken literally


def test_ambiguous_prefix_names_the_candidates(populated: Engine) -> None:
    with pytest.raises(AmbiguousSessionId) as err:
        get_session(populated, "aaa")
    assert "aaa111" in err.value.message and "aaa222" in err.value.message
    assert "more characters" in err.value.hint


def test_list_refusals_newest_first(populated: Engine) -> None:
    found = list_refusals(populated)
    assert [r["reason"] for r in found] == ["second", "first"]
    assert found[0]["subject"] == "eve" and found[1]["subject"] is None
    assert found[0]["at"].tzinfo is UTC
    assert len(list_refusals(populated, limit=1)) == 1


def test_empty_store(engine: Engine) -> None:
    assert list_sessions(engine) == []
    assert list_refusals(engine) == []
    assert get_session(engine, "x") is None
