"""The manifest's audit shipping parts: `audit.sinks` and the `metrics` listener address.

Kept apart from `model.py` (which imports it). Each sink says `type: file`, `syslog` or
`webhook`; every sink has its own persistent queue in the state folder (see
`audit/sinks.py`), bounded by `queue_max_bytes`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Discriminator, Field, field_validator

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")

# syslog facilities by name (RFC 5424, section 6.2.1).
FACILITIES: dict[str, int] = {
    "kern": 0,
    "user": 1,
    "daemon": 3,
    "auth": 4,
    "syslog": 5,
    "authpriv": 10,
    "local0": 16,
    "local1": 17,
    "local2": 18,
    "local3": 19,
    "local4": 20,
    "local5": 21,
    "local6": 22,
    "local7": 23,
}


def split_address(text: str) -> tuple[str, int]:
    """`host:port` (IPv6 hosts in brackets) as a (host, port) pair."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected host:port, got {text!r}")
    return host.strip("[]"), int(port)


def _address(text: str) -> str:
    split_address(text)
    return text


Address = Annotated[str, AfterValidator(_address)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Sink(_Strict):
    # Names the sink's queue folder (STATE/sinks/NAME) and its metrics label.
    name: str
    # The persistent queue's bound: events arriving while it is full are not queued for this
    # sink (counted in lockgate_sink_dropped_total; the store still has them).
    queue_max_bytes: int = Field(default=64 << 20, ge=4096)
    # Events per delivery.
    batch_max: int = Field(default=500, ge=1, le=100_000)
    # Retry delays after a failed delivery: doubling from backoff_initial up to backoff_max.
    backoff_initial: float = Field(default=0.5, gt=0, le=3600)
    backoff_max: float = Field(default=60.0, gt=0, le=86400)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError("use letters, digits, '_', '.', '-' (at most 63 characters)")
        return v


class FileSink(_Sink):
    """JSON lines appended to a file, rotated by size (`path.1` is the newest old file)."""

    type: Literal["file"]
    path: Path
    max_bytes: int = Field(default=64 << 20, ge=1024)
    keep: int = Field(default=5, ge=0, le=1000)


class SyslogSink(_Sink):
    """RFC 5424 messages over UDP (one datagram each) or TCP (RFC 6587 octet counting)."""

    type: Literal["syslog"]
    address: Address
    transport: Literal["udp", "tcp"] = "udp"
    facility: str = "auth"
    app_name: str = "lockgate"
    # A UDP message longer than this is cut (the event JSON then ends with "...").
    max_message: int = Field(default=8192, ge=480, le=65000)

    @field_validator("facility")
    @classmethod
    def _facility(cls, v: str) -> str:
        if v not in FACILITIES:
            raise ValueError(f"unknown facility; use one of {', '.join(FACILITIES)}")
        return v


class WebhookSink(_Sink):
    """Batches of events POSTed as JSON; retried with backoff until the endpoint takes them."""

    type: Literal["webhook"]
    url: str
    timeout: float = Field(default=10.0, gt=0, le=300)
    batch_max: int = Field(default=100, ge=1, le=10_000)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("expected an http:// or https:// URL")
        if parts.password:
            raise ValueError("must not hold a password; the webhook URL is shown in logs")
        return v


def _unique(sinks: list[AnySink]) -> list[AnySink]:
    seen: set[str] = set()
    for s in sinks:
        if s.name in seen:
            raise ValueError(f"two sinks are named {s.name!r}; each needs its own name")
        seen.add(s.name)
    return sinks


AnySink = Annotated[FileSink | SyslogSink | WebhookSink, Discriminator("type")]
SinkList = Annotated[list[AnySink], AfterValidator(_unique)]
