"""Fill an audit store with about a million chained events, then time searches and verify.

Usage:
  .venv/bin/python bench/audit_search.py                     # SQLite in a temp folder
  .venv/bin/python bench/audit_search.py --events 200000
  .venv/bin/python bench/audit_search.py --url postgresql+psycopg://postgres@127.0.0.1/db
  .venv/bin/python bench/audit_search.py --keep /tmp/audit1m  # keep (and reuse) the store

Events go through the real path: journal files, then the ingester (rows, chain events,
full-text rows, checkpoints), so the fill rate is the ingester's rate with chaining on.
Not a test: numbers depend on the machine and its disk.
"""

from __future__ import annotations

import argparse
import random
import shutil
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

from sqlalchemy import text

from lockgate.audit import journal
from lockgate.audit.ingest import JournalIngester
from lockgate.audit.search import SearchFilter, search
from lockgate.audit.verify import verify
from lockgate.store import open_engine

SUBJECTS = [f"user{i:03d}" for i in range(200)] + ["ci-bot", "etl", "auditor"]
GROUPS = ["dba", "eng", "support", "finance", "it", "sre"]
RESOURCES = ["shop", "billing", "crm", "warehouse", "hr"]
TABLES = ["customers", "orders", "invoices", "payments", "employees", "shipments", "products"]
COLUMNS = ["id", "email", "name", "total", "status", "created_at", "amount", "iban"]
RULES = ["no-drop", "no-delete-without-where", "pii-review", "prod-ddl"]
EVENTS_PER_SESSION = 22  # start, 10 x (command, outcome), end


def statement(rng: random.Random) -> tuple[str, str]:
    t, c = rng.choice(TABLES), rng.choice(COLUMNS)
    pick = rng.random()
    if pick < 0.6:
        return f"SELECT {c}, {rng.choice(COLUMNS)} FROM {t} WHERE id = $1", "select"
    if pick < 0.8:
        return f"UPDATE {t} SET {c} = $1 WHERE id = $2", "update"
    if pick < 0.95:
        return f"INSERT INTO {t} ({c}) VALUES ($1)", "insert"
    if pick < 0.99995:
        return f"DELETE FROM {t} WHERE {c} < now() - interval '30 days'", "delete"
    return f"SELECT * FROM {t} WHERE note = 'zanzibar{rng.randrange(10)}'", "select"


def fill(url: str, state: Path, n_events: int, seed: int = 7) -> float:
    rng = random.Random(seed)
    engine = open_engine(url)
    folder = state / "journal"
    writer = journal.JournalWriter(folder)
    start = time.time() - 90 * 86400
    n_sessions = max(1, n_events // EVENTS_PER_SESSION)
    batch: list[list[Any]] = []
    for i in range(n_sessions):
        sid = f"{i:08x}-bench"
        at = start + i * (90 * 86400 / n_sessions)
        groups = sorted(rng.sample(GROUPS, 2))
        batch.append(
            [
                "S",
                sid,
                rng.choice(SUBJECTS),
                groups,
                "human",
                "lockgate",
                None,
                rng.choice(RESOURCES),
                "postgres",
                "10.1.2.3:5000",
                "app",
                "psql",
                at,
            ]
        )
        for seq in range(1, 11):
            sql, kind = statement(rng)
            deny = rng.random() < 0.01
            decision, rule = ("deny", rng.choice(RULES)) if deny else ("allow", "")
            t = at + seq
            batch.append(["C", sid, seq, t, sql, kind, [], ["42"], decision, rule, ""])
            batch.append(["F", t + 0.001, 1, "SELECT 1", None, None, 64, 0.4, sid, seq])
        batch.append(["E", at + 20, "client_terminated", 100, 2000, None, sid])
        if len(batch) > 20_000:
            writer.append(journal.encode(batch))
            batch = []
    writer.append(journal.encode(batch))
    writer.close()
    ingester = JournalIngester(engine, folder)
    assert ingester.try_lock()
    began = time.perf_counter()
    try:
        while ingester.ingest_once(seal=True):
            pass
    finally:
        ingester.unlock()
    took = time.perf_counter() - began
    engine.dispose()
    return took


def timed(label: str, fn: Callable[[], Any], runs: int = 3) -> float:
    best = float("inf")
    result: Any = None
    for _ in range(runs):
        began = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - began)
    n = len(result) if isinstance(result, list) else result
    print(f"  {label:<58} {best * 1000:8.1f} ms  ({n} rows)")
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--url", help="store URL (default: SQLite in the state folder)")
    ap.add_argument("--keep", type=Path, help="state folder to keep; reused if it has a store")
    ap.add_argument("--no-verify", action="store_true")
    args = ap.parse_args()
    state = args.keep or Path(tempfile.mkdtemp(prefix="lockgate-audit-search-"))
    state.mkdir(parents=True, exist_ok=True)
    url = args.url or f"sqlite:///{state / 'lockgate.db'}"
    engine = open_engine(url)
    with engine.connect() as conn:
        have = conn.execute(text("SELECT count(*) FROM audit_events")).scalar_one()
    if have < args.events * 0.9:
        print(f"filling {url} with about {args.events} events ...")
        took = fill(url, state, args.events)
        with engine.connect() as conn:
            have = conn.execute(text("SELECT count(*) FROM audit_events")).scalar_one()
        print(f"  ingested {have} chained events in {took:.1f} s ({have / took:,.0f} events/s)")
    else:
        print(f"reusing {url}: {have} events")
    if engine.dialect.name == "postgresql":
        # What autovacuum does shortly after a bulk load: planner statistics.
        with engine.begin() as conn:
            conn.execute(text("ANALYZE"))
    now = datetime.now(UTC)
    print(f"searches on {have} events ({engine.dialect.name}), best of 3:")
    worst = 0.0
    cases: list[tuple[str, SearchFilter]] = [
        ("rare word: zanzibar3", SearchFilter(text="zanzibar3")),
        ("common words: customers email", SearchFilter(text="customers email")),
        ("subject user042", SearchFilter(subject="user042")),
        ("subject user042 + word invoices", SearchFilter(subject="user042", text="invoices")),
        ("group finance + resource hr", SearchFilter(group="finance", resource="hr")),
        ("decision deny + rule no-drop", SearchFilter(decision="deny", rule="no-drop")),
        (
            "last 7 days + word payments",
            SearchFilter(since=now - timedelta(days=7), text="payments"),
        ),
        (
            "a day 30 days ago, resource crm",
            SearchFilter(
                since=now - timedelta(days=31), until=now - timedelta(days=30), resource="crm"
            ),
        ),
        ("protocol postgres (no other filter)", SearchFilter(protocol="postgres")),
    ]
    for label, f in cases:
        worst = max(worst, timed(label, partial(search, engine, f)))
    print(f"audit_search: events={have} worst_search_ms={worst * 1000:.1f}")
    if not args.no_verify:
        began = time.perf_counter()
        report = verify(engine, state)
        took = time.perf_counter() - began
        print(f"verify: ok={report.ok} events={sum(c.events for c in report.chains)} {took:.1f} s")
    engine.dispose()
    if args.keep is None:
        shutil.rmtree(state, ignore_errors=True)


if __name__ == "__main__":
    main()
