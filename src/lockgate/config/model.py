"""The manifest's schema: what `lockgate.yaml` may say. Pure data, validated by pydantic."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_DURATION = re.compile(r"^(\d+)([smhd])$")


def parse_duration(text: str) -> int:
    """Turn `30s`, `15m`, `1h`, `7d` into seconds."""
    m = _DURATION.match(text.strip())
    if not m:
        raise ValueError(f"expected a duration such as 30s, 15m, 1h or 7d, got {text!r}")
    return int(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TLSListener(_Strict):
    """Server-side TLS for a listener. No cert/key given: a self-signed pair is generated."""

    enabled: bool = True
    cert: Path | None = None
    key: Path | None = None


class Listener(_Strict):
    name: str = "postgres"
    protocol: Literal["postgres"] = "postgres"
    address: str = "127.0.0.1:6432"
    tls: TLSListener = TLSListener()
    # Worker processes sharing the listening socket; 0 means one per CPU core.
    workers: int = Field(default=1, ge=0, le=256)
    # How long a client may take from connecting to sending its password (e.g. 30s).
    startup_timeout: str = "30s"

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


class UpstreamTLS(_Strict):
    """How the gateway talks TLS to the target, with libpq's sslmode names."""

    mode: Literal["disable", "prefer", "require", "verify-ca", "verify-full"] = "prefer"
    ca: Path | None = None
    server_name: str | None = None


class PostgresUpstream(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=5432, ge=1, le=65535)
    database: str
    user: str
    # A credential reference: env:NAME, file:PATH or store:NAME. Never the secret itself.
    password: str | None = None
    tls: UpstreamTLS = UpstreamTLS()
    connect_timeout: float = Field(default=10.0, gt=0)

    @field_validator("password")
    @classmethod
    def _reference(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("env:", "file:", "store:")):
            raise ValueError(
                "must be a credential reference (env:NAME, file:PATH or store:NAME), "
                "never the password itself; store one with `lockgate secret set NAME`"
            )
        return v


class Resource(_Strict):
    name: str
    type: Literal["postgres"] = "postgres"
    description: str = ""
    upstream: PostgresUpstream

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError("letters, digits, '_', '.', '-' only, at most 63 characters")
        return v


class AccessRule(_Strict):
    """Who (subjects and/or groups) may reach which resources. `*` matches every resource."""

    name: str
    resources: list[str] = Field(min_length=1)
    subjects: list[str] = []
    groups: list[str] = []


class GatewayTokens(_Strict):
    issuer: str = "lockgate"
    audience: str = "lockgate"
    default_ttl: str = "1h"
    max_ttl: str = "30d"

    @field_validator("default_ttl", "max_ttl")
    @classmethod
    def _ttl(cls, v: str) -> str:
        parse_duration(v)
        return v


class Identity(_Strict):
    gateway_tokens: GatewayTokens = GatewayTokens()


class State(_Strict):
    # SQLAlchemy URL of the state store; a relative sqlite path is relative to the manifest.
    url: str = "sqlite:///lockgate-state/lockgate.db"
    # Where keys live (token signing key, secret-store key, TLS material).
    dir: Path = Path("lockgate-state")


class Audit(_Strict):
    # Record extended-protocol parameter values (they may hold personal data).
    record_parameters: bool = True
    # fdatasync the audit journal before forwarding each group of commands: survives a power
    # cut, not only a crash of the gateway, at the cost of latency.
    fsync: bool = False


class Manifest(_Strict):
    version: Literal[1] = 1
    state: State = State()
    listeners: list[Listener] = [Listener()]
    identity: Identity = Identity()
    resources: list[Resource] = []
    access: list[AccessRule] = []
    audit: Audit = Audit()

    # Set by the loader, not by the YAML: the directory relative paths resolve against.
    base_dir: Path = Field(default=Path("."), exclude=True)

    def resource(self, name: str) -> Resource | None:
        for r in self.resources:
            if r.name == name:
                return r
        return None

    def path(self, p: Path) -> Path:
        """Resolve a manifest-relative path."""
        return p if p.is_absolute() else (self.base_dir / p)

    @property
    def state_dir(self) -> Path:
        return self.path(self.state.dir)

    @property
    def state_url(self) -> str:
        url = self.state.url
        prefix = "sqlite:///"
        if url.startswith(prefix) and not url.startswith(prefix + "/"):
            rel = url[len(prefix):]
            if rel and rel != ":memory:":
                return prefix + str((self.base_dir / rel).resolve())
        return url
