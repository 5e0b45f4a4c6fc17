"""The manifest's `audit.sinks` and `metrics` address."""

from __future__ import annotations

from pathlib import Path

import pytest

from lockgate.config.loader import load_manifest_text
from lockgate.config.sinks import FileSink, SyslogSink, WebhookSink
from lockgate.errors import ConfigError

VALID = """\
metrics: 127.0.0.1:9187
audit:
  sinks:
    - {type: file, name: local, path: /var/log/lockgate/audit.jsonl, max_bytes: 1048576}
    - {type: syslog, name: siem, address: "127.0.0.1:514", transport: tcp, facility: local3}
    - {type: webhook, name: hook, url: "https://collector.example/audit", backoff_max: 30}
"""


def errors_of(text: str) -> str:
    with pytest.raises(ConfigError) as exc:
        load_manifest_text(text, "m.yaml")
    return exc.value.message


def test_sinks_of_each_type_and_the_metrics_address() -> None:
    m = load_manifest_text(VALID)
    assert m.metrics == "127.0.0.1:9187"
    file, syslog, hook = m.audit.sinks
    assert isinstance(file, FileSink) and file.path == Path("/var/log/lockgate/audit.jsonl")
    assert isinstance(syslog, SyslogSink) and syslog.transport == "tcp"
    assert isinstance(hook, WebhookSink) and hook.backoff_max == 30
    assert not m.audit.benchmark_null_sink


def test_no_sinks_and_no_metrics_by_default() -> None:
    m = load_manifest_text("version: 1\n")
    assert m.audit.sinks == [] and m.metrics is None


@pytest.mark.parametrize(
    ("text", "says"),
    [
        (
            "audit: {sinks: [{type: file, name: a, path: x}, {type: file, name: a, path: y}]}",
            "two sinks are named 'a'",
        ),
        ("audit: {sinks: [{type: webhook, name: h, url: 'ftp://x/'}]}", "http:// or https://"),
        ("audit: {sinks: [{type: webhook, name: h, url: 'https://u:pw@x/'}]}", "password"),
        ("audit: {sinks: [{type: syslog, name: s, address: nowhere}]}", "host:port"),
        ("audit: {sinks: [{type: syslog, name: s, address: 'h:1', facility: x}]}", "facility"),
        ("audit: {sinks: [{type: kafka, name: k}]}", "kafka"),
        ("metrics: '9187'", "host:port"),
    ],
)
def test_bad_sinks_are_named(text: str, says: str) -> None:
    assert says in errors_of(text)


def test_a_webhook_password_is_not_echoed() -> None:
    assert "s3cret" not in errors_of(
        "audit: {sinks: [{type: webhook, name: h, url: 'https://u:s3cret@x/'}]}"
    )
