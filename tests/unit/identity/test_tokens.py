from __future__ import annotations

import os
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jwt
import pytest
from sqlalchemy import select, update
from sqlalchemy.engine import Engine

from lockgate.config.model import GatewayTokens, Identity, Manifest
from lockgate.errors import LockgateError
from lockgate.identity.tables import issued_tokens
from lockgate.identity.tokens import (
    SIGNING_KEY_FILE,
    GatewayTokenAuthority,
    SigningKeyError,
    TokenRequestInvalid,
)
from lockgate.model import PrincipalKind


def _claims(authority: GatewayTokenAuthority, token: str) -> dict[str, object]:
    return jwt.decode(token, authority.public_key, algorithms=["EdDSA"], audience="lockgate")


def test_signing_key_is_created_on_first_use_with_mode_0600(
    authority: GatewayTokenAuthority, manifest: Manifest
) -> None:
    key_path = manifest.state_dir / SIGNING_KEY_FILE
    authority.issue("ci-bot")
    assert key_path.exists()
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600


def test_a_second_authority_reuses_the_same_key(
    authority: GatewayTokenAuthority, manifest: Manifest, engine: Engine
) -> None:
    issued = authority.issue("ci-bot")
    other = GatewayTokenAuthority(manifest, engine)
    assert _claims(other, issued.token)["sub"] == "ci-bot"


def test_a_key_readable_by_others_is_refused(
    authority: GatewayTokenAuthority, manifest: Manifest, engine: Engine
) -> None:
    authority.issue("ci-bot")
    key_path = manifest.state_dir / SIGNING_KEY_FILE
    os.chmod(key_path, 0o644)
    with pytest.raises(SigningKeyError) as info:
        GatewayTokenAuthority(manifest, engine).issue("ci-bot")
    assert "0644" in info.value.message
    assert f"chmod 600 {key_path}" in info.value.hint


def test_a_key_that_is_not_pem_is_refused(manifest: Manifest, engine: Engine) -> None:
    manifest.state_dir.mkdir(parents=True, exist_ok=True)
    key_path = manifest.state_dir / SIGNING_KEY_FILE
    key_path.write_bytes(b"not a key")
    os.chmod(key_path, 0o600)
    with pytest.raises(SigningKeyError, match="cannot be read"):
        GatewayTokenAuthority(manifest, engine).issue("ci-bot")


def test_issue_signs_the_documented_claims(authority: GatewayTokenAuthority) -> None:
    issued = authority.issue("ci-bot", ["deploy", "readers"], ttl_seconds=600)
    header = jwt.get_unverified_header(issued.token)
    claims = _claims(authority, issued.token)
    assert header["alg"] == "EdDSA"
    assert claims["iss"] == "lockgate"
    assert claims["aud"] == "lockgate"
    assert claims["sub"] == "ci-bot"
    assert claims["groups"] == ["deploy", "readers"]
    assert claims["kind"] == "machine"
    assert claims["jti"] == issued.jti
    assert "scope" not in claims
    assert claims["exp"] - claims["iat"] == 600
    assert claims["nbf"] == claims["iat"]
    assert issued.expires_at == datetime.fromtimestamp(claims["exp"], UTC)  # type: ignore[arg-type]
    assert issued.groups == ("deploy", "readers")


def test_issue_with_scopes_and_human_kind(authority: GatewayTokenAuthority) -> None:
    issued = authority.issue(
        "alice", ["dba"], scopes=["orders", "orders"], kind=PrincipalKind.HUMAN
    )
    claims = _claims(authority, issued.token)
    assert claims["scope"] == ["orders"]
    assert claims["kind"] == "human"
    assert issued.scopes == ("orders",)


def test_jtis_are_unique_and_url_safe(authority: GatewayTokenAuthority) -> None:
    jtis = {authority.issue("ci-bot").jti for _ in range(20)}
    assert len(jtis) == 20
    for jti in jtis:
        assert len(jti) >= 20
        assert all(c.isalnum() or c in "-_" for c in jti)


def test_default_ttl_comes_from_the_manifest(tmp_path: Path, engine: Engine) -> None:
    manifest = Manifest(
        identity=Identity(gateway_tokens=GatewayTokens(default_ttl="15m", max_ttl="1h")),
        base_dir=tmp_path,
    )
    issued = GatewayTokenAuthority(manifest, engine).issue("ci-bot")
    remaining = issued.expires_at - datetime.now(UTC)
    assert timedelta(minutes=14) < remaining <= timedelta(minutes=15)


def test_ttl_over_the_maximum_is_refused_clearly(authority: GatewayTokenAuthority) -> None:
    with pytest.raises(TokenRequestInvalid) as info:
        authority.issue("ci-bot", ttl_seconds=31 * 86400)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, LockgateError)
    assert "exceeds the maximum of 30d" in info.value.message
    assert "max_ttl" in info.value.hint


@pytest.mark.parametrize("ttl", [0, -5])
def test_non_positive_ttl_is_refused(authority: GatewayTokenAuthority, ttl: int) -> None:
    with pytest.raises(TokenRequestInvalid, match="must be positive"):
        authority.issue("ci-bot", ttl_seconds=ttl)


def test_empty_subject_group_or_scope_list_is_refused(authority: GatewayTokenAuthority) -> None:
    with pytest.raises(TokenRequestInvalid, match="subject"):
        authority.issue("  ")
    with pytest.raises(TokenRequestInvalid, match="group names"):
        authority.issue("ci-bot", [""])
    with pytest.raises(TokenRequestInvalid, match="no resources"):
        authority.issue("ci-bot", scopes=[])


def test_the_store_never_holds_the_token(authority: GatewayTokenAuthority, engine: Engine) -> None:
    issued = authority.issue("ci-bot", ["deploy"], scopes=["orders"])
    signature = issued.token.rsplit(".", 1)[1]
    with engine.connect() as conn:
        row = conn.execute(select(issued_tokens)).one()
    for value in row:
        assert issued.token not in str(value)
        assert signature not in str(value)


def test_revoke_marks_the_record_and_keeps_the_first_reason(
    authority: GatewayTokenAuthority,
) -> None:
    issued = authority.issue("ci-bot")
    assert authority.revoke(issued.jti, "laptop lost") is True
    assert authority.revoke(issued.jti, "second time") is True
    record = authority.lookup(issued.jti)
    assert record is not None
    assert record.revoked
    assert record.revoked_reason == "laptop lost"


def test_revoke_of_an_unknown_id_returns_false(authority: GatewayTokenAuthority) -> None:
    assert authority.revoke("no-such-jti") is False


def test_list_tokens_hides_expired_ones_unless_asked(
    authority: GatewayTokenAuthority, engine: Engine
) -> None:
    live = authority.issue("live-bot", ["a"], scopes=["orders"])
    old = authority.issue("old-bot")
    with engine.begin() as conn:
        conn.execute(
            update(issued_tokens)
            .where(issued_tokens.c.jti == old.jti)
            .values(expires_at=datetime.now(UTC) - timedelta(hours=1))
        )
    assert [r.jti for r in authority.list_tokens()] == [live.jti]
    everything = authority.list_tokens(include_expired=True)
    assert {r.jti for r in everything} == {live.jti, old.jti}
    record = next(r for r in everything if r.jti == live.jti)
    assert record.subject == "live-bot"
    assert record.groups == ("a",)
    assert record.scopes == ("orders",)
    assert record.kind is PrincipalKind.MACHINE
    assert record.expires_at.tzinfo is not None
    assert not record.revoked
    assert next(r for r in everything if r.jti == old.jti).expired()
