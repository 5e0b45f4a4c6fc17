"""The manifest's `admin:` section: the admin HTTP API and web console listener.

Kept apart from `model.py` (which imports it). Sign-in reuses the identity section: the OIDC
issuer named here must be one of `identity.oidc` (its keys verify the ID tokens), and
gateway tokens are accepted as everywhere else.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from pydantic import Field, field_validator

from lockgate.config.common import Strict as _Strict
from lockgate.config.common import TLSListener, credential_reference, parse_duration
from lockgate.config.sinks import Address

_LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


class AdminSignIn(_Strict):
    """Browser sign-in with the authorization code flow (PKCE, state, nonce)."""

    # An issuer listed under `identity.oidc`; omitted: the only one listed there.
    issuer: str | None = None
    # The client registered at the provider for the console (its redirect URI is
    # `{public_url}/auth/callback`), and an optional secret as a credential reference.
    client_id: str
    client_secret: str | None = None
    scopes: list[str] = ["openid", "email", "profile"]
    # How the provider names this sign-in in the console ("Sign in with ..."); default: issuer.
    display_name: str | None = None

    @field_validator("client_secret")
    @classmethod
    def _client_secret(cls, v: str | None) -> str | None:
        return credential_reference(v, "the client secret")

    @field_validator("scopes")
    @classmethod
    def _scopes(cls, v: list[str]) -> list[str]:
        if "openid" not in v:
            raise ValueError("must include 'openid' (the console signs in with an ID token)")
        return v


class AdminRoles(_Strict):
    """Which groups hold which console role; everyone else sees only their own things."""

    admin: list[str] = []
    auditor: list[str] = []
    reviewer: list[str] = []


class Admin(_Strict):
    """The admin API and web console, served by one gateway process."""

    listen: Address = "127.0.0.1:8443"
    tls: TLSListener = TLSListener()
    # The URL people open (behind a proxy or a DNS name); default: from `listen`.
    public_url: str | None = None
    oidc: AdminSignIn | None = None
    roles: AdminRoles = AdminRoles()
    # How long a browser session lasts (it also ends when the ID token or grant behind it
    # is revoked).
    session_ttl: str = "8h"
    # How often server-sent events look for new reviews and sessions in the state store.
    events_interval: float = Field(default=1.0, gt=0, le=30)

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, v: str | None) -> str | None:
        if v is None:
            return v
        parts = urlsplit(v)
        if parts.scheme == "https" and parts.hostname:
            return v.rstrip("/")
        if parts.scheme == "http" and parts.hostname in _LOOPBACK_HOSTS:
            return v.rstrip("/")
        raise ValueError("must be an https:// URL (http:// only for a loopback address)")

    @field_validator("session_ttl")
    @classmethod
    def _ttl(cls, v: str) -> str:
        if parse_duration(v) < 60:
            raise ValueError("must be at least 1m")
        return v

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])

    def base_url(self, bound_port: int | None = None) -> str:
        """Where browsers reach the console (the OIDC redirect URI is built on it)."""
        if self.public_url:
            return self.public_url
        scheme = "https" if self.tls.enabled else "http"
        host = self.host if self.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"{scheme}://{host}:{bound_port or self.port}"
