"""`lockgate audit`: sessions, show and refusals as tables and JSON, friendly when empty.

Stores are filled through the real recorder (journal, then ingester); the manifest case
also shows the CLI ingesting what a stopped gateway left in its journal."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from lockgate.audit.recorder import AuditRecorder
from lockgate.audit.tables import commands, journal_positions, refusals, sessions
from lockgate.cli import main
from lockgate.model import (
    ClientInfo,
    Command,
    Decision,
    DecisionKind,
    Principal,
    PrincipalKind,
    ResultSummary,
    Session,
    SessionEnd,
)
from lockgate.store import metadata, open_engine

ENDED_ID = "3f2a9c1e-0000-4000-8000-000000000001"
LIVE_ID = "77b0d4aa-0000-4000-8000-000000000002"


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["audit", *args])
    return result.exit_code, result.stdout, result.stderr


def create_store(db: Path) -> str:
    url = f"sqlite:///{db}"
    engine = open_engine(url, create=False)
    metadata.create_all(engine, tables=[sessions, commands, refusals, journal_positions])
    engine.dispose()
    return url


async def record(url: str, *, ingest: bool = True) -> None:
    """Record two sessions; the journal is next to the SQLite file, as the gateway keeps it."""
    engine = open_engine(url, create=False)
    rec = AuditRecorder(engine, ingest=ingest)
    await rec.start()
    alice = Principal("alice", frozenset({"dba"}), PrincipalKind.HUMAN, token_id="t1")
    client = ClientInfo("10.0.0.5:51234", "postgres", "alice", "psql")
    started = datetime.now(UTC) - timedelta(minutes=5)
    await rec.session_started(Session(ENDED_ID, alice, "shop", client, started))
    first = Command(
        ENDED_ID, 1, "SELECT email\nFROM customers WHERE id = $1", "select", (), ("42",)
    )
    assert rec.commands_started([first]) is None
    rec.command_finished(
        ENDED_ID, 1, ResultSummary(rows=1, status="SELECT 1", bytes_out=80, duration_ms=2.5)
    )
    deny = Decision(DecisionKind.DENY, rule="no-drop", reason="drops need a review")
    await rec.command_started(Command(ENDED_ID, 2, "DROP TABLE customers", "drop", (), None, deny))
    await rec.command_started(Command(ENDED_ID, 3, "SELECT 1/0", "select"))
    rec.command_finished(
        ENDED_ID, 3, ResultSummary(error_code="22012", error_message="division by zero")
    )
    rec.session_ended(ENDED_ID, SessionEnd.CLIENT_TERMINATED, 1234, 56789)
    bot = Principal("ci-bot", frozenset(), PrincipalKind.MACHINE)
    await rec.session_started(Session(LIVE_ID, bot, "billing", client, datetime.now(UTC)))
    await rec.connection_refused(
        ClientInfo("192.0.2.7:40000", "postgres"), "shop", None, "28P01", "the token has expired"
    )
    await rec.close()
    engine.dispose()


@pytest.fixture
def store(tmp_path: Path) -> str:
    url = create_store(tmp_path / "lockgate.db")
    asyncio.run(record(url))
    return url


def test_sessions_table(store: str) -> None:
    code, out, _ = run("sessions", "--store", store)
    assert code == 0, out
    header, first, second = out.splitlines()[:3]
    for column in ("ID", "SUBJECT", "RESOURCE", "CLIENT", "STARTED", "DURATION", "STMTS", "ENDED"):
        assert column in header
    assert first.startswith("77b0d4aa ") and "ci-bot" in first and first.endswith("live")
    assert second.startswith("3f2a9c1e ") and "alice" in second and "shop" in second
    assert "10.0.0.5:51234" in second
    assert "1.2kB" in second and "56.8kB" in second
    assert second.endswith("client terminated")
    assert " 3 " in second  # statements
    assert "lockgate audit show ID" in out


def test_sessions_filters_and_json(store: str) -> None:
    code, out, _ = run("sessions", "--store", store, "--subject", "alice", "--json")
    assert code == 0
    data = json.loads(out)
    assert [s["id"] for s in data] == [ENDED_ID]
    assert data[0]["statements"] == 3 and data[0]["groups"] == ["dba"]
    assert datetime.fromisoformat(data[0]["started_at"]).tzinfo is not None
    code, out, _ = run("sessions", "--store", store, "--resource", "billing", "--json")
    assert [s["id"] for s in json.loads(out)] == [LIVE_ID]
    code, out, _ = run("sessions", "--store", store, "--since", "1m", "--json")
    assert [s["id"] for s in json.loads(out)] == [LIVE_ID]
    code, out, _ = run("sessions", "--store", store, "--since", "2000-01-01T00:00", "--limit", "1")
    assert code == 0 and "77b0d4aa" in out and "3f2a9c1e" not in out


def test_sessions_no_match_and_bad_since(store: str) -> None:
    code, out, _ = run("sessions", "--store", store, "--subject", "nobody")
    assert code == 0 and "no sessions match these filters" in out
    code, _, err = run("sessions", "--store", store, "--since", "yesterday")
    assert code != 0 and "expected a duration such as 30m" in err


def test_show_timeline(store: str) -> None:
    code, out, _ = run("show", "3f2a", "--store", store)
    assert code == 0, out
    assert f"session {ENDED_ID}" in out
    assert "alice (human; groups: dba" in out
    assert "shop via postgres from 10.0.0.5:51234 (user alice, app psql)" in out
    assert "client terminated" in out
    lines = out.splitlines()
    first = next(i for i, line in enumerate(lines) if line.strip().startswith("#1 "))
    assert "allow" in lines[first] and "1 row" in lines[first] and "2.5ms" in lines[first]
    assert lines[first + 1].strip() == "SELECT email"
    assert lines[first + 2].strip() == "FROM customers WHERE id = $1"
    assert lines[first + 3].strip() == "params: $1='42'"
    second = next(line for line in lines if line.strip().startswith("#2 "))
    assert "deny by no-drop" in second and "drop" in second and "not forwarded" in second
    assert "reason: drops need a review" in out
    third = next(line for line in lines if line.strip().startswith("#3 "))
    assert "error 22012 division by zero" in third


def test_show_json(store: str) -> None:
    code, out, _ = run("show", ENDED_ID, "--store", store, "--json")
    assert code == 0
    data = json.loads(out)
    assert [c["seq"] for c in data["commands"]] == [1, 2, 3]
    assert data["commands"][0]["params"] == ["42"]
    assert data["commands"][1]["decision"] == "deny"


def test_show_live_session_and_errors(store: str) -> None:
    code, out, _ = run("show", "77b0", "--store", store)
    assert code == 0 and "live (still connected)" in out and "no statements recorded" in out
    code, _, err = run("show", "ffff", "--store", store)
    assert code == 1 and "no session 'ffff'" in err and "lockgate audit sessions" in err


def test_show_ambiguous_prefix(tmp_path: Path) -> None:
    url = create_store(tmp_path / "lockgate.db")

    async def two() -> None:
        engine = open_engine(url, create=False)
        rec = AuditRecorder(engine)
        await rec.start()
        for sid in ("abc-1", "abc-2"):
            await rec.session_started(
                Session(
                    sid, Principal("x"), "shop", ClientInfo("h:1", "postgres"), datetime.now(UTC)
                )
            )
        await rec.close()
        engine.dispose()

    asyncio.run(two())
    code, _, err = run("show", "abc", "--store", url)
    assert code == 1 and "abc-1" in err and "abc-2" in err and "more characters" in err


def test_refusals(store: str) -> None:
    code, out, _ = run("refusals", "--store", store)
    assert code == 0
    assert "192.0.2.7:40000" in out and "28P01" in out and "the token has expired" in out
    code, out, _ = run("refusals", "--store", store, "--json")
    (only,) = json.loads(out)
    assert only["code"] == "28P01" and only["subject"] is None


def test_empty_store_hints(tmp_path: Path) -> None:
    url = create_store(tmp_path / "lockgate.db")
    code, out, _ = run("sessions", "--store", url)
    assert (
        code == 0 and out.strip() == "no sessions recorded yet; connect through the gateway first"
    )
    code, out, _ = run("refusals", "--store", url)
    assert code == 0 and "no refused connections recorded" in out
    code, out, _ = run("sessions", "--store", url, "--json")
    assert json.loads(out) == []


def test_missing_store_says_what_to_do(tmp_path: Path) -> None:
    code, _, err = run("sessions", "--store", f"sqlite:///{tmp_path / 'nope.db'}")
    assert code == 1 and "no audit store at" in err and "lockgate serve" in err
    assert not (tmp_path / "nope.db").exists()


def test_store_from_the_manifest_with_a_stopped_gateways_journal(tmp_path: Path) -> None:
    (tmp_path / "state").mkdir()
    url = create_store(tmp_path / "state" / "lockgate.db")
    asyncio.run(record(url, ingest=False))  # a gateway stopped before its ingester ran
    journal = tmp_path / "state" / "journal"
    assert list(journal.glob("*.jnl"))
    code, out, _ = run("sessions", "--store", url)
    assert code == 0 and "no sessions recorded yet" in out  # --store reads the store only
    manifest = tmp_path / "lockgate.yaml"
    manifest.write_text("state:\n  url: sqlite:///state/lockgate.db\n  dir: state\n")
    code, out, err = run("sessions", "-c", str(manifest))
    assert code == 0, err
    assert "3f2a9c1e" in out and "77b0d4aa" in out
    assert list(journal.glob("*.jnl")) == []
    code, out, err = run("show", "3f2a", "-c", str(manifest))
    assert code == 0, err
    assert "3 statement(s)" in out and "error 22012 division by zero" in out
