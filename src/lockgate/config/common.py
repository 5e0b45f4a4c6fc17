"""Pieces every part of the manifest schema shares: durations, names, references, listeners."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_DURATION = re.compile(r"^(\d+)([smhd])$")
_REFERENCE_PREFIXES = ("env:", "file:", "store:")


def parse_duration(text: str) -> int:
    """Turn `30s`, `15m`, `1h`, `7d` into seconds."""
    m = _DURATION.match(text.strip())
    if not m:
        raise ValueError(f"expected a duration such as 30s, 15m, 1h or 7d, got {text!r}")
    return int(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


def credential_reference(v: str | None, what: str = "the secret") -> str | None:
    """Accept only a reference to a secret (env:, file:, store:), never the secret itself."""
    if v is not None and not v.startswith(_REFERENCE_PREFIXES):
        raise ValueError(
            "must be a credential reference (env:NAME, file:PATH or store:NAME), "
            f"never {what} itself; store one with `lockgate secret set NAME`"
        )
    return v


class Strict(BaseModel):
    """A manifest block: unknown keys are errors, values are frozen once loaded."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class TLSListener(Strict):
    """Server-side TLS for a listener. No cert/key given: a self-signed pair is generated."""

    enabled: bool = True
    cert: Path | None = None
    key: Path | None = None


class ListenerBase(Strict):
    """What every listener has: an address, worker processes and a startup deadline."""

    address: str
    # Worker processes sharing the listening socket; 0 means one per CPU core.
    workers: int = Field(default=1, ge=0, le=256)
    # How long a client may take from connecting to finishing authentication (e.g. 30s).
    startup_timeout: str = "30s"
    # After each chunk a session receives, its worker polls its sockets for this long
    # instead of sleeping (proxy/busypoll.py); 0 turns it off.
    busy_poll_us: int = Field(default=200, ge=0, le=10_000)

    @field_validator("address")
    @classmethod
    def _address(cls, v: str) -> str:
        host, sep, port = v.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"expected HOST:PORT such as 127.0.0.1:6432, got {v!r}")
        return v

    @field_validator("startup_timeout")
    @classmethod
    def _startup_timeout(cls, v: str) -> str:
        if parse_duration(v) < 1:
            raise ValueError("must be at least 1s")
        return v

    @property
    def startup_timeout_seconds(self) -> float:
        return float(parse_duration(self.startup_timeout))

    @property
    def host(self) -> str:
        return self.address.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.address.rpartition(":")[2])
