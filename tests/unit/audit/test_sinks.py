"""Audit sinks fed by the ingester: file (rotation), syslog (UDP/TCP), webhook (retries, queue)."""

from __future__ import annotations

import re
import socket
from pathlib import Path
from typing import Any

import orjson
import pytest
from audit_builders import DONE, rows
from sink_helpers import RECORDED_EVENTS, Webhook, ingest, record, wait_for
from sqlalchemy.engine import Engine

from lockgate.audit.events import SCHEMA_VERSION
from lockgate.audit.sink_transports import FileTransport
from lockgate.audit.sinks import SinkHub, SinkQueue, SinkRunner
from lockgate.audit.tables import audit_events
from lockgate.config.loader import load_manifest_text
from lockgate.config.sinks import FileSink, SyslogSink, WebhookSink


def lines_of(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


@pytest.fixture
def state_dir(journal_dir: Path) -> Path:
    return journal_dir.parent


async def test_file_sink_gets_every_committed_event_with_its_chain_link(
    engine: Engine, journal_dir: Path, state_dir: Path, tmp_path: Path
) -> None:
    await record(journal_dir, engine)
    out = tmp_path / "out" / "audit.jsonl"
    hub = SinkHub.from_config([FileSink(type="file", name="f", path=out)], state_dir)
    hub.start()
    try:
        ingest(engine, journal_dir, [hub])
        wait_for(lambda: out.exists() and len(lines_of(out)) == RECORDED_EVENTS, "the file")
    finally:
        hub.stop()
    events = lines_of(out)
    assert [e["type"] for e in events] == [
        "session.start",
        "command",
        "command",
        "command",
        "connection.refused",
    ]
    assert {e["schema_version"] for e in events} == {SCHEMA_VERSION}
    stored = {r.seq: bytes(r.hash).hex() for r in rows(engine, audit_events)}
    assert {e["chain_seq"]: e["hash"] for e in events} == stored
    start, finished, unfinished, denied, refused = events
    # A command chained with its outcome ships as one event holding both.
    assert (finished["seq"], finished["status"], finished["rows"]) == (1, DONE.status, DONE.rows)
    assert "finished_at" not in unfinished and "status" not in denied
    assert start["session_id"] == "s-1" and start["groups"] == ["dba", "eng"]
    assert start["time"].endswith("Z") and "T" in start["time"]
    assert denied["decision"] == "deny" and denied["rule"] == "no-ddl"
    assert denied["tables"] == ["public.customers"]
    assert refused["code"] == "28P01" and refused["subject"] == "mallory"
    assert hub.stats()["f"].delivered == RECORDED_EVENTS
    assert hub.stats()["f"].queued_bytes == 0


def test_file_sink_rotates_by_size_and_keeps_the_newest_files(tmp_path: Path) -> None:
    out = tmp_path / "audit.jsonl"
    sink = FileTransport(FileSink(type="file", name="f", path=out, max_bytes=1024, keep=2))
    lines = [orjson.dumps({"seq": i, "pad": "x" * 80}) for i in range(60)]
    for i in range(0, 60, 3):
        sink.deliver(lines[i : i + 3])
    sink.close()
    files = [out, out.with_name("audit.jsonl.1"), out.with_name("audit.jsonl.2")]
    assert all(f.exists() for f in files)
    assert not out.with_name("audit.jsonl.3").exists()
    assert all(f.stat().st_size <= 1024 for f in files)
    kept = [e["seq"] for f in reversed(files) for e in lines_of(f)]
    assert kept == list(range(60 - len(kept), 60))  # the newest, in order, none lost inside


def test_a_file_sink_without_kept_files_starts_over(tmp_path: Path) -> None:
    out = tmp_path / "audit.jsonl"
    sink = FileTransport(FileSink(type="file", name="f", path=out, max_bytes=1024, keep=0))
    for i in range(30):
        sink.deliver([orjson.dumps({"seq": i, "pad": "y" * 100})])
    sink.close()
    assert out.stat().st_size <= 1024
    assert not out.with_name("audit.jsonl.1").exists()
    assert lines_of(out)[-1]["seq"] == 29


SYSLOG = re.compile(
    rb'^<(\d+)>1 (\S+) (\S+) lockgate (\d+) (\S+) \[lockgate@32473 chain="([0-9a-f]+)" '
    rb'seq="(\d+)" schema="3"\] \xef\xbb\xbf(\{.*\})$',
    re.S,
)


async def test_syslog_sink_sends_rfc5424_datagrams(
    engine: Engine, journal_dir: Path, state_dir: Path
) -> None:
    await record(journal_dir, engine)
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.settimeout(20)
    port = receiver.getsockname()[1]
    cfg = SyslogSink(type="syslog", name="sys", address=f"127.0.0.1:{port}", facility="local4")
    hub = SinkHub.from_config([cfg], state_dir)
    hub.start()
    try:
        ingest(engine, journal_dir, [hub])
        messages = [receiver.recv(65536) for _ in range(RECORDED_EVENTS)]
    finally:
        hub.stop()
        receiver.close()
    parsed = [SYSLOG.match(m) for m in messages]
    assert all(parsed), messages[0][:200]
    fields = [p.groups() for p in parsed if p]
    assert [f[4] for f in fields][:2] == [b"session.start", b"command"]
    pri = {f[4]: int(f[0]) for f in fields}
    assert pri[b"session.start"] == 20 * 8 + 6  # local4.info
    assert pri[b"connection.refused"] == 20 * 8 + 4  # local4.warning
    assert [int(f[6]) for f in fields] == [orjson.loads(f[7])["chain_seq"] for f in fields]
    denied = [orjson.loads(f[7]) for f in fields if b'"deny"' in f[7]]
    assert denied and denied[0]["rule"] == "no-ddl"


async def test_syslog_sink_over_tcp_uses_octet_counting(
    engine: Engine, journal_dir: Path, state_dir: Path
) -> None:
    await record(journal_dir, engine)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(20)
    port = listener.getsockname()[1]
    cfg = SyslogSink(type="syslog", name="tcp", address=f"127.0.0.1:{port}", transport="tcp")
    hub = SinkHub.from_config([cfg], state_dir)
    hub.start()
    try:
        ingest(engine, journal_dir, [hub])
        conn, _ = listener.accept()
        conn.settimeout(20)
        data = b""
        frames: list[bytes] = []
        while len(frames) < RECORDED_EVENTS:
            data += conn.recv(65536)
            while b" " in data:
                length, _, rest = data.partition(b" ")
                if len(rest) < int(length):
                    break
                frames.append(rest[: int(length)])
                data = rest[int(length) :]
        conn.close()
    finally:
        hub.stop()
        listener.close()
    assert all(SYSLOG.match(f) for f in frames)


async def test_webhook_retries_after_a_500_and_delivers_once(
    engine: Engine, journal_dir: Path, state_dir: Path
) -> None:
    await record(journal_dir, engine)
    hook = Webhook(statuses=[500])
    cfg = WebhookSink(
        type="webhook", name="hook", url=hook.url, backoff_initial=0.01, backoff_max=0.05
    )
    hub = SinkHub.from_config([cfg], state_dir)
    hub.start()
    try:
        ingest(engine, journal_dir, [hub])
        wait_for(lambda: len(hook.bodies) == 1, "the webhook delivery")
    finally:
        hub.stop()
        hook.close()
    assert hook.answered == [500, 200]
    body = orjson.loads(hook.bodies[0])
    assert body["schema_version"] == SCHEMA_VERSION
    assert [e["chain_seq"] for e in body["events"]] == list(range(1, RECORDED_EVENTS + 1))
    assert hub.stats()["hook"].failures == 1
    assert hub.stats()["hook"].delivered == RECORDED_EVENTS


async def test_webhook_delivers_queued_events_after_the_ingester_restarts(
    engine: Engine, journal_dir: Path, state_dir: Path
) -> None:
    await record(journal_dir, engine)
    down = Webhook(statuses=[503] * 1000)
    first = SinkHub.from_config(
        [
            WebhookSink(
                type="webhook", name="hook", url=down.url, backoff_initial=0.01, backoff_max=0.05
            )
        ],
        state_dir,
    )
    first.start()
    try:
        ingest(engine, journal_dir, [first])
        wait_for(lambda: first.stats()["hook"].failures >= 2, "failed deliveries")
    finally:
        first.stop()
        down.close()
    assert first.stats()["hook"].queued_bytes > 0
    # A new process: nothing new to ingest, the queue alone holds the events.
    up = Webhook()
    second = SinkHub.from_config(
        [
            WebhookSink(
                type="webhook", name="hook", url=up.url, backoff_initial=0.01, backoff_max=0.05
            )
        ],
        state_dir,
    )
    second.start()
    try:
        assert ingest(engine, journal_dir, [second]) == 0
        wait_for(lambda: second.stats()["hook"].queued_bytes == 0, "the queue to drain")
    finally:
        second.stop()
        up.close()
    delivered = [e["chain_seq"] for b in up.bodies for e in orjson.loads(b)["events"]]
    assert delivered == list(range(1, RECORDED_EVENTS + 1))


def test_a_full_queue_drops_new_events_and_counts_them(tmp_path: Path) -> None:
    cfg = WebhookSink(type="webhook", name="hook", url="http://127.0.0.1:9/", queue_max_bytes=4096)
    runner = SinkRunner(cfg, tmp_path)  # never started: nothing is delivered
    line = orjson.dumps({"pad": "z" * 1000}) + b"\n"
    for _ in range(6):
        runner.offer(line, 1)
    runner.stop()
    assert runner.stats.dropped == 2
    assert runner.queue.pending == 4 * len(line)


def test_queue_cuts_a_torn_tail_and_keeps_its_cursor_across_reopens(tmp_path: Path) -> None:
    queue = SinkQueue(tmp_path, 1 << 20)
    assert queue.append(b'{"seq":1}\n{"seq":2}\n{"seq":3}\n')
    lines, end = queue.read(2)
    assert lines == [b'{"seq":1}', b'{"seq":2}']
    queue.advance(end)
    queue.close()
    with (tmp_path / "queue.jsonl").open("ab") as f:
        f.write(b'{"seq":4')  # a crash in the middle of an append
    again = SinkQueue(tmp_path, 1 << 20)
    assert again.read(10) == ([b'{"seq":3}'], (tmp_path / "queue.jsonl").stat().st_size)
    assert again.append(b'{"seq":5}\n')
    assert again.read(10)[0] == [b'{"seq":3}', b'{"seq":5}']
    again.close()


def test_queue_compacts_its_delivered_head(tmp_path: Path) -> None:
    queue = SinkQueue(tmp_path, 8 << 20)
    line = b'{"pad":"' + b"q" * 1000 + b'"}\n'
    for _ in range(1500):
        assert queue.append(line)
    delivered = 0
    while delivered < 1400:  # reads stop at about a megabyte
        lines, end = queue.read(1400 - delivered)
        queue.advance(end)
        delivered += len(lines)
    assert queue.pending == 100 * len(line)
    assert queue.size < 1000 * len(line)  # the delivered head was cut off
    queue.close()
    reopened = SinkQueue(tmp_path, 8 << 20)
    assert len(reopened.read(1000)[0]) == 100
    reopened.close()


def test_a_relative_file_sink_path_is_relative_to_the_manifest(tmp_path: Path) -> None:
    manifest = load_manifest_text(
        "state: {dir: st}\naudit: {sinks: [{type: file, name: f, path: out/a.jsonl}]}\n"
    ).model_copy(update={"base_dir": tmp_path})
    hub = SinkHub.from_manifest(manifest)
    runner = hub.runners[0]
    assert isinstance(runner.transport, FileTransport)
    assert runner.transport.path == tmp_path / "out" / "a.jsonl"
    assert runner.queue.path == tmp_path / "st" / "sinks" / "f" / "queue.jsonl"
    hub.stop()
