"""CPU the PostgreSQL relay spends per statement on its own work, without sockets.

Usage: .venv/bin/python bench/pg_relay_cpu.py [--statements 20000] [--rounds 5]
       [--mode simple|prepared] [--profile]

Drives a real `PgRelay` on a real `Gate` (temp SQLite state, write-ahead journal, statement
analysis, result capture as configured by default) with the byte stream of `pgbench -S`:
one Query (or Bind/Describe/Execute/Sync of a prepared statement) per chunk from the
client, one ([BindComplete] RowDescription DataRow CommandComplete ReadyForQuery) chunk from
the server. The two
endpoints are in-memory byte counters, so what is timed is the relay's Python: framing,
planning, analysis, policy, the journal record and its `write`, capture and the outcome.
The audit ingester is not running (in `lockgate serve` it is the supervisor's work; see
bench/audit_ingest.py for its cost).

Prints the CPU µs per statement (`time.process_time`, best of `--rounds`: other load only
adds). This is the hot-cache figure: under a real load the same code costs about 2-3x as
much (bench/pg_throughput's proxy CPU per transaction), because the kernel, PostgreSQL and
pgbench run between statements and evict it from the CPU's caches. Not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import tempfile
import time
from pathlib import Path

from lockgate.config.loader import load_manifest_text
from lockgate.gate import Gate
from lockgate.model import ClientInfo, Principal
from lockgate.protocols.postgres import messages as m
from lockgate.proxy.pg_relay import PgRelay

SQL = "SELECT abalance FROM pgbench_accounts WHERE aid = {};"
PREPARED = "SELECT abalance FROM pgbench_accounts WHERE aid = $1;"
# What pgbench -S gets back for one statement (RowDescription abalance int4, one DataRow,
# CommandComplete); simple mode adds ReadyForQuery, prepared mode BindComplete before.
ROWS = (
    b"T\x00\x00\x00\x21\x00\x01abalance\x00\x00\x00\x40\x06\x00\x03\x00\x00\x00\x17\x00\x04"
    b"\xff\xff\xff\xff\x00\x00D\x00\x00\x00\x0b\x00\x01\x00\x00\x00\x010"
    b"C\x00\x00\x00\x0dSELECT 1\x00"
)
READY = m.message(b"Z", b"I")
WARMUP = 2000


class _Counter:
    """An endpoint that only counts what the relay writes to it."""

    closed = False
    peer = None

    def __init__(self) -> None:
        self.written = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += len(data)

    def set_sink(self, sink: object) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def _manifest(folder: Path) -> str:
    return f"""\
version: 1
state:
  url: sqlite:///{folder}/lockgate.db
  dir: {folder}
listeners:
  - name: postgres
    address: 127.0.0.1:0
    tls:
      enabled: false
resources:
  - name: bench
    upstream: {{host: 127.0.0.1, port: 5432, database: bench, user: bench}}
access:
  - name: bench
    resources: [bench]
    groups: [bench]
"""


def _chunks(mode: str, first: int, n: int) -> list[bytes]:
    """The client chunks of statements `first` to `first + n`, one chunk per statement.

    Simple mode: every text is new (as with pgbench's random keys), so the analysis is
    served by statement shape, never by the exact text. Prepared mode: what libpq sends
    for each execution of a prepared statement (Bind, Describe portal, Execute, Sync).
    """
    if mode == "simple":
        return [m.message(b"Q", SQL.format(i).encode() + b"\x00") for i in range(first, first + n)]
    chunks = []
    for i in range(first, first + n):
        value = str(i % 1_000_000 + 1).encode()
        bind = b"\x00P0_1\x00\x00\x00\x00\x01" + len(value).to_bytes(4, "big") + value
        bind += b"\x00\x00"
        chunks.append(m.message(b"B", bind) + DESCRIBE_PORTAL + EXECUTE + SYNC)
    return chunks


# pgbench -M prepared parses its statement once per session.
SETUP = m.message(b"P", b"P0_1\x00" + PREPARED.encode() + b"\x00\x00\x00") + m.message(b"S", b"")
DESCRIBE_PORTAL = m.message(b"D", b"P\x00")
EXECUTE = m.message(b"E", b"\x00\x00\x00\x00\x00")
SYNC = m.message(b"S", b"")
ANSWERS = {"simple": ROWS + READY, "prepared": m.message(b"2", b"") + ROWS + READY}


async def _run(args: argparse.Namespace) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        gate = Gate.from_manifest(load_manifest_text(_manifest(Path(tmp))), ingest=False)
        await gate.start()
        try:
            principal = Principal("bench", frozenset({"bench"}))
            resource, _ = gate.authorize(principal, "bench")
            session = await gate.open_session(
                principal, resource, ClientInfo("127.0.0.1:1", "postgres")
            )
            client, upstream = _Counter(), _Counter()
            relay = PgRelay(gate, session, client, upstream, lambda _reason: None)  # type: ignore[arg-type]
            relay.start()
            answer = ANSWERS[args.mode]
            if args.mode == "prepared":
                relay._from_client(SETUP)
                relay._from_upstream(m.message(b"1", b"") + READY)
            from_client, from_upstream = relay._from_client, relay._from_upstream
            for chunk in _chunks(args.mode, 0, WARMUP):
                from_client(chunk)
                from_upstream(answer)
            profile = cProfile.Profile() if args.profile else None
            best = float("inf")
            for r in range(args.rounds):
                chunks = _chunks(args.mode, WARMUP + r * args.statements, args.statements)
                t0 = time.process_time()
                if profile is not None:
                    profile.enable()
                for i, chunk in enumerate(chunks):
                    from_client(chunk)
                    from_upstream(answer)
                    if i % 64 == 0:
                        await asyncio.sleep(0)  # let the recorder's timers run, as in a loop
                if profile is not None:
                    profile.disable()
                best = min(best, time.process_time() - t0)
            if upstream.written == 0 or client.written == 0:
                raise SystemExit("the relay forwarded nothing: the bench is broken")
            if profile is not None:
                pstats.Stats(profile).sort_stats("tottime").print_stats(30)
            return best * 1e6 / args.statements
        finally:
            await gate.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--statements", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=5, help="timed passes; the best is shown")
    ap.add_argument("--mode", choices=("simple", "prepared"), default="simple")
    ap.add_argument("--profile", action="store_true", help="cProfile the timed passes")
    args = ap.parse_args()
    us = asyncio.run(_run(args))
    print(f"pg_relay_cpu: mode={args.mode} statements={args.statements} us_per_stmt={us:.1f}")


if __name__ == "__main__":
    main()
