"""CPU cost of recording one statement: the worker's journal encoding and the ingester's work.

Usage: .venv/bin/python bench/audit_ingest.py [--url postgresql://…] [--statements 30000]
       [--batch 150] [--journals 1] [--profile]

Records statements shaped like `pgbench -S -M prepared` through Lockgate (a command with
one parameter, its outcome with a small captured result) with a real `AuditRecorder` into a
journal, then copies them into a fresh store with a real `JournalIngester` (hash chain, FTS
index), `--batch` statements per pass as under load. Prints CPU µs (`time.process_time`,
this process only, so less sensitive to other load than wall time) per statement for each
side (the median over batches). Not a test: figures depend on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from lockgate.audit.ingest import JournalIngester
from lockgate.audit.recorder import AuditRecorder
from lockgate.model import (
    CapturedResult,
    ClientInfo,
    Command,
    Decision,
    DecisionKind,
    Principal,
    ResultSummary,
    Session,
)
from lockgate.store import open_engine

SQL = "SELECT abalance FROM pgbench_accounts WHERE aid = $1;"
# RowDescription (abalance int4), one DataRow, CommandComplete: what pgbench -S gets back.
RESULT = (
    b"T\x00\x00\x00\x21\x00\x01abalance\x00\x00\x00\x40\x06\x00\x03\x00\x00\x00\x17\x00\x04"
    b"\xff\xff\xff\xff\x00\x00D\x00\x00\x00\x0b\x00\x01\x00\x00\x00\x010"
    b"C\x00\x00\x00\x0dSELECT 1\x00"
)
SESSIONS = 16


class Load:
    """Sessions of the load, opened once; `batch` statements at a time.

    With several recorders (worker processes, each with its own journal file), the sessions
    are spread over them.
    """

    def __init__(self, *recs: AuditRecorder) -> None:
        self.recs = recs
        self.sids = [f"bench-{i:04d}-{time.time_ns()}" for i in range(SESSIONS)]
        self.seqs = dict.fromkeys(self.sids, 0)
        self.allow = Decision(DecisionKind.ALLOW, "read-only", "select on pgbench_accounts")
        self.n = 0

    async def open(self) -> None:
        client = ClientInfo("127.0.0.1:5000", "postgres", "bench", "pgbench")
        for i, sid in enumerate(self.sids):
            await self.recs[i % len(self.recs)].session_started(
                Session(
                    sid, Principal("bench", frozenset({"eng"})), "pgb", client, datetime.now(UTC)
                )
            )

    async def batch(self, size: int) -> float:
        """Record `size` statements; the recorder's CPU seconds."""
        recs = self.recs
        t0 = time.process_time()
        for _ in range(size):
            rec = recs[self.n % SESSIONS % len(recs)]
            sid = self.sids[self.n % SESSIONS]
            self.n += 1
            self.seqs[sid] += 1
            seq = self.seqs[sid]
            cmd = Command(
                sid, seq, SQL, "select", ("pgbench_accounts",), (str(self.n),), self.allow
            )
            fut = rec.commands_started([cmd])
            if fut is not None:
                await fut
            result = CapturedResult("pgwire", RESULT, 1, 0, 0)
            rec.command_finished(
                sid, seq, ResultSummary(1, "SELECT 1", None, None, 71, 0.12, result)
            )
        for rec in recs:
            await rec.sync()  # the outcomes ride along with the next write: make it now
        return time.process_time() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--url", default="", help="store URL (default: a temp SQLite file)")
    ap.add_argument("--statements", type=int, default=30_000)
    ap.add_argument("--batch", type=int, default=150, help="statements per ingester pass")
    ap.add_argument("--profile", action="store_true", help="cProfile the ingester")
    ap.add_argument(
        "--journals", type=int, default=1, help="recorders (worker journal files) in the load"
    )
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = args.url or f"sqlite:///{Path(tmp) / 'state' / 'lockgate.db'}"
        engine = open_engine(url)
        folder = Path(tmp) / "state" / "journal"
        recs = [
            AuditRecorder(engine, folder, ingest=False, rotate_bytes=1 << 40)
            for _ in range(args.journals)
        ]
        ingester = JournalIngester(engine, folder)
        ingester.try_lock()
        ingester.ingest_once()  # connect, create the chain, sign nothing yet

        async def run() -> tuple[list[float], list[float], int]:
            for rec in recs:
                await rec.start()
            worker: list[float] = []
            ingest: list[float] = []
            done = 0
            prof = cProfile.Profile() if args.profile else None
            load = Load(*recs)
            await load.open()
            ingester.ingest_once()
            # Alternate: record one batch, ingest it (as the supervisor does under load).
            while done < args.statements:
                worker.append(await load.batch(args.batch))
                t0 = time.process_time()
                if prof is not None:
                    prof.enable()
                ingester.ingest_once()
                if prof is not None:
                    prof.disable()
                ingest.append(time.process_time() - t0)
                done += args.batch
            for rec in recs:
                await rec.close()
            if prof is not None:
                pstats.Stats(prof).sort_stats("tottime").print_stats(25)
            return worker, ingest, done

        worker, ingest, done = asyncio.run(run())
        ingester.unlock()
        engine.dispose()
    # Other work on the machine only ever adds CPU time (caches, frequency): the quietest
    # batches (the lowest decile) say best what the code costs; the median is shown too.
    per = 1e6 / args.batch

    def figure(spent: list[float]) -> str:
        low = statistics.quantiles(spent, n=10)[0] * per
        return f"{low:.1f} (median {statistics.median(spent) * per:.1f})"

    print(f"worker µs/statement: {figure(worker)}; ingester µs/statement: {figure(ingest)}")
    print(
        f"audit_ingest: statements={done} batch={args.batch} journals={args.journals} "
        f"worker_us_per_stmt={statistics.quantiles(worker, n=10)[0] * per:.1f} "
        f"ingester_us_per_stmt={statistics.quantiles(ingest, n=10)[0] * per:.1f}"
    )


if __name__ == "__main__":
    main()
