"""The ingester's CPU per statement into two SQLite stores, batch by batch in one process.

Usage: .venv/bin/python bench/audit_schema_ab.py [--statements 24000] [--batch 600]

Same ingester code, same load (`audit_ingest.Load`), two stores: one as this Lockgate creates
it, one rebuilt the way revisions before 0004 made its audit tables (`audit_events` and
`command_results` with a rowid, the FTS5 table with column sizes). Batches alternate between
the two (the order flips each round), so load from the rest of the machine hits both alike:
the difference is what the schema costs. Not a test: figures depend on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import Engine

sys.path.insert(0, str(Path(__file__).parent))
from audit_ingest import Load

from lockgate.audit.ingest import JournalIngester
from lockgate.audit.recorder import AuditRecorder
from lockgate.audit.tables import FTS_TABLE
from lockgate.store import open_engine


def before_0004(engine: Engine) -> None:
    """Rebuild the empty audit tables the way revisions before 0004 made them."""
    with engine.begin() as conn:
        for name in ("audit_events", "command_results"):
            ddl = conn.execute(
                text("SELECT sql FROM sqlite_master WHERE name = :n"), {"n": name}
            ).scalar_one()
            conn.exec_driver_sql(f"DROP TABLE {name}")
            conn.exec_driver_sql(str(ddl).replace("WITHOUT ROWID", ""))
        conn.exec_driver_sql("CREATE INDEX ix_audit_events_ref ON audit_events (session_id, item)")
        conn.exec_driver_sql(f"DROP TABLE {FTS_TABLE}")
        conn.exec_driver_sql(
            f"CREATE VIRTUAL TABLE {FTS_TABLE} USING fts5("
            "text, session_id UNINDEXED, seq UNINDEXED)"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--statements", type=int, default=24_000)
    ap.add_argument("--batch", type=int, default=600, help="statements per ingester pass")
    args = ap.parse_args()
    names = ("before-0004", "current")
    with tempfile.TemporaryDirectory() as tmp:
        sides: dict[str, tuple[Engine, AuditRecorder, JournalIngester]] = {}
        for name in names:
            state = Path(tmp) / name / "state"
            engine = open_engine(f"sqlite:///{state / 'lockgate.db'}")
            if name == "before-0004":
                before_0004(engine)
            rec = AuditRecorder(engine, state / "journal", ingest=False, rotate_bytes=1 << 40)
            ingester = JournalIngester(engine, state / "journal")
            ingester.try_lock()
            ingester.ingest_once()
            sides[name] = (engine, rec, ingester)

        async def run() -> dict[str, list[float]]:
            loads: dict[str, Load] = {}
            for name, (_engine, rec, ingester) in sides.items():
                await rec.start()
                loads[name] = Load(rec)
                await loads[name].open()
                ingester.ingest_once()
            spent: dict[str, list[float]] = {name: [] for name in names}
            done = 0
            while done < args.statements:
                order = names if (done // args.batch) % 2 == 0 else names[::-1]
                for name in order:
                    await loads[name].batch(args.batch)
                    t0 = time.process_time()
                    sides[name][2].ingest_once()
                    spent[name].append(time.process_time() - t0)
                done += args.batch
            for _engine, rec, _ingester in sides.values():
                await rec.close()
            return spent

        spent = asyncio.run(run())
        for engine, _rec, ingester in sides.values():
            ingester.unlock()
            engine.dispose()
    per = 1e6 / args.batch
    low = {name: statistics.quantiles(s, n=10)[0] * per for name, s in spent.items()}
    for name, s in spent.items():
        print(
            f"{name}: ingester µs/statement {low[name]:.1f} "
            f"(median {statistics.median(s) * per:.1f})"
        )
    print(
        f"audit_schema_ab: batch={args.batch} before_0004_us={low['before-0004']:.1f} "
        f"current_us={low['current']:.1f} ratio={low['current'] / low['before-0004']:.2f}"
    )


if __name__ == "__main__":
    main()
