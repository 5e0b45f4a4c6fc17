"""Measure the audit recorder: records/s with many concurrent sessions, and µs per awaited command.

Usage: .venv/bin/python bench/audit_recorder.py [--url sqlite:////tmp/x.db] [--sessions 200]
Not a test: numbers depend on the machine and its disk.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from lockgate.audit.recorder import AuditRecorder
from lockgate.audit.tables import commands, refusals, sessions
from lockgate.model import ClientInfo, Command, Principal, ResultSummary, Session, SessionEnd
from lockgate.store import metadata, open_engine

SQL = "SELECT id, email FROM customers WHERE id = $1"


async def one_session(rec: AuditRecorder, sid: str, n: int) -> None:
    client = ClientInfo("127.0.0.1:5000", "postgres", "bench", "bench")
    await rec.session_started(Session(sid, Principal("bench"), "shop", client, datetime.now(UTC)))
    done = ResultSummary(rows=1, status="SELECT 1", bytes_out=64, duration_ms=0.2)
    for seq in range(1, n + 1):
        await rec.command_started(Command(sid, seq, SQL, "select", ("customers",), ("42",)))
        rec.command_finished(sid, seq, done)
    rec.session_ended(sid, SessionEnd.CLIENT_TERMINATED, 100, 1000)


async def main(url: str, n_sessions: int, per_session: int) -> None:
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass
    engine = open_engine(url, create=False)
    metadata.create_all(engine, tables=[sessions, commands, refusals])

    rec = AuditRecorder(engine)
    await rec.start()
    # Sequential: one session awaiting each command, the latency a lone client sees.
    n = 5000
    t0 = time.perf_counter()
    await one_session(rec, "seq-0", n)
    t1 = time.perf_counter()
    print(f"sequential: {(t1 - t0) / n * 1e6:.1f} µs per awaited command_started (+finish)")

    # Concurrent: many sessions, group commit batches their records.
    t0 = time.perf_counter()
    await asyncio.gather(*(one_session(rec, f"con-{i}", per_session) for i in range(n_sessions)))
    t1 = time.perf_counter()
    records = n_sessions * (per_session * 2 + 2)
    print(
        f"concurrent: {n_sessions} sessions x {per_session} commands: "
        f"{records / (t1 - t0):,.0f} records/s, "
        f"{(t1 - t0) / (n_sessions * per_session) * 1e6:.1f} µs per command"
    )
    await rec.close()
    s = rec.stats
    print(f"flushes={s.flushes} records={s.records} failed={s.failed_flushes} dropped={s.dropped}")
    engine.dispose()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--url", default="")
    ap.add_argument("--sessions", type=int, default=200)
    ap.add_argument("--commands", type=int, default=50)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = args.url or f"sqlite:///{Path(tmp) / 'audit.db'}"
        asyncio.run(main(url, args.sessions, args.commands))
