"""Which live sessions must end now: token expired, identity revoked, or too long open.

The manifest's `identity.sessions` decides: with `on_token_expiry: end` a session ends when
the token it was opened with expires; with `allow` it may outlive the token. Either way no
session outlives `max_session`, and a revoked token or subject ends its sessions at the next
check (protocol handlers call `verdicts` every `check_interval`, and at once when a
revocation, a revoked grant or an end-session request notifies `LIVE_SESSIONS`, wakeups.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from lockgate.config.model import Manifest, parse_duration
from lockgate.identity.revocation import ensure_tables, revoked_principals
from lockgate.identity.tables import session_terminations
from lockgate.identity.tokens import format_duration, iso
from lockgate.model import Session, SessionEnd
from lockgate.wakeups import SESSIONS, notify

log = logging.getLogger("lockgate.identity.sessions")


@dataclass(frozen=True, slots=True)
class SessionVerdict:
    """A live session that must end, why (for the audit) and what to tell the client."""

    session: Session
    end: SessionEnd
    message: str


class LiveSessionPolicy:
    """Applies `identity.sessions` to the sessions a process holds."""

    def __init__(self, manifest: Manifest, engine: Engine) -> None:
        limits = manifest.identity.sessions
        self.end_at_expiry = limits.on_token_expiry == "end"
        self.max_session = timedelta(seconds=parse_duration(limits.max_session))
        self.check_interval = float(parse_duration(limits.check_interval))
        self._gateway_issuer = manifest.identity.gateway_tokens.issuer
        self._engine = engine
        ensure_tables(engine)
        session_terminations.create(engine, checkfirst=True)

    def over_time(self, session: Session, now: datetime | None = None) -> SessionVerdict | None:
        """The verdict for a session whose token or length ran out at `now`, else None."""
        now = now or datetime.now(UTC)
        if now - session.started_at >= self.max_session:
            length = format_duration(int(self.max_session.total_seconds()))
            return SessionVerdict(
                session,
                SessionEnd.MAX_SESSION,
                f"the session reached its maximum length of {length}",
            )
        expires = session.principal.expires_at
        if self.end_at_expiry and expires is not None and now >= expires:
            return SessionVerdict(
                session, SessionEnd.TOKEN_EXPIRED, f"the session's token expired at {iso(expires)}"
            )
        return None

    async def verdicts(
        self, sessions: Sequence[Session], now: datetime | None = None
    ) -> list[SessionVerdict]:
        """Every session of `sessions` that must end now (one store query for revocations)."""
        out: list[SessionVerdict] = []
        rest: list[Session] = []
        for s in sessions:
            verdict = self.over_time(s, now)
            if verdict is not None:
                out.append(verdict)
            else:
                rest.append(s)
        if not rest:
            return out
        try:
            revoked = await asyncio.to_thread(
                revoked_principals, self._engine, [s.principal for s in rest], self._gateway_issuer
            )
            ended = await asyncio.to_thread(ended_by_admin, self._engine, [s.id for s in rest])
        except SQLAlchemyError as exc:
            # Keep sessions running through a store outage; new connections fail closed.
            log.warning("revocation check of live sessions failed: %s", type(exc).__name__)
            return out
        for s in rest:
            why = revoked.get(s.principal)
            if why is not None:
                out.append(SessionVerdict(s, SessionEnd.REVOKED, why))
            elif s.id in ended:
                out.append(SessionVerdict(s, SessionEnd.ENDED_BY_ADMIN, ended[s.id]))
        return out


def request_end(engine: Engine, session_id: str, requested_by: str, reason: str) -> bool:
    """Ask whichever process holds live session `session_id` to end it; False if asked before."""
    from sqlalchemy.exc import IntegrityError

    try:
        with engine.begin() as conn:
            conn.execute(
                session_terminations.insert().values(
                    session_id=session_id,
                    requested_by=requested_by,
                    reason=reason,
                    requested_at=datetime.now(UTC),
                )
            )
            notify(conn, SESSIONS)  # the process holding it checks at once, on any host
    except IntegrityError:
        return False
    return True


def ended_by_admin(engine: Engine, session_ids: Sequence[str]) -> dict[str, str]:
    """Of `session_ids`, those an administrator asked to end, each with the message to show."""
    from sqlalchemy import select

    if not session_ids:
        return {}
    t = session_terminations.c
    with engine.connect() as conn:
        rows = conn.execute(
            select(t.session_id, t.requested_by, t.reason).where(t.session_id.in_(session_ids))
        ).all()
    return {r.session_id: f"ended by administrator {r.requested_by}: {r.reason}" for r in rows}
