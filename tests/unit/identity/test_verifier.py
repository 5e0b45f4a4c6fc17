from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from dataclasses import dataclass
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from sqlalchemy import text
from sqlalchemy.engine import Engine

from lockgate.config.model import GatewayTokens, Identity, Manifest
from lockgate.errors import AuthFailed
from lockgate.identity.tokens import GatewayTokenAuthority, load_or_create_signing_key
from lockgate.identity.verifier import GatewayTokenVerifier, IdentityVerifier, TokenVerifier
from lockgate.model import Principal, PrincipalKind
from lockgate.store import open_engine


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _claims(token: str) -> dict[str, Any]:
    return jwt.decode(token, options={"verify_signature": False})


def _resign(authority: GatewayTokenAuthority, claims: dict[str, Any]) -> str:
    """Sign arbitrary claims with the authority's real key (to test claim checks)."""
    key = load_or_create_signing_key(authority.key_path)
    return jwt.encode(claims, key, algorithm="EdDSA")


def _unsigned(header: dict[str, Any], claims: dict[str, Any]) -> str:
    return f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"


@pytest.fixture
def verifier(authority: GatewayTokenAuthority) -> GatewayTokenVerifier:
    return GatewayTokenVerifier(authority)


async def _refused(verifier: TokenVerifier | IdentityVerifier, token: str) -> AuthFailed:
    with pytest.raises(AuthFailed) as info:
        await verifier.verify(token)
    err = info.value
    # Nothing secret is ever echoed back.
    if len(token) > 8:
        assert token not in err.message and token not in err.hint
        for segment in token.split("."):
            if len(segment) > 8:
                assert segment not in err.message and segment not in err.hint
    return err


async def test_round_trip(authority: GatewayTokenAuthority, verifier: GatewayTokenVerifier) -> None:
    issued = authority.issue("ci-bot", ["deploy", "readers"], ttl_seconds=600, scopes=["orders"])
    principal = await verifier.verify(issued.token)
    assert principal == Principal(
        subject="ci-bot",
        groups=frozenset({"deploy", "readers"}),
        kind=PrincipalKind.MACHINE,
        issuer="lockgate",
        token_id=issued.jti,
        expires_at=issued.expires_at,
        scopes=frozenset({"orders"}),
    )


async def test_round_trip_without_scope_and_surrounding_whitespace(
    authority: GatewayTokenAuthority, verifier: GatewayTokenVerifier
) -> None:
    issued = authority.issue("alice", kind=PrincipalKind.HUMAN)
    principal = await verifier.verify(f"  {issued.token}\n")
    assert principal.scopes is None
    assert principal.groups == frozenset()
    assert principal.kind is PrincipalKind.HUMAN


async def test_verifier_from_public_key_manifest_and_engine(
    authority: GatewayTokenAuthority, manifest: Manifest, engine: Engine
) -> None:
    issued = authority.issue("ci-bot")
    verifier = GatewayTokenVerifier(authority.public_key, manifest, engine)
    assert (await verifier.verify(issued.token)).subject == "ci-bot"
    assert isinstance(verifier, TokenVerifier)
    with pytest.raises(TypeError):
        GatewayTokenVerifier(authority.public_key)


async def test_expired(authority: GatewayTokenAuthority, verifier: GatewayTokenVerifier) -> None:
    claims = _claims(authority.issue("ci-bot").token)
    claims["exp"] = int(time.time()) - 3600
    claims["iat"] = claims["nbf"] = claims["exp"] - 3600
    err = await _refused(verifier, _resign(authority, claims))
    expected = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(claims["exp"]))
    assert err.message == f"token expired at {expected}"
    assert "lockgate token issue" in err.hint


async def test_expiry_leeway_is_one_second_only(
    authority: GatewayTokenAuthority, verifier: GatewayTokenVerifier
) -> None:
    claims = _claims(authority.issue("ci-bot").token)
    claims["exp"] = int(time.time()) + 1
    principal = await verifier.verify(_resign(authority, claims))
    assert principal.subject == "ci-bot"
    claims["exp"] = int(time.time()) - 5
    err = await _refused(verifier, _resign(authority, claims))
    assert err.message.startswith("token expired at ")


