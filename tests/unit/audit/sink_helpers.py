"""Shared by the sink and metrics tests: a recorded session ingested with observers, waits."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from audit_builders import DONE, make_command, make_session
from sqlalchemy.engine import Engine

from lockgate.audit.ingest import JournalIngester
from lockgate.audit.recorder import AuditRecorder
from lockgate.audit.sinks import EventObserver
from lockgate.model import ClientInfo, Decision, DecisionKind

REFUSED_FROM = ClientInfo("192.0.2.7:40000", "postgres")
# Events of `record`: session start, 3 commands (the first chained with its outcome), 1 refusal.
RECORDED_EVENTS = 5


async def record(journal_dir: Path, engine: Engine, sid: str = "s-1") -> None:
    """One session with two allowed commands (one finished), one denied, one refusal."""
    rec = AuditRecorder(engine, journal_dir, ingest=False)
    await rec.start()
    await rec.session_started(make_session(sid))
    denied = Decision(DecisionKind.DENY, rule="no-ddl", reason="DDL is not allowed")
    cmds = [
        make_command(sid, 1),
        make_command(sid, 2),
        make_command(sid, 3, "DROP TABLE customers", decision=denied),
    ]
    assert rec.commands_started(cmds) is None
    rec.command_finished(sid, 1, DONE)
    await rec.connection_refused(REFUSED_FROM, "shop", "mallory", "28P01", "bad token")
    await rec.close()


def ingest(engine: Engine, journal_dir: Path, observers: Sequence[EventObserver]) -> int:
    """One ingester pass with observers, as the supervisor runs it."""
    ingester = JournalIngester(engine, journal_dir, observers=observers)
    assert ingester.try_lock()
    try:
        return ingester.ingest_once()
    finally:
        ingester.unlock()


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    """Wait until `condition()` holds (a generous bound, never a timing assertion)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.01)


class Webhook:
    """A loopback HTTP endpoint that answers the statuses it is given, then 200."""

    def __init__(self, statuses: Sequence[int] = ()) -> None:
        self.statuses = list(statuses)
        self.bodies: list[bytes] = []
        self.answered: list[int] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                status = hook.statuses.pop(0) if hook.statuses else 200
                if status == 200:
                    hook.bodies.append(body)
                hook.answered.append(status)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/audit"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)
