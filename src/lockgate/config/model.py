"""The manifest's schema: what `lockgate.yaml` may say. Pure data, validated by pydantic."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BeforeValidator,
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)

from lockgate.config.admin import Admin
from lockgate.config.common import (
    NAME,
    ListenerBase,
    Strict,
    TLSListener,
    credential_reference,
)
from lockgate.config.common import parse_duration as parse_duration  # re-exported
from lockgate.config.sinks import Address, SinkList
from lockgate.config.ssh import SshListener, SshResource, SshSettings
from lockgate.config.windows import TimeWindow


class Listener(ListenerBase):
    name: str = "postgres"
    protocol: Literal["postgres"] = "postgres"
    address: str = "127.0.0.1:6432"
    tls: TLSListener = TLSListener()


class UpstreamTLS(Strict):
    """How the gateway talks TLS to the target, with libpq's sslmode names."""

    mode: Literal["disable", "prefer", "require", "verify-ca", "verify-full"] = "prefer"
    ca: Path | None = None
    server_name: str | None = None


class PostgresUpstream(Strict):
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
        return credential_reference(v, "the password")


class ResultCapture(Strict):
    """How much of each statement's result the audit trail keeps (see docs/audit.md)."""

    # Per statement: rows and DataRow bytes kept, each a number or `full` (no cap).
    rows: int | Literal["full"] = Field(default=100)
    bytes: int | Literal["full"] = Field(default=65536)

    @field_validator("rows", "bytes")
    @classmethod
    def _cap(cls, v: int | str) -> int | str:
        if isinstance(v, int) and v < 0:
            raise ValueError("must be 0 or more, or `full`")
        return v


def _capture_off(v: Any) -> Any:
    # YAML 1.1 reads a bare `off` as false: both mean "keep no result rows".
    return "off" if v is False else v


CaptureSetting = Annotated[ResultCapture | Literal["off"], BeforeValidator(_capture_off)]


class Resource(Strict):
    name: str
    type: Literal["postgres"] = "postgres"
    description: str = ""
    upstream: PostgresUpstream
    # Result rows the audit trail keeps per statement; absent: `audit.capture`.
    capture: CaptureSetting | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME.match(v):
            raise ValueError("letters, digits, '_', '.', '-' only, at most 63 characters")
        return v


def _kind(key: str) -> Any:
    """A discriminator reading `key` (default `postgres`) from raw data or a model."""

    def pick(v: Any) -> str:
        found = v.get(key, "postgres") if isinstance(v, dict) else getattr(v, key, "postgres")
        return found if isinstance(found, str) else "postgres"

    return Discriminator(pick)


# A listener is PostgreSQL unless it says `protocol: ssh`; a resource unless `type: ssh`.
AnyListener = Annotated[
    Annotated[Listener, Tag("postgres")] | Annotated[SshListener, Tag("ssh")], _kind("protocol")
]
AnyResource = Annotated[
    Annotated[Resource, Tag("postgres")] | Annotated[SshResource, Tag("ssh")], _kind("type")
]


class AccessRule(Strict):
    """Who (subjects and/or groups) may reach which resources. `*` matches every resource."""

    name: str
    resources: list[str] = Field(min_length=1)
    subjects: list[str] = []
    groups: list[str] = []
    # The session is read-only in depth: the upstream starts with
    # default_transaction_read_only=on and every way of turning it off is refused.
    read_only: bool = False
    # Only principals holding an active just-in-time grant for the resource get in
    # (`lockgate request RESOURCE --for 30m`, approved under `approvals.rules`).
    requires_grant: bool = False
    # Only inside this time window (days, hours, time zone): at connect, and live
    # sessions end when it closes.
    when: TimeWindow | None = None


class GatewayTokens(Strict):
    issuer: str = "lockgate"
    audience: str = "lockgate"
    default_ttl: str = "1h"
    max_ttl: str = "30d"

    @field_validator("default_ttl", "max_ttl")
    @classmethod
    def _ttl(cls, v: str) -> str:
        parse_duration(v)
        return v


# Asymmetric JWS algorithms an OIDC issuer may be trusted with. `none` and the HMAC family
# (HS*) are never accepted: a verifier holding only public keys cannot check them safely.
OIDC_ALGORITHMS = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
)
_LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