async def test_not_yet_valid(
    authority: GatewayTokenAuthority, verifier: GatewayTokenVerifier
) -> None:
    claims = _claims(authority.issue("ci-bot").token)
    claims["nbf"] = claims["iat"] = int(time.time()) + 3600
    claims["exp"] = claims["nbf"] + 3600
    err = await _refused(verifier, _resign(authority, claims))
    assert err.message.startswith("token is not valid until ")
    assert err.message.endswith("Z")


async def test_wrong_audience(
    authority: GatewayTokenAuthority, verifier: GatewayTokenVerifier
) -> None:
    claims = _claims(authority.issue("ci-bot").token)
    claims["aud"] = "some-other-service"
    err = await _refused(verifier, _resign(authority, claims))
    assert "not meant for this gateway" in err.message
    assert "'lockgate'" in err.message


async def test_wrong_issuer(
    authority: GatewayTokenAuthority, verifier: GatewayTokenVerifier
) -> None:
    claims = _claims(authority.issue("ci-bot").token)
    claims["iss"] = "x"
    err = await _refused(verifier, _resign(authority, claims))
    assert err.message == "token issuer 'x' is not trusted by this gateway"


@pytest.mark.parametrize("claim", ["sub", "jti", "exp", "aud", "iss"])
async def test_missing_required_claim(
    authority: GatewayTokenAuthority, verifier: GatewayTokenVerifier, claim: str
) -> None:
    claims = _claims(authority.issue("ci-bot").token)
    del claims[claim]
    err = await _refused(verifier, _resign(authority, claims))
    assert err.message == f"token has no '{claim}' claim"


async def test_malformed_groups_claim(
    authority: GatewayTokenAuthority, verifier: GatewayTokenVerifier
) -> None:
    claims = _claims(authority.issue("ci-bot").token)
    claims["groups"] = "admins"
    err = await _refused(verifier, _resign(authority, claims))
    assert "'groups' must be a list" in err.message


async def test_subject_differing_from_the_issue_record_is_refused(
    authority: GatewayTokenAuthority, verifier: GatewayTokenVerifier
) -> None:
    claims = _claims(authority.issue("ci-bot").token)
    claims["sub"] = "root"
    err = await _refused(verifier, _resign(authority, claims))
    assert "does not match" in err.message


async def test_tampered_payload_with_the_original_signature(
    authority: GatewayTokenAuthority, verifier: GatewayTokenVerifier
) -> None:
    token = authority.issue("ci-bot", ["readers"]).token
    header, _payload, signature = token.split(".")
    claims = _claims(token)
    claims["groups"] = ["admins"]
    forged = f"{header}.{_b64(json.dumps(claims).encode())}.{signature}"
    err = await _refused(verifier, forged)
    assert err.message == "token signature is invalid"


async def test_token_from_another_gateway_key_is_refused(
    authority: GatewayTokenAuthority, tmp_path: Any, engine: Engine
) -> None:
    issued = authority.issue("ci-bot")
    other_manifest = Manifest(base_dir=tmp_path / "elsewhere")
    other = GatewayTokenAuthority(other_manifest, engine)
    err = await _refused(GatewayTokenVerifier(other), issued.token)
    assert err.message == "token signature is invalid"


async def test_alg_none_is_refused(
    authority: GatewayTokenAuthority, verifier: GatewayTokenVerifier
) -> None:
    claims = _claims(authority.issue("ci-bot").token)
    forged = _unsigned({"alg": "none", "typ": "JWT"}, claims) + "."
    err = await _refused(verifier, forged)
    assert "algorithm 'none' is not accepted" in err.message


