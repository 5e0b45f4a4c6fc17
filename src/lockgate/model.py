"""The nouns every part of Lockgate shares. Frozen, slotted, protocol-neutral."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime


class PrincipalKind(enum.StrEnum):
    HUMAN = "human"
    MACHINE = "machine"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is behind a connection, as proven by a verified token."""

    subject: str
    groups: frozenset[str] = frozenset()
    kind: PrincipalKind = PrincipalKind.MACHINE
    issuer: str = "lockgate"
    token_id: str | None = None
    expires_at: datetime | None = None
    # Resource names the token is limited to; None means "no scope limit".
    scopes: frozenset[str] | None = None


@dataclass(frozen=True, slots=True)
class ClientInfo:
    """Where a connection came from and what it asked for."""

    address: str
    protocol: str
    user_name: str = ""
    application_name: str = ""


class SessionEnd(enum.StrEnum):
    CLIENT_TERMINATED = "client_terminated"
    CLIENT_DISCONNECTED = "client_disconnected"
    UPSTREAM_CLOSED = "upstream_closed"
    GATEWAY_SHUTDOWN = "gateway_shutdown"
    PROTOCOL_ERROR = "protocol_error"
    REFUSED = "refused"
    ERROR = "error"
    # Ended by the gateway while live: the token expired, the identity was revoked, or the
    # session reached the manifest's `identity.sessions.max_session`.
    TOKEN_EXPIRED = "token_expired"
    REVOKED = "revoked"
    MAX_SESSION = "max_session"
    # The just-in-time grant the session was admitted under expired or was revoked.
    GRANT_ENDED = "grant_ended"
    # The time window of its access rule (or of its grant's approval rule) closed.
    WINDOW_CLOSED = "window_closed"
    # An administrator ended it (`POST /api/sessions/{id}/end`).
    ENDED_BY_ADMIN = "ended_by_admin"


@dataclass(frozen=True, slots=True)
class Session:
    """An admitted connection of one principal to one resource."""

    id: str
    principal: Principal
    resource: str
    client: ClientInfo
    started_at: datetime
    # Read-only in depth (the access rule says `read_only: true`).
    read_only: bool = False
    # The just-in-time grant it was admitted under (its access rule `requires_grant`);
    # "" when one was required but had ended by the time the session opened.
    grant_id: str | None = None


class DecisionKind(enum.StrEnum):
    ALLOW = "allow"
    DENY = "deny"
    REVIEW = "review"


@dataclass(frozen=True, slots=True)
class Decision:
    """What policy says about a connection or a command."""

    kind: DecisionKind
    rule: str = ""
    reason: str = ""

    @property
    def allowed(self) -> bool:
        return self.kind is DecisionKind.ALLOW


ALLOW = Decision(DecisionKind.ALLOW)


@dataclass(frozen=True, slots=True)
class Command:
    """One statement (or other unit of work) a session asks a resource to run."""

    session_id: str
    seq: int
    text: str
    kind: str = ""
    tables: tuple[str, ...] = ()
    params: tuple[str | None, ...] | None = None
    decision: Decision = field(default=ALLOW)


@dataclass(frozen=True, slots=True)
class CapturedResult:
    """What a client received for one command, as the protocol's own messages (`format`).

    `data` holds at most the resource's caps; `rows_dropped` (None: unknown) and
    `bytes_dropped` count what was not kept.
    """

    format: str
    data: bytes
    rows: int
    rows_dropped: int | None
    bytes_dropped: int


@dataclass(frozen=True, slots=True)
class ResultSummary:
    """How a command ended: what came back and what it cost."""

    rows: int | None = None
    status: str = ""
    error_code: str | None = None
    error_message: str | None = None
    bytes_out: int = 0
    duration_ms: float = 0.0
    # The result rows kept for replay (database sessions with capture on).
    result: CapturedResult | None = None
    # Cells masked in what the client received, per masking rule (None: nothing masked).
    masked: Mapping[str, int] | None = None
