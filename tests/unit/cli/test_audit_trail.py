"""`lockgate audit verify | search | purge | hold | release | holds` and `lockgate replay`."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_audit import ENDED_ID, LIVE_ID, create_store, record

from lockgate.audit import journal
from lockgate.cli import main


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def manifest(tmp_path: Path) -> Path:
    """A manifest whose state folder holds a store recorded through the journal, plus a
    session that ended 400 days ago (journaled by a stopped gateway)."""
    state = tmp_path / "state"
    state.mkdir()
    url = create_store(state / "lockgate.db")
    asyncio.run(record(url))
    old = time.time() - 400 * 86400
    w = journal.JournalWriter(state / "journal")
    w.append(
        journal.encode(
            [
                [
                    "S",
                    "0ld5e551-0n",
                    "carol",
                    ["it"],
                    "human",
                    "lockgate",
                    None,
                    "shop",
                    "postgres",
                    "10.0.0.9:1",
                    "carol",
                    "psql",
                    old,
                ],
                [
                    "C",
                    "0ld5e551-0n",
                    1,
                    old + 1,
                    "SELECT secret FROM vault",
                    "select",
                    [],
                    None,
                    "allow",
                    "",
                    "",
                ],
                ["F", old + 2, 1, "SELECT 1", None, None, 10, 1.0, "0ld5e551-0n", 1],
                ["E", old + 3, "client_terminated", 5, 6, None, "0ld5e551-0n"],
            ]
        )
    )
    w.close()
    path = tmp_path / "lockgate.yaml"
    path.write_text(
        "state:\n  url: sqlite:///state/lockgate.db\n  dir: state\n"
        "audit:\n  retention: 365d\n  resource_retention:\n    billing: 30d\n"
    )
    return path


def test_verify_ok_then_names_an_edit(manifest: Path) -> None:
    code, out, err = run("audit", "verify", "-c", str(manifest))
    assert code == 0, out + err
    # 3 session starts, 2 ends, 1 refusal; 4 commands, 3 of them chained with their outcomes.
    assert "everything verifies: 1 chain(s), 10 event(s)" in out
    code, out, _ = run("audit", "verify", "-c", str(manifest), "--json")
    data = json.loads(out)
    assert data["ok"] and data["events"] == 10 and data["chains"][0]["head_file_checked"]
    db = manifest.parent / "state" / "lockgate.db"
    import sqlite3

    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE commands SET text = 'SELECT 1' WHERE seq = 2")
    code, out, _ = run("audit", "verify", "-c", str(manifest))
    assert code == 1
    assert "FAILED" in out and "altered: command #2 of session " + ENDED_ID in out
    code, out, _ = run("audit", "verify", "--store", f"sqlite:///{db}", "--json")
    assert code == 1 and json.loads(out)["chains"][0]["finding"]["problem"] == "altered"


def test_search(manifest: Path) -> None:
    code, out, err = run("audit", "search", "customers", "-c", str(manifest))
    assert code == 0, err
    assert "alice" in out and "SELECT email FROM customers" in out and "DROP TABLE" in out
    assert "2 statement(s)" in out
    code, out, _ = run("audit", "search", "-c", str(manifest), "--decision", "deny", "--json")
    (only,) = json.loads(out)
    assert only["rule"] == "no-drop" and only["subject"] == "alice"
    code, out, _ = run("audit", "search", "vault", "--identity", "alice", "-c", str(manifest))
    assert code == 0 and "no statements match" in out


def test_purge_hold_release(manifest: Path) -> None:
    args = ("-c", str(manifest))
    code, out, err = run("audit", "purge", "--dry-run", *args)
    assert code == 0, err
    assert "would delete 1 session(s) with 1 statement(s)" in out
    code, out, err = run("audit", "hold", "0ld5", "--reason", "case 12", *args)
    assert code == 0, err and "0ld5e551-0n is under legal hold" in out
    code, out, _ = run("audit", "holds", *args)
    assert "0ld5e551-0n" in out and "case 12" in out
    code, out, _ = run("audit", "purge", *args)
    assert code == 0 and "deleted 0 session(s)" in out and "kept 1 expired session(s)" in out
    code, out, _ = run("audit", "release", "0ld5", *args)
    assert code == 0 and "no longer under legal hold" in out
    code, out, _ = run("audit", "purge", "--json", *args)
    assert json.loads(out)["sessions"] == 1 and json.loads(out)["purge_checkpoints"] == 1
    code, out, _ = run("audit", "verify", *args)
    # Its start, its statement chained with its outcome, its end.
    assert code == 0 and "3 purged" in out and "everything verifies" in out
    code, _, err = run("audit", "release", "0ld5", *args)
    assert code == 1 and "lockgate audit holds" in err


def test_purge_without_retention_says_what_to_set(tmp_path: Path) -> None:
    path = tmp_path / "lockgate.yaml"
    path.write_text("state:\n  url: sqlite:///state/lockgate.db\n  dir: state\n")
    (tmp_path / "state").mkdir()
    create_store(tmp_path / "state" / "lockgate.db")
    code, _, err = run("audit", "purge", "-c", str(path))
    assert code == 1 and "audit.retention" in err


def test_replay(manifest: Path) -> None:
    code, out, err = run("replay", "3f2a", "-c", str(manifest))
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == f"session {ENDED_ID}"
    order = [i for i, line in enumerate(lines) if line.strip().startswith(("#1 ", "#2 ", "#3 "))]
    assert len(order) == 3 and order == sorted(order)
    assert "params: $1='42'" in out and "deny by no-drop" in out
    assert "error 22012 division by zero" in out and "as the client received them" in out
    code, out, _ = run("replay", LIVE_ID, "-c", str(manifest), "--json")
    assert json.loads(out)["commands"] == []
    code, _, err = run("replay", "ffff", "-c", str(manifest))
    assert code == 1 and "no session" in err
