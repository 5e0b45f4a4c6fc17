from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy.engine import Engine

from lockgate.config.model import Identity, Manifest, SessionLimits
from lockgate.identity.revocation import (
    ANY_ISSUER,
    revoke_gateway_subject,
    revoke_identity,
)
from lockgate.identity.session_limits import LiveSessionPolicy
from lockgate.identity.tokens import GatewayTokenAuthority
from lockgate.model import ClientInfo, Principal, Session, SessionEnd

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
IDP = "https://idp.example.com"


def _session(
    sid: str,
    *,
    started: datetime = NOW - timedelta(minutes=5),
    expires: datetime | None = NOW + timedelta(hours=1),
    subject: str = "alice",
    issuer: str = IDP,
    jti: str | None = None,
) -> Session:
    principal = Principal(subject=subject, issuer=issuer, token_id=jti, expires_at=expires)
    return Session(sid, principal, "db", ClientInfo("127.0.0.1:1", "postgres"), started)


def _policy(manifest: Manifest, engine: Engine, **limits: str) -> LiveSessionPolicy:
    m = manifest.model_copy(update={"identity": Identity(sessions=SessionLimits(**limits))})
    return LiveSessionPolicy(m, engine)


async def test_end_at_expiry_ends_sessions_whose_token_expired(
    manifest: Manifest, engine: Engine
) -> None:
    policy = _policy(manifest, engine, on_token_expiry="end")
    live = _session("live")
    expired = _session("expired", expires=NOW - timedelta(seconds=1))
    verdicts = await policy.verdicts([live, expired], NOW)
    assert [(v.session.id, v.end) for v in verdicts] == [("expired", SessionEnd.TOKEN_EXPIRED)]
    assert "token expired at 2026-11-23T11:59:59Z" in verdicts[0].message


async def test_allow_keeps_expired_tokens_until_max_session(
    manifest: Manifest, engine: Engine
) -> None:
    policy = _policy(manifest, engine, on_token_expiry="allow", max_session="8h")
    expired = _session("expired", expires=NOW - timedelta(hours=2))
    too_long = _session("long", started=NOW - timedelta(hours=8), expires=None)
    verdicts = await policy.verdicts([expired, too_long], NOW)
    assert [(v.session.id, v.end) for v in verdicts] == [("long", SessionEnd.MAX_SESSION)]
    assert "maximum length of 8h" in verdicts[0].message


async def test_revoked_subjects_and_tokens_end_their_sessions(
    manifest: Manifest, engine: Engine
) -> None:
    policy = _policy(manifest, engine)
    revoke_identity(engine, IDP, subject="mallory")
    revoke_identity(engine, IDP, jti="leaked")
    revoke_identity(engine, ANY_ISSUER, subject="everywhere")
    sessions = [
        _session("a", subject="mallory"),
        _session("b", subject="bob", jti="leaked"),
        _session("c", subject="bob", jti="fine"),
        _session("d", subject="everywhere", issuer="https://other.example.com"),
        _session("e", subject="mallory", issuer="https://other.example.com"),
    ]
    verdicts = {v.session.id: v for v in await policy.verdicts(sessions, NOW)}
    assert set(verdicts) == {"a", "b", "d"}
    assert all(v.end is SessionEnd.REVOKED for v in verdicts.values())
    assert verdicts["a"].message == "identity 'mallory' was revoked"
    assert verdicts["b"].message == "its token was revoked"


async def test_revoked_gateway_tokens_end_their_sessions(
    manifest: Manifest, engine: Engine, authority: GatewayTokenAuthority
) -> None:
    policy = _policy(manifest, engine)
    kept = authority.issue("bot-a")
    gone = authority.issue("bot-b")
    by_subject = authority.issue("bot-c")
    authority.revoke(gone.jti)
    assert revoke_gateway_subject(engine, "bot-c") == 1
    sessions = [
        _session(t.subject, subject=t.subject, issuer="lockgate", jti=t.jti)
        for t in (kept, gone, by_subject)
    ]
    verdicts = await policy.verdicts(sessions, NOW)
    assert sorted(v.session.id for v in verdicts) == ["bot-b", "bot-c"]


async def test_nothing_to_check_makes_no_query(manifest: Manifest, engine: Engine) -> None:
    policy = _policy(manifest, engine)
    engine.dispose()
    assert await policy.verdicts([], NOW) == []


async def test_sessions_an_admin_ended_end_with_the_reason(
    manifest: Manifest, engine: Engine
) -> None:
    from lockgate.identity.session_limits import ended_by_admin, request_end

    policy = _policy(manifest, engine)
    one, two = _session("s-1"), _session("s-2")
    assert await policy.verdicts([one, two], NOW) == []
    assert request_end(engine, "s-1", "ada", "INC-7")
    assert not request_end(engine, "s-1", "bob", "again")  # the first request stands
    (verdict,) = await policy.verdicts([one, two], NOW)
    assert verdict.session is one and verdict.end is SessionEnd.ENDED_BY_ADMIN
    assert verdict.message == "ended by administrator ada: INC-7"
    assert ended_by_admin(engine, []) == {}