class ClaimRule(Strict):
    """Groups given to a token whose claims all match: `{claim: pattern or [patterns]}`.

    Patterns are shell-style (`acme/*`, `refs/heads/release-*`), matched case-sensitively
    against the claim's text; a list claim matches when any of its items does.
    """

    name: str
    match: dict[str, str | list[str]] = Field(min_length=1)
    groups: list[str] = Field(min_length=1)


class OIDCIssuer(Strict):
    """One trusted OpenID Connect issuer (a company IdP, GitHub Actions, GitLab CI...)."""

    issuer: str
    audiences: list[str] = Field(min_length=1)
    algorithms: list[str] = ["RS256", "ES256", "EdDSA"]
    clock_skew: str = "60s"
    subject_claim: str = "sub"
    # Prepended to the subject, e.g. `gh:`, so subjects of two issuers cannot collide.
    subject_prefix: str = ""
    groups_claim: str | None = "groups"
    kind: Literal["human", "machine"] = "human"
    claim_rules: list[ClaimRule] = []
    # Refuse a token that no claim rule matched (recommended for CI issuers).
    require_rule_match: bool = False
    # Read keys from here instead of the discovery document's `jwks_uri`
    # (`{issuer}/.well-known/openid-configuration`).
    jwks_uri: str | None = None
    # An unknown `kid` refetches the keys at most once per this interval.
    jwks_min_refresh: str = "30s"
    # Keys older than this are refetched (the old ones stay in use if the provider is down).
    jwks_max_age: str = "1h"
    http_timeout: float = Field(default=5.0, gt=0, le=60)
    # `lockgate login` (people): the client registered at the provider for the CLI, an
    # optional secret (a credential reference env:NAME or file:PATH, never the secret) and
    # the scopes asked for (add `offline_access` where the provider wants it for refresh).
    client_id: str | None = None
    client_secret: str | None = None
    scopes: list[str] = ["openid", "email", "profile"]

    @field_validator("client_secret")
    @classmethod
    def _client_secret(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("env:", "file:")):
            raise ValueError(
                "must be a credential reference (env:NAME or file:PATH), never the secret itself"
            )
        return v

    @field_validator("scopes")
    @classmethod
    def _scopes(cls, v: list[str]) -> list[str]:
        if "openid" not in v:
            raise ValueError("must include 'openid' (an ID token is what the gateway accepts)")
        return v

    @field_validator("issuer", "jwks_uri")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is None:
            return v
        parts = urlsplit(v)
        if parts.scheme == "https" and parts.hostname:
            return v
        if parts.scheme == "http" and parts.hostname in _LOOPBACK_HOSTS:
            return v  # plain HTTP only to a provider on this machine (tests, local IdPs)
        raise ValueError("must be an https:// URL (http:// only for a loopback address)")

    @field_validator("algorithms")
    @classmethod
    def _algorithms(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("name at least one algorithm, e.g. [RS256]")
        for alg in v:
            if alg not in OIDC_ALGORITHMS:
                raise ValueError(
                    f"algorithm {alg!r} is not accepted; choose from {', '.join(OIDC_ALGORITHMS)}"
                    " (never 'none' or HMAC, which a public key cannot verify)"
                )
        return v

    @field_validator("clock_skew", "jwks_min_refresh", "jwks_max_age")
    @classmethod
    def _duration(cls, v: str) -> str:
        parse_duration(v)
        return v

    @field_validator("claim_rules")
    @classmethod
    def _rules(cls, v: list[ClaimRule]) -> list[ClaimRule]:
        names = [r.name for r in v]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"claim rule names must be unique: {', '.join(dupes)}")
        return v


class SessionLimits(Strict):
    """What happens to a live session when its token expires or is revoked."""

    # `end`: the session ends when its token expires; `allow`: it may outlive the token
    # up to `max_session`. Revocation always ends a session within `check_interval`.
    on_token_expiry: Literal["end", "allow"] = "end"
    max_session: str = "8h"
    check_interval: str = "2s"

    @field_validator("max_session", "check_interval")
    @classmethod
    def _duration(cls, v: str) -> str:
        if parse_duration(v) < 1:
            raise ValueError("must be at least 1s")
        return v


