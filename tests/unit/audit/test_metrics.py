"""/metrics from the supervisor's view of the ingested audit stream, fetched over HTTP."""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path

import pytest
from sink_helpers import RECORDED_EVENTS, ingest, record
from sqlalchemy.engine import Engine

from lockgate.audit.ingest import JournalIngester
from lockgate.audit.metrics import CONTENT_TYPE, AuditMetrics, MetricsServer
from lockgate.audit.sinks import SinkHub
from lockgate.config.sinks import WebhookSink


def samples(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def journal_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.jnl"))


def get(url: str) -> tuple[str, str]:
    with urllib.request.urlopen(url, timeout=20) as response:
        return response.headers["Content-Type"], response.read().decode()


async def test_metrics_endpoint_counts_the_ingested_stream(
    engine: Engine, journal_dir: Path
) -> None:
    await record(journal_dir, engine)
    await record(journal_dir, engine, sid="s-2")
    metrics = AuditMetrics()
    hub = SinkHub.from_config(
        [WebhookSink(type="webhook", name="hook", url="http://127.0.0.1:9/")], journal_dir.parent
    )  # never started: its events stay queued
    assert ingest(engine, journal_dir, [metrics, hub]) > 0
    ingester = JournalIngester(engine, journal_dir)
    server = MetricsServer("127.0.0.1:0", lambda: metrics.render(ingester, hub))
    server.start()
    try:
        host, port = server.address
        content_type, text = get(f"http://{host}:{port}/metrics")
        with pytest.raises(urllib.error.HTTPError) as missing:
            get(f"http://{host}:{port}/other")
    finally:
        server.stop()
        hub.stop()
    assert content_type == CONTENT_TYPE
    assert missing.value.code == 404
    assert "# TYPE lockgate_statements_total counter" in text
    got = samples(text)
    assert got['lockgate_sessions_total{protocol="postgres",resource="shop"}'] == 2
    assert got['lockgate_statements_total{resource="shop"}'] == 6
    assert got['lockgate_decisions_total{decision="allow",rule=""}'] == 4
    assert got['lockgate_decisions_total{decision="deny",rule="no-ddl"}'] == 2
    assert got['lockgate_refusals_total{code="28P01",protocol="postgres"}'] == 2
    assert got["lockgate_audit_events_total"] == 2 * RECORDED_EVENTS
    assert got["lockgate_audit_journal_backlog_bytes"] == 0
    assert got["lockgate_audit_store_failures_total"] == 0
    assert got["lockgate_audit_ingest_lag_seconds"] >= 0
    assert got['lockgate_sink_queue_bytes{sink="hook"}'] > 0
    assert got['lockgate_sink_delivered_total{sink="hook"}'] == 0


def test_label_values_are_escaped() -> None:
    metrics = AuditMetrics()
    metrics.observe(
        [
            {
                "type": "command",
                "time": "2026-01-02T03:04:05.000000Z",
                "session_id": "x",
                "decision": "deny",
                "rule": 'a "quoted"\\rule\nname',
            }
        ]
    )
    text = metrics.render(None, None)
    assert 'rule="a \\"quoted\\"\\\\rule\\nname"' in text


def test_masked_cells_are_counted_by_rule() -> None:
    metrics = AuditMetrics()
    outcome = {
        "type": "command.outcome",
        "time": "2026-01-02T03:04:05.000000Z",
        "session_id": "x",
        "error_code": None,
    }
    metrics.observe(
        [
            {**outcome, "masked_cells": 5, "masked_by_rule": {"pii": 3, "cards": 2}},
            {**outcome, "masked_cells": 4, "masked_by_rule": {"pii": 4}},
            outcome,
        ]
    )
    text = metrics.render(None, None)
    assert 'lockgate_masked_cells_total{rule="pii"} 7' in text
    assert 'lockgate_masked_cells_total{rule="cards"} 2' in text


async def test_journal_backlog_counts_what_is_not_ingested_yet(
    engine: Engine, journal_dir: Path
) -> None:
    await record(journal_dir, engine)
    ingester = JournalIngester(engine, journal_dir)
    size = journal_bytes(journal_dir)
    assert size > 0
    assert (
        samples(AuditMetrics().render(ingester, None))["lockgate_audit_journal_backlog_bytes"]
        == size
    )