@pytest.mark.parametrize("secret_form", ["raw", "pem"])
async def test_hs256_signed_with_the_public_key_is_refused(
    authority: GatewayTokenAuthority, verifier: GatewayTokenVerifier, secret_form: str
) -> None:
    claims = _claims(authority.issue("ci-bot").token)
    public = authority.public_key
    secret = (
        public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        if secret_form == "raw"
        else public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    signing_input = _unsigned({"alg": "HS256", "typ": "JWT"}, claims)
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    err = await _refused(verifier, f"{signing_input}.{_b64(mac)}")
    assert "algorithm 'HS256' is not accepted" in err.message


async def test_revocation_from_another_process_takes_effect_on_next_verify(
    authority: GatewayTokenAuthority, verifier: GatewayTokenVerifier, manifest: Manifest
) -> None:
    issued = authority.issue("ci-bot")
    assert (await verifier.verify(issued.token)).subject == "ci-bot"

    # Another process (e.g. `lockgate token revoke`): its own engine on the same file.
    other_engine = open_engine(manifest.state_url, create=False)
    try:
        assert GatewayTokenAuthority(manifest, other_engine).revoke(issued.jti, "leaked in CI log")
    finally:
        other_engine.dispose()

    err = await _refused(verifier, issued.token)
    assert err.message.startswith("token was revoked at ")
    assert "leaked in CI log" in err.message


async def test_unknown_jti_is_refused(
    authority: GatewayTokenAuthority, verifier: GatewayTokenVerifier
) -> None:
    claims = _claims(authority.issue("ci-bot").token)
    claims["jti"] = "never-issued-here"
    err = await _refused(verifier, _resign(authority, claims))
    assert err.message == "token is not known to this gateway"


async def test_an_unreadable_revocation_list_fails_closed(
    authority: GatewayTokenAuthority, verifier: GatewayTokenVerifier, engine: Engine
) -> None:
    issued = authority.issue("ci-bot")
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE issued_tokens"))
    err = await _refused(verifier, issued.token)
    assert "revocation list" in err.message


@pytest.mark.parametrize(
    "garbage",
    [
        "",
        "   ",
        "hunter2-correct-horse",
        "a.b",
        "a.b.c",
        "....",
        "eyJhbGciOiJFZERTQSJ9.e30.",
        "é.ü.ß",
        "x" * 100_000,
        "\x00\x01\x02.\x03.\x04",
    ],
)
async def test_garbage_is_refused_without_echo(
    verifier: GatewayTokenVerifier, authority: GatewayTokenAuthority, garbage: str
) -> None:
    await _refused(verifier, garbage)
    await _refused(IdentityVerifier([verifier]), garbage)


async def test_plain_password_gets_the_not_a_jwt_message(verifier: GatewayTokenVerifier) -> None:
    err = await _refused(verifier, "s3cret-password")
    assert err.message == "password is not a Lockgate token (expected a JWT)"


@dataclass
class _OtherIssuer:
    """A stand-in for a future OIDC verifier: trusts one issuer, returns a fixed principal."""

    issuer: str

    async def verify(self, token: str) -> Principal:
        return Principal(subject="alice@example.com", issuer=self.issuer)


async def test_identity_verifier_routes_by_issuer(
    authority: GatewayTokenAuthority, verifier: GatewayTokenVerifier
) -> None:
    identity = IdentityVerifier([verifier, _OtherIssuer("https://idp.example.com")])
    issued = authority.issue("ci-bot")
    assert (await identity.verify(issued.token)).subject == "ci-bot"

    idp_token = _unsigned({"alg": "RS256"}, {"iss": "https://idp.example.com"}) + ".c2ln"
    assert (await identity.verify(idp_token)).subject == "alice@example.com"


async def test_identity_verifier_refuses_an_untrusted_issuer(
    verifier: GatewayTokenVerifier,
) -> None:
    identity = IdentityVerifier([verifier])
    token = _unsigned({"alg": "EdDSA"}, {"iss": "https://evil.example", "sub": "x"}) + ".c2ln"
    err = await _refused(identity, token)
    assert err.message == "token issuer 'https://evil.example' is not trusted by this gateway"
    token = _unsigned({"alg": "EdDSA"}, {"sub": "x"}) + ".c2ln"
    err = await _refused(identity, token)
    assert "names no issuer" in err.message


async def test_identity_verifier_with_a_custom_issuer(tmp_path: Any, engine: Engine) -> None:
    manifest = Manifest(
        identity=Identity(gateway_tokens=GatewayTokens(issuer="gw.prod", audience="prod")),
        base_dir=tmp_path,
    )
    authority = GatewayTokenAuthority(manifest, engine)
    identity = IdentityVerifier([GatewayTokenVerifier(authority)])
    assert identity.issuers == ("gw.prod",)
    principal = await identity.verify(authority.issue("ci-bot").token)
    assert principal.issuer == "gw.prod"


def test_two_verifiers_for_one_issuer_are_refused(verifier: GatewayTokenVerifier) -> None:
    with pytest.raises(ValueError, match="two verifiers"):
        IdentityVerifier([verifier, _OtherIssuer("lockgate")])