class Identity(Strict):
    gateway_tokens: GatewayTokens = GatewayTokens()
    oidc: list[OIDCIssuer] = []
    sessions: SessionLimits = SessionLimits()

    @field_validator("oidc")
    @classmethod
    def _unique_issuers(cls, v: list[OIDCIssuer]) -> list[OIDCIssuer]:
        seen = [i.issuer for i in v]
        dupes = sorted({i for i in seen if seen.count(i) > 1})
        if dupes:
            raise ValueError(f"each issuer may be listed once: {', '.join(dupes)}")
        return v

    @model_validator(mode="after")
    def _gateway_issuer_is_distinct(self) -> Identity:
        if any(i.issuer == self.gateway_tokens.issuer for i in self.oidc):
            raise ValueError(
                f"an oidc issuer is named '{self.gateway_tokens.issuer}', like the gateway's own "
                "tokens (identity.gateway_tokens.issuer): give the gateway's tokens another issuer"
            )
        return self


class State(Strict):
    # SQLAlchemy URL of the state store; a relative sqlite path is relative to the manifest.
    url: str = "sqlite:///lockgate-state/lockgate.db"
    # Where keys live (token signing key, secret-store key, TLS material).
    dir: Path = Path("lockgate-state")


class Audit(Strict):
    # Record extended-protocol parameter values (they may hold personal data).
    record_parameters: bool = True
    # Result rows kept per statement (after masking), unless a resource says otherwise.
    capture: CaptureSetting = ResultCapture()
    # fdatasync the audit journal before forwarding each group of commands: survives a power
    # cut, not only a crash of the gateway, at the cost of latency.
    fsync: bool = False
    # How long records are kept (e.g. 365d) before `lockgate audit purge` deletes them; None
    # keeps them forever. `resource_retention` overrides it per resource name.
    retention: str | None = None
    resource_retention: dict[str, str] = {}
    # Where the ingester ships events after each committed batch (see docs/audit-events.md).
    sinks: SinkList = []
    # BENCHMARK ONLY: lets `lockgate serve` honour LOCKGATE_AUDIT_NULL=1 (nothing recorded).
    # Without it that variable makes the gateway refuse to start.
    benchmark_null_sink: bool = False

    @field_validator("retention")
    @classmethod
    def _retention(cls, v: str | None) -> str | None:
        if v is not None and parse_duration(v) < 1:
            raise ValueError("must be at least 1s")
        return v

    @field_validator("resource_retention")
    @classmethod
    def _resource_retention(cls, v: dict[str, str]) -> dict[str, str]:
        for text in v.values():
            if parse_duration(text) < 1:
                raise ValueError("each retention must be at least 1s")
        return v

    def capture_for(self, resource: Resource) -> ResultCapture | None:
        """The result capture caps for `resource`, None when it keeps no rows."""
        setting = resource.capture if resource.capture is not None else self.capture
        return setting if isinstance(setting, ResultCapture) else None

    def retention_seconds(self, resource: str) -> int | None:
        """How long records of `resource` are kept, in seconds (None: forever)."""
        text = self.resource_retention.get(resource, self.retention)
        return None if text is None else parse_duration(text)


class CustomDetector(Strict):
    """A named content detector: a regular expression (Python syntax)."""

    name: str
    pattern: str

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, v: str) -> str:
        try:
            re.compile(v)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from None
        if re.compile(v).match(""):
            raise ValueError("the pattern matches the empty string")
        return v


MaskStrategyName = Literal["redact", "partial", "hash", "null"]


class ColumnMask(Strict):
    """Mask one table column (`schema.table.column`, `*` and `?` wildcards) wherever it goes."""

    column: str
    strategy: MaskStrategyName = "redact"
    # `redact`: the text shown instead of the value.
    text: str = "****"
    # `partial`: letters/digits kept at the end (emails keep their domain instead).
    keep_last: int = Field(default=4, ge=0, le=64)

    @field_validator("column")
    @classmethod
    def _pattern(cls, v: str) -> str:
        parts = v.split(".")
        if not 1 <= len(parts) <= 3 or any(not p for p in parts):
            raise ValueError("expected schema.table.column, table.column or column (* allowed)")
        return v


