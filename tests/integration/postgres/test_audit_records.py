"""What a real client session leaves in the audit: statements, parameters, rows, errors, the end."""

from __future__ import annotations

import json
import os
import secrets
import socket
import time
from typing import Any

import psycopg
import pytest
from psycopg import errors
from tests.integration.postgres.conftest import RunningGateway

pytestmark = pytest.mark.pg


def _ended_session(gateway: RunningGateway, subject: str) -> dict[str, Any]:
    """The one session of `subject`, once the audit shows it ended (bounded wait)."""
    for _ in range(200):  # bounded (20 s): the audit is ingested asynchronously
        out = gateway.cli("audit", "sessions", "--subject", subject, "--json").stdout
        found: list[dict[str, Any]] = json.loads(out)
        if found and not found[0]["live"]:
            assert len(found) == 1, found
            return found[0]
        time.sleep(0.1)
    raise AssertionError(f"no ended session of {subject} in the audit")


def test_session_statements_params_rows_errors_and_end(gateway: RunningGateway) -> None:
    subject = f"auditor-{secrets.token_hex(3)}"
    tok = gateway.token(subject)
    with psycopg.connect(gateway.dsn(tok), autocommit=True, application_name="audit-it") as conn:
        fd = os.dup(conn.pgconn.socket)
        with socket.socket(fileno=fd) as s:
            host, port = s.getsockname()[:2]
        assert (
            conn.execute("select 'simple' from generate_series(1, 3)").fetchall()
            == [("simple",)] * 3
        )
        # Strings go as text-format parameters (psycopg sends ints in binary, which the
        # audit shows as hex).
        got = conn.execute("select %s::int + %s::int, %s::text", ("20", "22", "p3")).fetchone()
        assert got == (42, "p3")
        with pytest.raises(errors.DivisionByZero):
            conn.execute("select 1/0")
        conn.execute("create table audit_copy (id int)")
        with conn.cursor().copy("copy audit_copy from stdin") as cp:
            for i in range(5):
                cp.write_row((i,))
        with conn.cursor().copy("copy audit_copy to stdout") as cp:
            copied = b"".join(bytes(b) for b in cp)
        assert copied == b"0\n1\n2\n3\n4\n"

    listed = _ended_session(gateway, subject)
    assert listed["subject"] == subject
    assert listed["resource"] == "itdb"
    assert listed["client_addr"] == f"{host}:{port}"
    assert listed["end_reason"] == "client_terminated"
    assert listed["statements"] == 6

    shown: dict[str, Any] = json.loads(gateway.cli("audit", "show", listed["id"], "--json").stdout)
    assert shown["application_name"] == "audit-it"
    assert shown["user_name"] == "alice"
    assert shown["groups"] == ["it"]
    assert shown["bytes_from_client"] > 0
    assert shown["bytes_to_client"] > len(copied)
    assert shown["error"] is None
    by_text = {c["text"]: c for c in shown["commands"]}
    assert [c["seq"] for c in shown["commands"]] == [1, 2, 3, 4, 5, 6]
    assert all(c["decision"] == "allow" and c["finished_at"] is not None for c in shown["commands"])

    simple = by_text["select 'simple' from generate_series(1, 3)"]
    assert (simple["rows"], simple["params"], simple["error_code"]) == (3, None, None)
    extended = by_text["select $1::int + $2::int, $3::text"]
    assert extended["params"] == ["20", "22", "p3"]
    assert extended["rows"] == 1
    failed = by_text["select 1/0"]
    assert failed["error_code"] == "22012"
    assert failed["error_message"] == "division by zero"
    assert by_text["copy audit_copy from stdin"]["rows"] == 5
    assert by_text["copy audit_copy to stdout"]["rows"] == 5
    assert by_text["copy audit_copy to stdout"]["bytes_out"] >= len(copied)
    assert by_text["create table audit_copy (id int)"]["error_code"] is None
    # Bytes per statement include the rows, not just the closing message.
    assert simple["bytes_out"] > 3 * len("simple")


def test_client_disconnect_without_terminate(gateway: RunningGateway) -> None:
    subject = f"vanisher-{secrets.token_hex(3)}"
    tok = gateway.token(subject)
    conn = psycopg.connect(gateway.dsn(tok), autocommit=True)
    conn.execute("select 1")
    # Closing the socket under libpq: the gateway sees the connection drop, no Terminate.
    with socket.socket(fileno=os.dup(conn.pgconn.socket)) as s:
        s.shutdown(socket.SHUT_RDWR)
    listed = _ended_session(gateway, subject)
    assert listed["end_reason"] == "client_disconnected"
    assert listed["statements"] == 1
    conn.close()


def test_pipelined_batch_records_each_statement_once(gateway: RunningGateway) -> None:
    subject = f"piper-{secrets.token_hex(3)}"
    tok = gateway.token(subject)
    with psycopg.connect(gateway.dsn(tok), autocommit=True) as conn:
        with pytest.raises(errors.DivisionByZero), conn.pipeline():
            conn.execute("select %s::int", ("1",))
            conn.execute("select 1 / %s::int", ("0",))
            conn.execute("select %s::int", ("3",))
        assert conn.execute("select %s::int", ("4",)).fetchone() == (4,)
        with pytest.raises(errors.SyntaxError):
            conn.execute("selec %s::int", ("5",))
    listed = _ended_session(gateway, subject)
    shown = json.loads(gateway.cli("audit", "show", listed["id"], "--json").stdout)
    cmds = shown["commands"]
    assert [(c["text"], c["params"]) for c in cmds] == [
        ("select $1::int", ["1"]),
        ("select 1 / $1::int", ["0"]),
        ("select $1::int", ["3"]),
        ("select $1::int", ["4"]),
        ("selec $1::int", ["5"]),
    ]
    assert [c["rows"] for c in cmds] == [1, None, None, 1, None]
    # Errors raised at Bind (1/$1 folded by the planner) and at Parse belong to the statement.
    assert cmds[4]["error_code"] == "42601"
    assert cmds[1]["error_code"] == "22012"
    assert cmds[2]["status"] == "skipped after an earlier error"
