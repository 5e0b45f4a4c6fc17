"""Prometheus metrics of the audit stream, served as text by the `lockgate serve` supervisor.

The supervisor sees every event the ingester commits, so it counts sessions, statements,
decisions by rule and refusals from that stream (no counter on the workers' hot path),
and reads the journal backlog, ingest lag and sink queues when scraped. Counters start
from zero when the supervisor starts, as Prometheus expects.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING

from lockgate.audit.events import Event
from lockgate.config.sinks import split_address

if TYPE_CHECKING:
    from lockgate.audit.ingest import JournalIngester
    from lockgate.audit.sinks import SinkHub

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_Labels = tuple[tuple[str, str], ...]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: _Labels) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels) + "}"


class Exposition:
    """Text exposition format (version 0.0.4) builder."""

    def __init__(self) -> None:
        self._lines: list[str] = []

    def family(self, name: str, kind: str, help_: str, samples: dict[_Labels, float]) -> None:
        self._lines.append(f"# HELP {name} {help_}")
        self._lines.append(f"# TYPE {name} {kind}")
        for labels, value in sorted(samples.items()):
            self._lines.append(f"{name}{_labels(labels)} {_number(value)}")

    def text(self) -> str:
        return "\n".join(self._lines) + "\n"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


class AuditMetrics:
    """Counts committed audit events (an ingester observer); thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.sessions: Counter[_Labels] = Counter()
        self.sessions_ended: Counter[_Labels] = Counter()
        self.statements: Counter[_Labels] = Counter()
        self.decisions: Counter[_Labels] = Counter()
        self.errors: Counter[_Labels] = Counter()
        self.masked: Counter[_Labels] = Counter()
        self.refusals: Counter[_Labels] = Counter()
        self.events = 0
        self.lag_seconds = 0.0
        self.last_commit = 0.0
        self._resources: dict[str, str] = {}

    def _outcome(self, e: Event) -> None:
        """Count a command's outcome (called with the lock held)."""
        if e["error_code"]:
            self.errors[(("code", str(e["error_code"])),)] += 1
        for rule, cells in (e.get("masked_by_rule") or {}).items():
            self.masked[(("rule", str(rule)),)] += cells

    def observe(self, events: Sequence[Event]) -> None:
        """Count one committed batch."""
        now = time.time()
        newest = ""
        with self._lock:
            for e in events:
                kind = e["type"]
                if e["time"] and e["time"] > newest:
                    newest = e["time"]
                if kind == "session.start":
                    self._resources[e["session_id"]] = e["resource"]
                    self.sessions[(("protocol", e["protocol"]), ("resource", e["resource"]))] += 1
                elif kind == "session.end":
                    self._resources.pop(e["session_id"], None)
                    self.sessions_ended[(("reason", str(e["end_reason"])),)] += 1
                elif kind == "command":
                    resource = self._resources.get(e["session_id"], "")
                    self.statements[(("resource", resource),)] += 1
                    self.decisions[
                        (("decision", str(e["decision"])), ("rule", str(e["rule"] or "")))
                    ] += 1
                    if "finished_at" in e:  # chained with its outcome (schema version 3)
                        self._outcome(e)
                elif kind == "command.outcome":
                    self._outcome(e)
                elif kind == "connection.refused":
                    self.refusals[(("code", str(e["code"])), ("protocol", str(e["protocol"])))] += 1
            self.events += len(events)
            self.last_commit = now
            if newest:
                moment = datetime.fromisoformat(newest.replace("Z", "+00:00"))
                self.lag_seconds = max(0.0, now - moment.timestamp())

    def render(self, ingester: JournalIngester | None, hub: SinkHub | None) -> str:
        """Everything in the text exposition format."""
        out = Exposition()
        with self._lock:
            out.family(
                "lockgate_sessions_total",
                "counter",
                "Sessions opened, by protocol and resource.",
                dict(self.sessions),
            )
            out.family(
                "lockgate_sessions_ended_total",
                "counter",
                "Sessions ended, by reason.",
                dict(self.sessions_ended),
            )
            out.family(
                "lockgate_statements_total",
                "counter",
                "Statements and commands recorded, by resource.",
                dict(self.statements),
            )
            out.family(
                "lockgate_decisions_total",
                "counter",
                "Policy decisions on statements, by decision and rule.",
                dict(self.decisions),
            )
            out.family(
                "lockgate_statement_errors_total",
                "counter",
                "Statements that ended in an error, by SQLSTATE or code.",
                dict(self.errors),
            )
            out.family(
                "lockgate_masked_cells_total",
                "counter",
                "Result cells masked before they reached the client, by masking rule.",
                dict(self.masked),
            )
            out.family(
                "lockgate_refusals_total",
                "counter",
                "Connections refused, by code and protocol.",
                dict(self.refusals),
            )
            out.family(
                "lockgate_audit_events_total",
                "counter",
                "Chained audit events committed to the store by this ingester.",
                {(): self.events},
            )
            out.family(
                "lockgate_audit_ingest_lag_seconds",
                "gauge",
                "Age of the newest event of the last committed batch when it was committed.",
                {(): self.lag_seconds},
            )
            out.family(
                "lockgate_audit_last_commit_timestamp_seconds",
                "gauge",
                "When the ingester last committed events (Unix time; 0: not yet).",
                {(): self.last_commit},
            )
        if ingester is not None:
            out.family(
                "lockgate_audit_journal_backlog_bytes",
                "gauge",
                "Journal bytes not yet in the audit store.",
                {(): ingester.backlog_bytes()},
            )
            out.family(
                "lockgate_audit_store_failures_total",
                "counter",
                "Failed ingest passes (the journal keeps the records).",
                {(): ingester.store_failures},
            )
        if hub is not None and hub.runners:
            stats = hub.stats()
            for name, help_, attr, kind in (
                ("lockgate_sink_delivered_total", "Events delivered.", "delivered", "counter"),
                ("lockgate_sink_failures_total", "Failed deliveries.", "failures", "counter"),
                ("lockgate_sink_dropped_total", "Events not queued.", "dropped", "counter"),
                ("lockgate_sink_queue_bytes", "Bytes queued.", "queued_bytes", "gauge"),
            ):
                out.family(
                    name,
                    kind,
                    help_,
                    {(("sink", n),): getattr(s, attr) for n, s in stats.items()},
                )
        return out.text()


class MetricsServer:
    """`GET /metrics` on a small threaded HTTP server, in a daemon thread."""

    def __init__(self, address: str, render: Callable[[], str]) -> None:
        host, port = split_address(address)
        self._render = render

        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?", 1)[0] != "/metrics":
                    self.send_error(404, "only /metrics is served here")
                    return
                body = outer._render().encode()
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                return None

        self._httpd = ThreadingHTTPServer((host, port), Handler)
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._httpd.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="lockgate-metrics", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