class MaskingRule(Strict):
    """Who sees which columns and content masked on which resources."""

    name: str
    resources: list[str] = Field(min_length=1)
    # Whom the rule masks for; neither subjects nor groups: everyone (except `clear_*`).
    subjects: list[str] = []
    groups: list[str] = []
    # Identities that see clear values even when matched above.
    clear_subjects: list[str] = []
    clear_groups: list[str] = []
    # `mask`: derived outputs of masked columns are masked whole; `strict`: refused.
    mode: Literal["mask", "strict"] = "mask"
    columns: list[ColumnMask] = []
    # Content detectors for the other text-like result columns (built-in or custom names).
    detect: list[str] = []
    detect_strategy: MaskStrategyName = "redact"


class Masking(Strict):
    # Key of the `hash` strategy (a credential reference); default: a key in the state folder.
    hash_key: str | None = None
    detectors: list[CustomDetector] = []
    rules: list[MaskingRule] = []

    @field_validator("hash_key")
    @classmethod
    def _reference(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("env:", "file:", "store:")):
            raise ValueError("must be a credential reference (env:NAME, file:PATH or store:NAME)")
        return v

    @model_validator(mode="after")
    def _detector_names(self) -> Masking:
        from lockgate.masking.detectors import known_names

        known = set(known_names()) | {d.name for d in self.detectors}
        for rule in self.rules:
            for name in rule.detect:
                if name not in known:
                    raise ValueError(
                        f"masking rule '{rule.name}': unknown detector '{name}' "
                        f"(expected one of: {', '.join(sorted(known))})"
                    )
        return self


GuardrailAction = Literal["deny", "review", "allow"]


class GuardrailMatch(Strict):
    """Statement facts a guardrail rule matches: every key given must hold (any listed value)."""

    kinds: list[str] = []
    flags: list[str] = []
    functions: list[str] = []
    # Relations touched (read or written), read, written; `schema.table` or `table`, `*` wildcards.
    tables: list[str] = []
    reads: list[str] = []
    writes: list[str] = []
    # Bulk reads: also match only when the planner estimates (EXPLAIN, nothing executed)
    # that the statement returns more than this many rows.
    rows_over: int | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _known_names(self) -> GuardrailMatch:
        from lockgate.sql.analyze import KINDS
        from lockgate.sql.catalog import FLAGS

        for label, given, known in (("kind", self.kinds, KINDS), ("flag", self.flags, FLAGS)):
            for name in given:
                if name not in known:
                    raise ValueError(
                        f"unknown {label} '{name}' (expected one of: {', '.join(sorted(known))})"
                    )
        return self


class GuardrailRule(Strict):
    """A statement rule, or (`use`) a shipped rule set applied with this entry's scope."""

    name: str = ""
    use: str | None = None
    resources: list[str] = ["*"]
    # Whom the rule applies to; neither subjects nor groups: everyone.
    subjects: list[str] = []
    groups: list[str] = []
    match: GuardrailMatch = GuardrailMatch()
    action: GuardrailAction = "deny"
    message: str = ""
    # `monitor`: record what the rule would have done and let the statement through.
    mode: Literal["enforce", "monitor"] = "enforce"

    @model_validator(mode="after")
    def _named(self) -> GuardrailRule:
        if self.use is None:
            if not self.name:
                raise ValueError("a guardrail rule needs a `name` (or `use: RULE-SET`)")
            return self
        from lockgate.policy.rulesets import RULE_SETS

        if self.use not in RULE_SETS:
            raise ValueError(
                f"unknown rule set '{self.use}' (shipped: {', '.join(sorted(RULE_SETS))})"
            )
        if "match" in self.model_fields_set or "action" in self.model_fields_set:
            raise ValueError("`use` takes a shipped rule set as is: no `match` or `action` here")
        return self


class Guardrails(Strict):
    # What to do with text the SQL parser cannot read (and fastpath function calls), for
    # sessions that at least one guardrail rule applies to.
    unparsed: GuardrailAction = "deny"
    rules: list[GuardrailRule] = []


