"""Crash durability of the audit trail: `kill -9` of the gateway's workers and supervisor in
the middle of concurrent inserts loses no record of any statement the server executed, and
the audit chains still verify once the journal is caught up."""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import select
from tests.conftest import free_port
from tests.integration.postgres.conftest import (
    RunningGateway,
    base_manifest,
    local_resource,
    start_gateway,
)

from lockgate.audit.tables import commands
from lockgate.store import open_engine

pytestmark = pytest.mark.pg

CLIENTS = 4
INSERT = re.compile(r"INSERT INTO crash_rows \(id, client\) VALUES \((\d+), (\d+)\)")


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found += [int(p) for p in text]
    return found


def drive(gw: RunningGateway, token: str, client: int, stop: threading.Event) -> None:
    """Insert rows with increasing ids until the gateway dies (or `stop`)."""
    try:
        with psycopg.connect(gw.dsn(token), autocommit=True, connect_timeout=10) as conn:
            i = 0
            while not stop.is_set():
                i += 1
                row_id = client * 1_000_000 + i
                conn.execute(f"INSERT INTO crash_rows (id, client) VALUES ({row_id}, {client})")
    except psycopg.Error:
        return  # the gateway was killed


def test_kill_9_mid_load_loses_no_record_of_an_executed_insert(
    tmp_path: Path, pg_server: tuple[str, int, str], it_database: str
) -> None:
    host, port, user = pg_server
    server = {"host": host, "port": port, "user": user, "dbname": it_database}
    with psycopg.connect(**server, autocommit=True) as admin:
        admin.execute("DROP TABLE IF EXISTS crash_rows")
        admin.execute("CREATE TABLE crash_rows (id bigint PRIMARY KEY, client int NOT NULL)")
    manifest = base_manifest(free_port(), [local_resource("itdb", it_database, host, port, user)])
    manifest["listeners"][0]["workers"] = 2
    gw = start_gateway(tmp_path / "gw", manifest)
    try:
        token = gw.token("loader")
        stop = threading.Event()
        threads = [
            threading.Thread(target=drive, args=(gw, token, c, stop), daemon=True)
            for c in range(1, CLIENTS + 1)
        ]
        for t in threads:
            t.start()
        # Mid-load: every client has inserted rows (bounded wait, no timing assert).
        with psycopg.connect(**server, autocommit=True) as watch:
            for _ in range(600):
                per_client = dict(
                    watch.execute(
                        "SELECT client, count(*) FROM crash_rows GROUP BY client"
                    ).fetchall()
                )
                if len(per_client) == CLIENTS and min(per_client.values()) >= 50:
                    break
                time.sleep(0.05)
            else:
                raise AssertionError(f"the load did not start: {per_client}\n{gw.log()}")
        workers = children(gw.proc.pid)
        assert len(workers) == 2, workers
        for pid in workers:
            os.kill(pid, signal.SIGKILL)
        os.kill(gw.proc.pid, signal.SIGKILL)
        gw.proc.wait(timeout=10)
        stop.set()
        for t in threads:
            t.join(timeout=30)
    finally:
        gw.stop()

    # The journal left by the killed processes is caught up by any `lockgate audit` command.
    sessions = json.loads(gw.cli("audit", "sessions", "--subject", "loader", "--json").stdout)
    assert len(sessions) == CLIENTS
    engine = open_engine(f"sqlite:///{gw.dir / 'state' / 'lockgate.db'}", create=False)
    try:
        with engine.connect() as conn:
            texts = conn.execute(select(commands.c.text)).scalars().all()
    finally:
        engine.dispose()
    recorded = {int(m.group(1)) for t in texts if (m := INSERT.fullmatch(t))}
    with psycopg.connect(**server, autocommit=True) as admin:
        on_server = {r[0] for r in admin.execute("SELECT id FROM crash_rows")}
        admin.execute("DROP TABLE crash_rows")
    assert len(on_server) >= CLIENTS * 50
    missing = sorted(on_server - recorded)
    assert not missing, f"{len(missing)} executed inserts have no record, e.g. {missing[:10]}"
    verified = gw.cli("audit", "verify", "--json", check=False)
    report = json.loads(verified.stdout)
    assert verified.returncode == 0 and report["ok"], report
    assert report["events"] >= len(recorded)
