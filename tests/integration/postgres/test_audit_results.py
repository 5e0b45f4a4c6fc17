"""Result capture: `lockgate replay` shows what a real client received, after masking, capped."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from tests.conftest import free_port
from tests.integration.postgres.conftest import (
    RunningGateway,
    base_manifest,
    local_resource,
    start_gateway,
)

pytestmark = pytest.mark.pg

# A JWT-shaped parameter: a secret that must never reach the audit as it is.
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"


@pytest.fixture(scope="module")
def captured(
    tmp_path_factory: pytest.TempPathFactory, pg_server: tuple[str, int, str], it_database: str
) -> Iterator[RunningGateway]:
    host, port, user = pg_server
    with psycopg.connect(host=host, port=port, user=user, dbname=it_database) as c:
        c.execute("CREATE TABLE people (id int, email text, note text)")
        c.execute(
            "INSERT INTO people SELECT i, 'user' || i || '@example.com', 'line ' || i "
            "FROM generate_series(1, 10) i"
        )
    capped = local_resource("capped", it_database, host, port, user)
    capped["capture"] = {"rows": 3, "bytes": "full"}
    full = local_resource("full", it_database, host, port, user)
    full["capture"] = {"rows": "full", "bytes": "full"}
    off = local_resource("nocapture", it_database, host, port, user)
    off["capture"] = "off"
    manifest = base_manifest(free_port(), [capped, full, off])
    manifest["masking"] = {
        "rules": [
            {"name": "pii", "resources": ["full"], "groups": ["it"], "detect": ["email"]},
        ]
    }
    gw = start_gateway(tmp_path_factory.mktemp("capture"), manifest)
    yield gw
    gw.stop()


def _replay(gw: RunningGateway, subject: str) -> dict[str, Any]:
    """The replay of `subject`'s one session, once it ended (bounded wait)."""
    for _ in range(200):  # bounded (20 s): the audit is ingested asynchronously
        listed = json.loads(gw.cli("audit", "sessions", "--subject", subject, "--json").stdout)
        if listed and not listed[0]["live"]:
            out = gw.cli("replay", listed[0]["id"], "--json").stdout
            return dict(json.loads(out))
        time.sleep(0.1)
    raise AssertionError(f"no ended session of {subject}")


def _by_text(replayed: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["text"]: c for c in replayed["commands"]}


def test_psql_result_is_replayed_as_received_up_to_the_row_cap(captured: RunningGateway) -> None:
    tok = captured.token("cap-psql")
    env = {**os.environ, "PGPASSWORD": tok, "PGSSLMODE": "require"}
    sql = "select id, note from people order by id; select 'a' as x, null as y"
    psql = ["psql", "-X", "-A", "-h", "127.0.0.1", "-p", str(captured.port), "-U", "alice"]
    out = subprocess.run(
        [*psql, "-d", "capped", "-c", sql],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    assert "10|line 10" in out
    cmd = _by_text(_replay(captured, "cap-psql"))[sql]
    first, second = cmd["result"]
    assert first["columns"] == ["id", "note"]
    assert first["rows"] == [["1", "line 1"], ["2", "line 2"], ["3", "line 3"]]
    # The cap is per statement: the second result set had no room left.
    assert second["rows"] == []
    assert (cmd["result_rows"], cmd["result_rows_dropped"]) == (3, 8)
    assert cmd["result_bytes_dropped"] > 0

    text = captured.cli("replay", cmd["session_id"]).stdout
    assert "line 3" in text and "line 4" not in text
    assert "8 row(s)" in text and "not kept" in text


def test_extended_protocol_masked_result_and_scrubbed_params(captured: RunningGateway) -> None:
    tok = captured.token("cap-ext")
    with psycopg.connect(captured.dsn(tok, dbname="full"), autocommit=True) as conn:
        got = conn.execute(
            "select id, email, %s::text as token from people where id <= %s order by id",
            (JWT, "4"),
        ).fetchall()
        # Prepared and executed again: the row description comes from the earlier Describe.
        for _ in range(6):
            again = conn.execute(
                "select email from people where id = %s", ("2",), prepare=True
            ).fetchall()
    assert len(got) == 4 and all(r[1] == "<email>" for r in got)  # masked for the client
    assert again == [("<email>",)]

    cmds = _replay(captured, "cap-ext")["commands"]
    first = cmds[0]
    assert JWT not in json.dumps(first["params"])
    assert first["params"][1] == "4"
    (rs,) = first["result"]
    assert rs["columns"] == ["id", "email", "token"]
    assert [r[0] for r in rs["rows"]] == ["1", "2", "3", "4"]
    # The rows are what the client received: masked, exactly.
    assert [r[1] for r in rs["rows"]] == [r[1] for r in got]
    assert "user1@example.com" not in json.dumps(cmds)
    assert (first["result_rows"], first["result_rows_dropped"]) == (4, 0)
    prepared = [c for c in cmds if c["text"].startswith("select email")]
    assert len(prepared) == 6
    for c in prepared:
        assert c["result"][0]["columns"] == ["email"]
        assert c["result"][0]["rows"] == [[again[0][0]]]


def test_capture_off_and_statements_without_rows(captured: RunningGateway) -> None:
    tok = captured.token("cap-off")
    with psycopg.connect(captured.dsn(tok, dbname="nocapture"), autocommit=True) as conn:
        assert conn.execute("select count(*) from people").fetchone() == (10,)
    with psycopg.connect(captured.dsn(tok, dbname="capped"), autocommit=True) as conn:
        conn.execute("create temp table t (x int)")
    for _ in range(200):
        listed = json.loads(
            captured.cli("audit", "sessions", "--subject", "cap-off", "--json").stdout
        )
        if len(listed) == 2 and not any(s["live"] for s in listed):
            break
        time.sleep(0.1)
    assert len(listed) == 2
    for s in listed:
        replayed = json.loads(captured.cli("replay", s["id"], "--json").stdout)
        assert replayed["commands"]
        for c in replayed["commands"]:
            assert c["result"] is None and c["result_sha256"] is None


def test_verify_covers_captured_results(captured: RunningGateway) -> None:
    tok = captured.token("cap-verify")
    with psycopg.connect(captured.dsn(tok, dbname="capped"), autocommit=True) as conn:
        conn.execute("select 'evidence' as what").fetchall()
    cmd = _replay(captured, "cap-verify")["commands"][0]
    assert cmd["result"][0]["rows"] == [["evidence"]]
    assert captured.cli("audit", "verify").returncode == 0

    db = sqlite3.connect(captured.dir / "state" / "lockgate.db")
    try:
        import zlib

        forged = zlib.compress(
            bytes.fromhex("540000001b000177686174000000000000000000001900ffffffffffff0000")
            + b"D\x00\x00\x00\x10\x00\x01\x00\x00\x00\x06forged"
        )
        with db:
            db.execute(
                "UPDATE command_results SET data = ? WHERE session_id = ? AND seq = ?",
                (forged, cmd["session_id"], cmd["seq"]),
            )
        done = captured.cli("audit", "verify", check=False)
        assert done.returncode == 1
        assert "captured result(s) altered" in done.stdout
        assert cmd["session_id"] in done.stdout
    finally:
        db.close()
