"""What the admin API adds over the audit queries it wraps: the same reads, side by side.

Usage:
  .venv/bin/python bench/admin_api.py                  # ~10,000 sessions in a temp SQLite store
  .venv/bin/python bench/admin_api.py --events 1000000

Fills a store through the real journal and ingester (`bench/audit_search.py`), then times
each read twice in one run: the `audit.query` call alone, and the HTTP request through the
FastAPI app in-process (bearer token verified, JSON built), and prints the ratio. Not a
test: the numbers describe this machine; compare the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from audit_search import fill

from lockgate.admin.app import create_app
from lockgate.admin.context import AdminContext
from lockgate.audit.query import get_session, list_sessions
from lockgate.audit.search import in_group, sessions_matching
from lockgate.config.model import Manifest


async def best(fn: Callable[[], Awaitable[Any]], runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        await fn()
        times.append(time.perf_counter() - t0)
    return min(times) * 1000


async def run(folder: Path, events: int, runs: int) -> None:
    url = f"sqlite:///{folder}/state/lockgate.db"
    took = fill(url, folder / "state", events)
    manifest = Manifest.model_validate(
        {
            "state": {"url": url, "dir": str(folder / "state")},
            "admin": {"roles": {"auditor": ["audit"]}},
        }
    )
    from lockgate.store import open_engine

    engine = open_engine(url)
    ctx = AdminContext.for_manifest(manifest, engine)
    token = ctx.authority.issue("bench", ["audit"]).token
    app = create_app(ctx)
    transport = httpx.ASGITransport(app=app)
    n = len(list_sessions(engine, limit=10**9))
    some = list_sessions(engine, limit=1)[0]["id"]
    print(f"store: {n} sessions, filled in {took:.1f} s")
    reads: list[tuple[str, Callable[[], Any], str, dict[str, str]]] = [
        ("newest 50", lambda: list_sessions(engine, limit=51, held=True), "/api/sessions", {}),
        (
            "group filter",
            lambda: list_sessions(engine, limit=51, held=True, where=[in_group("finance")]),
            "/api/sessions",
            {"group": "finance"},
        ),
        (
            "statement words",
            lambda: list_sessions(
                engine, limit=51, held=True, where=[sessions_matching(engine, "zanzibar3")]
            ),
            "/api/sessions",
            {"q": "zanzibar3"},
        ),
        ("one session", lambda: get_session(engine, some), f"/api/sessions/{some}", {}),
    ]
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(transport=transport, base_url="https://b", headers=headers) as c:
        print(f"{'read':<16} {'query ms':>9} {'API ms':>9} {'API/query':>10}")
        for label, direct, path, params in reads:

            async def query(direct: Callable[[], Any] = direct) -> None:
                await asyncio.to_thread(direct)

            async def api(path: str = path, params: dict[str, str] = params) -> None:
                r = await c.get(path, params=params)
                r.raise_for_status()

            q_ms, a_ms = await best(query, runs), await best(api, runs)
            print(f"{label:<16} {q_ms:>9.1f} {a_ms:>9.1f} {a_ms / q_ms:>10.2f}")
    engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=220_000, help="audit events (~22/session)")
    parser.add_argument("--runs", type=int, default=5, help="best of this many runs")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="lockgate-bench-admin-") as tmp:
        asyncio.run(run(Path(tmp), args.events, args.runs))


if __name__ == "__main__":
    main()
