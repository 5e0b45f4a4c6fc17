"""How long a held statement waits after a reviewer's decision commits, per wake-up path.

Usage:
  .venv/bin/python bench/wakeups.py                 # 20 decisions per path
  .venv/bin/python bench/wakeups.py --rounds 50 --pg postgresql+psycopg://postgres@127.0.0.1

Side by side in one run, with the default fallback poll (0.5 s) everywhere:
- `in_process`: the decision is written through the broker's own engine (the admin console
  in the worker that holds the statement), SQLite store;
- `same_host`: through another engine on the same SQLite file (as another worker or the
  CLI would: the unix datagram sockets next to the database file);
- `notify`: through another engine on a PostgreSQL store (another host: `LISTEN/NOTIFY`);
  skipped without `--pg` (a server URL; a database is created and dropped);
- `poll`: no wake-ups at all, as before (the broker's poll alone).
Each figure is the time from calling `decide()` (its own transaction included) to the held
future resolving; the release may come before `decide()` returns to its caller.
Not a test: numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import tempfile
import time
from pathlib import Path

import psycopg
from sqlalchemy.engine import Engine, make_url

from lockgate.approvals.broker import ApprovalBroker
from lockgate.approvals.store import STATEMENT, ApprovalStore
from lockgate.config.model import ApprovalRule
from lockgate.model import Principal
from lockgate.store import open_engine
from lockgate.wakeups import Wakeups

ALICE = Principal("alice", frozenset({"it"}))
BOB = Principal("bob", frozenset({"sre"}))
RULE = ApprovalRule(name="bench", reviewers=["sre"])
POLL = 0.5


async def _latencies(here: Engine, there: Engine, woken: bool, rounds: int) -> list[float]:
    """Seconds from each decision's start (through `there`) to its waiter's release."""
    store, deciding = ApprovalStore(here), ApprovalStore(there)
    wakeups = Wakeups(here) if woken else None
    broker = ApprovalBroker(store, POLL, wakeups=wakeups)
    if wakeups is not None and wakeups.enabled:
        wakeups.start()
        await asyncio.wait_for(wakeups.listening.wait(), 10)
    out = []
    try:
        for _ in range(rounds):
            req = await broker.open(lambda: store.create(STATEMENT, ALICE, "db", RULE, "bench"))
            waiting = broker.wait(req)
            # Decide at a random point of the poll cycle, as a reviewer would.
            await asyncio.sleep(0.05 + secrets.randbelow(500) / 1000)
            start = time.perf_counter()
            await asyncio.to_thread(deciding.decide, req.id, BOB, "approve", "ok")
            await asyncio.wait_for(waiting, 10)
            out.append(time.perf_counter() - start)
    finally:
        if wakeups is not None:
            await wakeups.close()
    return out


def _show(name: str, got: list[float], poll: list[float]) -> float:
    median = statistics.median(got)
    p90 = sorted(got)[int(len(got) * 0.9) - 1]
    ratio = statistics.median(poll) / median if median else float("inf")
    print(
        f"{name:<11} median {median * 1000:8.2f} ms   p90 {p90 * 1000:8.2f} ms   "
        f"poll/this {ratio:8.1f}x"
    )
    return median


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--pg", help="a PostgreSQL server URL for the `notify` path")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'state.db'}"
        here, there = open_engine(url), open_engine(url)
        poll = await _latencies(here, there, False, args.rounds)
        results = {
            "in_process": await _latencies(here, here, True, args.rounds),
            "same_host": await _latencies(here, there, True, args.rounds),
        }
        here.dispose()
        there.dispose()
    if args.pg:
        base = make_url(args.pg)
        name = f"lockgate_bench_wake_{secrets.token_hex(4)}"
        server = {"host": base.host, "port": base.port or 5432, "user": base.username}
        with psycopg.connect(**server, dbname="postgres", autocommit=True) as c:  # type: ignore[arg-type]
            c.execute(f'CREATE DATABASE "{name}"')
        try:
            pg_url = base.set(database=name).render_as_string(hide_password=False)
            here, there = open_engine(pg_url), open_engine(pg_url)
            results["notify"] = await _latencies(here, there, True, args.rounds)
            here.dispose()
            there.dispose()
        finally:
            with psycopg.connect(**server, dbname="postgres", autocommit=True) as c:  # type: ignore[arg-type]
                c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    print(f"{args.rounds} decisions per path; fallback poll {POLL} s")
    medians = {name: _show(name, got, poll) for name, got in results.items()}
    medians["poll"] = _show("poll", poll, poll)
    print("wakeups: " + " ".join(f"{k}_ms={v * 1000:.2f}" for k, v in medians.items()))


if __name__ == "__main__":
    asyncio.run(main())