class ApprovalRule(Strict):
    """Who reviews which held statements (by guardrail rule) and access requests, and how."""

    name: str
    resources: list[str] = ["*"]
    # What the rule covers: held statements, access requests (grants), or both.
    requests: list[Literal["statement", "grant"]] = ["statement", "grant"]
    # Guardrail rule names (`*` wildcards) whose `review` this rule handles.
    guardrails: list[str] = ["*"]
    # Groups whose members may approve or deny; nobody ever decides their own request.
    reviewers: list[str] = Field(min_length=1)
    quorum: int = Field(default=1, ge=1, le=10)
    # Each approval must come from a reviewer group not counted before.
    distinct_groups: bool = False
    # A request nobody decided within this time expires (the held client gets an error).
    expires: str = "15m"
    # Longest grant an access request may ask for.
    max_grant: str = "8h"
    # Execution window: approved statements run, and grants are used, only inside it.
    window: TimeWindow | None = None

    @field_validator("expires", "max_grant")
    @classmethod
    def _duration(cls, v: str) -> str:
        if parse_duration(v) < 1:
            raise ValueError("must be at least 1s")
        return v

    @model_validator(mode="after")
    def _enough_groups(self) -> ApprovalRule:
        if self.distinct_groups and self.quorum > len(set(self.reviewers)):
            raise ValueError(
                f"quorum {self.quorum} from distinct groups needs at least {self.quorum} "
                "reviewer groups"
            )
        return self


class ApprovalWebhook(Strict):
    """A URL that gets a JSON event on every new request and decision."""

    url: str
    # `slack`: a Slack-compatible payload (`text`), else Lockgate's own event.
    format: Literal["lockgate", "slack"] = "lockgate"
    attempts: int = Field(default=3, ge=1, le=10)
    timeout: float = Field(default=5.0, gt=0, le=60)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme == "https" and parts.hostname:
            return v
        if parts.scheme == "http" and parts.hostname in _LOOPBACK_HOSTS:
            return v
        raise ValueError("must be an https:// URL (http:// only for a loopback address)")


class Approvals(Strict):
    """Just-in-time approval: held statements and time-boxed access grants."""

    rules: list[ApprovalRule] = []
    webhooks: list[ApprovalWebhook] = []
    # How often a gateway process looks for decisions on the requests it holds.
    poll_interval: float = Field(default=0.5, gt=0, le=30)


class Manifest(Strict):
    version: Literal[1] = 1
    state: State = State()
    listeners: list[AnyListener] = [Listener()]
    identity: Identity = Identity()
    resources: list[AnyResource] = []
    access: list[AccessRule] = []
    audit: Audit = Audit()
    guardrails: Guardrails = Guardrails()
    masking: Masking = Masking()
    ssh: SshSettings = SshSettings()
    approvals: Approvals = Approvals()
    # host:port of the Prometheus /metrics listener, served by the `lockgate serve` supervisor.
    metrics: Address | None = None
    # The admin HTTP API and web console (docs/admin.md); absent: not served.
    admin: Admin | None = None

    # Set by the loader, not by the YAML: the directory relative paths resolve against.
    base_dir: Path = Field(default=Path("."), exclude=True)

    @model_validator(mode="after")
    def _admin_issuer(self) -> Manifest:
        sign_in = self.admin.oidc if self.admin else None
        if sign_in is None:
            return self
        known = [i.issuer for i in self.identity.oidc]
        if sign_in.issuer is None and len(known) != 1:
            raise ValueError(
                "admin.oidc.issuer: name one of the issuers under identity.oidc "
                f"({', '.join(known) or 'none is listed: add one'})"
            )
        if sign_in.issuer is not None and sign_in.issuer not in known:
            raise ValueError(
                f"admin.oidc.issuer {sign_in.issuer!r} is not listed under identity.oidc "
                "(its keys verify the console's ID tokens): add it there"
            )
        wanted = sign_in.issuer or known[0]
        issuer = next(i for i in self.identity.oidc if i.issuer == wanted)
        if sign_in.client_id not in issuer.audiences:
            raise ValueError(
                f"admin.oidc.client_id {sign_in.client_id!r} must be one of the audiences of "
                f"issuer {issuer.issuer} under identity.oidc (the console's ID tokens carry it)"
            )
        return self

    def resource(self, name: str) -> Resource | None:
        """The PostgreSQL resource called `name` (see `target` for any type)."""
        for r in self.resources:
            if r.name == name and isinstance(r, Resource):
                return r
        return None

    def target(self, name: str) -> Resource | SshResource | None:
        """The resource called `name`, whatever its type."""
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
            rel = url[len(prefix) :]
            if rel and rel != ":memory:":
                return prefix + str((self.base_dir / rel).resolve())
        return url
