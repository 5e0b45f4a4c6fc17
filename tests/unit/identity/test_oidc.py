"""OIDC verification against real issuers on loopback: the tests' own and oidc-provider-mock."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from pydantic import ValidationError
from sqlalchemy.engine import Engine
from tests.identity_provider import TestIssuer, mock_id_token, mock_provider

from lockgate.config.model import ClaimRule, Identity, Manifest, OIDCIssuer
from lockgate.errors import AuthFailed
from lockgate.identity.oidc import KeySet, OIDCVerifier, rule_matches
from lockgate.identity.revocation import (
    ANY_ISSUER,
    lift_subject_revocation,
    revoke_identity,
)
from lockgate.identity.tokens import GatewayTokenAuthority
from lockgate.identity.verifier import GatewayTokenVerifier, IdentityVerifier
from lockgate.model import PrincipalKind


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Clock:
    """A monotonic clock the test moves by hand (the key cache's rate limit reads it)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def settings(idp: TestIssuer, **overrides: Any) -> OIDCIssuer:
    values: dict[str, Any] = {"issuer": idp.url, "audiences": ["lockgate"], **overrides}
    return OIDCIssuer(**values)


@pytest.fixture
def clock() -> Clock:
    return Clock()


def make_verifier(
    idp: TestIssuer, engine: Engine, clock: Clock | None = None, **overrides: Any
) -> OIDCVerifier:
    s = settings(idp, **overrides)
    keys = KeySet(s, clock=clock) if clock is not None else None
    return OIDCVerifier(s, engine, keys=keys)


async def refused(verifier: OIDCVerifier | IdentityVerifier, token: str) -> AuthFailed:
    with pytest.raises(AuthFailed) as info:
        await verifier.verify(token)
    err = info.value
    for segment in token.split("."):
        if len(segment) > 8:
            assert segment not in err.message and segment not in err.hint
    return err


# -- valid tokens ---------------------------------------------------------------------------


async def test_valid_rs256_token_becomes_a_principal(idp: TestIssuer, engine: Engine) -> None:
    v = make_verifier(idp, engine)
    claims = idp.claims(sub="alice", groups=["dba", "it"])
    p = await v.verify(idp.sign(claims, "rsa-1"))
    assert p.subject == "alice"
    assert p.groups == {"dba", "it"}
    assert p.kind is PrincipalKind.HUMAN
    assert p.issuer == idp.url
    assert p.token_id == claims["jti"]
    assert p.expires_at is not None and int(p.expires_at.timestamp()) == claims["exp"]


@pytest.mark.parametrize("alg", ["ES256", "EdDSA"])
async def test_es256_and_eddsa_tokens_are_verified(
    idp: TestIssuer, engine: Engine, alg: str
) -> None:
    kid = idp.add_key(alg)
    v = make_verifier(idp, engine, kind="machine")
    p = await v.verify(idp.token(kid=kid, sub="job-7"))
    assert p.subject == "job-7" and p.kind is PrincipalKind.MACHINE


async def test_a_token_of_a_second_audience_is_accepted(idp: TestIssuer, engine: Engine) -> None:
    v = make_verifier(idp, engine, audiences=["lockgate", "https://db.example.com"])
    p = await v.verify(idp.token(aud=["other", "https://db.example.com"]))
    assert p.subject == "alice"


async def test_subject_and_groups_come_from_the_configured_claims(
    idp: TestIssuer, engine: Engine
) -> None:
    v = make_verifier(
        idp,
        engine,
        subject_claim="email",
        subject_prefix="corp:",
        groups_claim="roles",
    )
    p = await v.verify(idp.token(email="bob@example.com", roles="admins", groups=["ignored"]))
    assert p.subject == "corp:bob@example.com"
    assert p.groups == {"admins"}
    err = await refused(v, idp.token())  # no email claim
    assert "'email' claim" in err.message


async def test_keys_are_fetched_once_and_cached(idp: TestIssuer, engine: Engine) -> None:
    v = make_verifier(idp, engine)
    for _ in range(5):
        await v.verify(idp.token())
    assert idp.discovery_requests == 1
    assert idp.jwks_requests == 1


async def test_a_token_without_kid_is_checked_against_every_key_of_its_type(
    idp: TestIssuer, engine: Engine
) -> None:
    other = idp.add_key("RS256")
    v = make_verifier(idp, engine)
    p = await v.verify(idp.sign(idp.claims(sub="carol"), other, with_kid=False))
    assert p.subject == "carol"


# -- attacks --------------------------------------------------------------------------------


async def test_alg_none_is_refused(idp: TestIssuer, engine: Engine) -> None:
    v = make_verifier(idp, engine)
    header = _b64(json.dumps({"alg": "none", "typ": "JWT", "kid": "rsa-1"}).encode())
    token = f"{header}.{_b64(json.dumps(idp.claims()).encode())}."
    err = await refused(v, token)
    assert "algorithm 'none' is not accepted" in err.message
    assert idp.jwks_requests == 0  # refused before any key is looked up


async def test_hs256_signed_with_the_rsa_public_key_is_refused(
    idp: TestIssuer, engine: Engine
) -> None:
    v = make_verifier(idp, engine)
    await v.verify(idp.token())  # keys are cached
    key = idp.keys["rsa-1"][0]
    assert isinstance(key, rsa.RSAPrivateKey)
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}).encode())
    body = _b64(json.dumps(idp.claims(sub="mallory")).encode())
    mac = hmac.new(pem, f"{header}.{body}".encode(), hashlib.sha256).digest()
    err = await refused(v, f"{header}.{body}.{_b64(mac)}")
    assert "algorithm 'HS256' is not accepted" in err.message


def test_hmac_and_none_cannot_be_configured(idp: TestIssuer) -> None:
    for alg in ("HS256", "none", "HS512"):
        with pytest.raises(ValidationError, match="not accepted"):
            settings(idp, algorithms=["RS256", alg])


async def test_an_algorithm_the_manifest_does_not_list_is_refused(
    idp: TestIssuer, engine: Engine
) -> None:
    kid = idp.add_key("ES256")
    v = make_verifier(idp, engine, algorithms=["RS256"])
    err = await refused(v, idp.token(kid=kid))
    assert "algorithm 'ES256' is not accepted" in err.message


async def test_a_tampered_payload_with_the_original_signature_is_refused(
    idp: TestIssuer, engine: Engine
) -> None:
    v = make_verifier(idp, engine)
    header, _, signature = idp.token(sub="alice").split(".")
    forged = _b64(json.dumps(idp.claims(sub="admin", groups=["admins"])).encode())
    err = await refused(v, f"{header}.{forged}.{signature}")
    assert err.message == "token signature is invalid"


async def test_a_key_of_the_wrong_type_under_a_known_kid_is_refused(
    idp: TestIssuer, engine: Engine
) -> None:
    # An attacker's ES256 token naming the issuer's RSA kid: no RSA key can verify ES256.
    v = make_verifier(idp, engine)
    await v.verify(idp.token())
    attacker = TestIssuer()
    try:
        kid = attacker.add_key("ES256")
        token = attacker.sign({**idp.claims()}, kid, headers={"kid": "rsa-1"})
    finally:
        attacker.close()
    err = await refused(v, token)
    assert "unknown to its issuer" in err.message


async def test_a_token_signed_by_another_key_with_a_known_kid_is_refused(
    idp: TestIssuer, engine: Engine
) -> None:
    v = make_verifier(idp, engine)
    attacker = TestIssuer()
    try:
        attacker.add_key("RS256", kid="rsa-1")
        token = attacker.sign(idp.claims(), "rsa-1")
    finally:
        attacker.close()
    err = await refused(v, token)
    assert err.message == "token signature is invalid"


async def test_expired_token_is_refused(idp: TestIssuer, engine: Engine) -> None:
    v = make_verifier(idp, engine, clock_skew="5s")
    claims = idp.claims()
    claims["exp"] = claims["iat"] - 60
    err = await refused(v, idp.sign(claims, "rsa-1"))
    assert err.message.startswith("token expired at ")


async def test_expiry_within_the_clock_skew_is_tolerated(idp: TestIssuer, engine: Engine) -> None:
    v = make_verifier(idp, engine, clock_skew="2m")
    claims = idp.claims()
    claims["exp"] = claims["iat"] - 30
    assert (await v.verify(idp.sign(claims, "rsa-1"))).subject == "alice"


async def test_not_yet_valid_token_is_refused(idp: TestIssuer, engine: Engine) -> None:
    v = make_verifier(idp, engine, clock_skew="5s")
    claims = idp.claims(ttl=7200)
    claims["nbf"] = claims["iat"] + 3600
    err = await refused(v, idp.sign(claims, "rsa-1"))
    assert err.message.startswith("token is not valid until ")


async def test_a_token_for_another_audience_is_refused(idp: TestIssuer, engine: Engine) -> None:
    v = make_verifier(idp, engine)
    err = await refused(v, idp.token(aud="some-other-service"))
    assert "wrong audience" in err.message
    assert "some-other-service" in err.detail  # the audit learns which one


async def test_a_token_naming_another_issuer_is_refused(idp: TestIssuer, engine: Engine) -> None:
    v = make_verifier(idp, engine)
    err = await refused(v, idp.token(iss="https://evil.example.com"))
    assert "issuer 'https://evil.example.com' is not trusted" in err.message


async def test_a_token_without_expiry_is_refused(idp: TestIssuer, engine: Engine) -> None:
    v = make_verifier(idp, engine)
    claims = idp.claims()
    del claims["exp"]
    err = await refused(v, idp.sign(claims, "rsa-1"))
    assert err.message == "token has no 'exp' claim"


# -- key rotation, rate limit, outages ------------------------------------------------------


async def test_rotation_new_kid_is_fetched_and_old_tokens_stay_valid(
    idp: TestIssuer, engine: Engine, clock: Clock
) -> None:
    v = make_verifier(idp, engine, clock)
    old_token = idp.token(kid="rsa-1")
    await v.verify(old_token)
    assert idp.jwks_requests == 1

    new_kid = idp.add_key("RS256")  # the provider publishes old and new (overlap)
    clock.now += 31  # past jwks_min_refresh (30s)
    new_token = idp.token(kid=new_kid)
    assert (await v.verify(new_token)).subject == "alice"
    assert idp.jwks_requests == 2
    assert (await v.verify(old_token)).subject == "alice"  # still valid during the overlap

    idp.published.remove("rsa-1")  # the old key retires
    clock.now += 3601  # past jwks_max_age: the next verification refetches
    err = await refused(v, old_token)
    assert "signing key 'rsa-1' is unknown" in err.message
    assert (await v.verify(new_token)).subject == "alice"


async def test_a_flood_of_unknown_kids_costs_the_provider_one_request(
    idp: TestIssuer, engine: Engine, clock: Clock
) -> None:
    v = make_verifier(idp, engine, clock)
    await v.verify(idp.token())
    clock.now += 31
    forged = TestIssuer()
    try:
        tokens = []
        for i in range(25):
            kid = forged.add_key("ES256", kid=f"bogus-{i}")
            tokens.append(forged.sign(idp.claims(), kid))
    finally:
        forged.close()
    for token in tokens:
        err = await refused(v, token)
        assert "is unknown to its issuer" in err.message
    assert idp.jwks_requests == 2  # the first lookup refreshed; the rest waited their turn


async def test_a_new_kid_before_the_refresh_interval_is_refused_then_accepted(
    idp: TestIssuer, engine: Engine, clock: Clock
) -> None:
    v = make_verifier(idp, engine, clock, jwks_min_refresh="1m")
    await v.verify(idp.token())
    kid = idp.add_key("EdDSA", kid="ed-new")
    token = idp.token(kid=kid)
    clock.now += 10
    await refused(v, token)
    clock.now += 60
    assert (await v.verify(token)).subject == "alice"


async def test_cached_keys_keep_working_while_the_provider_is_down(
    idp: TestIssuer, engine: Engine, clock: Clock
) -> None:
    v = make_verifier(idp, engine, clock)
    await v.verify(idp.token())
    idp.down = True
    clock.now += 7200  # keys are stale; the refresh fails; the cache is still used
    assert (await v.verify(idp.token())).subject == "alice"
    assert idp.jwks_requests == 1


async def test_no_keys_at_all_is_refused_without_internals(idp: TestIssuer, engine: Engine) -> None:
    idp.down = True
    v = make_verifier(idp, engine)
    err = await refused(v, idp.token())
    assert err.message == "the identity provider's signing keys are not available"
    assert "503" in err.detail and "503" not in err.message


async def test_a_discovery_document_naming_another_issuer_is_not_trusted(
    idp: TestIssuer, engine: Engine
) -> None:
    idp.discovery_extra = {"issuer": "https://evil.example.com"}
    v = make_verifier(idp, engine)
    err = await refused(v, idp.token())
    assert "not available" in err.message and "evil.example.com" in err.detail


async def test_jwks_uri_skips_discovery(idp: TestIssuer, engine: Engine) -> None:
    v = make_verifier(idp, engine, jwks_uri=f"{idp.url}/jwks")
    await v.verify(idp.token())
    assert idp.discovery_requests == 0 and idp.jwks_requests == 1


# -- claim rules (CI platforms) -------------------------------------------------------------

GITHUB_RULES = [
    {
        "name": "api-main-deploys",
        "match": {"repository": "acme/api", "ref": "refs/heads/main"},
        "groups": ["deployers"],
    },
    {
        "name": "acme-prod-environment",
        "match": {"repository": "acme/*", "environment": ["production", "prod-*"]},
        "groups": ["prod-readers"],
    },
]


def github_claims(idp: TestIssuer, **overrides: Any) -> dict[str, Any]:
    claims = idp.claims(
        sub="repo:acme/api:ref:refs/heads/main",
        aud="https://github.com/acme",
        repository="acme/api",
        repository_owner="acme",
        ref="refs/heads/main",
        workflow="deploy",
        event_name="push",
    )
    claims.update(overrides)
    return claims


async def test_claim_rules_map_a_ci_job_to_groups(idp: TestIssuer, engine: Engine) -> None:
    v = make_verifier(
        idp,
        engine,
        audiences=["https://github.com/acme"],
        kind="machine",
        claim_rules=GITHUB_RULES,
        require_rule_match=True,
    )
    p = await v.verify(idp.sign(github_claims(idp), "rsa-1"))
    assert p.subject == "repo:acme/api:ref:refs/heads/main"
    assert p.kind is PrincipalKind.MACHINE
    assert p.groups == {"deployers"}

    p = await v.verify(idp.sign(github_claims(idp, environment="prod-eu"), "rsa-1"))
    assert p.groups == {"deployers", "prod-readers"}

    # Another branch of the same repository, in production: only the second rule.
    p = await v.verify(
        idp.sign(github_claims(idp, ref="refs/heads/dev", environment="production"), "rsa-1")
    )
    assert p.groups == {"prod-readers"}


async def test_no_matching_rule_refuses_when_the_issuer_requires_one(
    idp: TestIssuer, engine: Engine
) -> None:
    v = make_verifier(
        idp,
        engine,
        audiences=["https://github.com/acme"],
        claim_rules=GITHUB_RULES,
        require_rule_match=True,
    )
    token = idp.sign(github_claims(idp, repository="evil/api", ref="refs/heads/main"), "rsa-1")
    err = await refused(v, token)
    assert err.message == "no claim rule of this gateway admits the token"
    assert "repository='evil/api'" in err.detail and "ref='refs/heads/main'" in err.detail
    assert "evil/api" not in err.message


async def test_no_matching_rule_gives_no_groups_when_not_required(
    idp: TestIssuer, engine: Engine
) -> None:
    v = make_verifier(idp, engine, audiences=["https://github.com/acme"], claim_rules=GITHUB_RULES)
    p = await v.verify(idp.sign(github_claims(idp, repository="evil/api"), "rsa-1"))
    assert p.groups == frozenset()


def test_rule_matching_of_lists_booleans_and_missing_claims() -> None:
    rule = ClaimRule(name="r", match={"groups": "team-*", "protected": "true"}, groups=["g"])
    assert rule_matches(rule, {"groups": ["x", "team-db"], "protected": True})
    assert not rule_matches(rule, {"groups": ["x"], "protected": True})
    assert not rule_matches(rule, {"groups": ["team-db"]})
    assert not rule_matches(rule, {"groups": ["team-db"], "protected": False})
    # Patterns are case-sensitive and anchored: a prefix is not a match.
    exact = ClaimRule(name="e", match={"repository": "acme/api"}, groups=["g"])
    assert not rule_matches(exact, {"repository": "acme/api-fork"})
    assert not rule_matches(exact, {"repository": "ACME/api"})


# -- revocation ------------------------------------------------------------------------------


async def test_replay_after_revoking_the_token_is_refused(idp: TestIssuer, engine: Engine) -> None:
    v = make_verifier(idp, engine)
    claims = idp.claims(sub="dave")
    token = idp.sign(claims, "rsa-1")
    await v.verify(token)
    revoke_identity(engine, idp.url, jti=claims["jti"], reason="leaked in a CI log")
    err = await refused(v, token)
    assert err.message.startswith("token was revoked at ")
    assert "leaked in a CI log" in err.message
    # Another token of the same subject is unaffected.
    assert (await v.verify(idp.token(sub="dave"))).subject == "dave"


async def test_a_revoked_subject_is_refused_until_restored(idp: TestIssuer, engine: Engine) -> None:
    v = make_verifier(idp, engine, subject_prefix="idp:")
    token = idp.token(sub="erin")
    revoke_identity(engine, ANY_ISSUER, subject="idp:erin")
    err = await refused(v, token)
    assert "identity 'idp:erin' was revoked" in err.message
    assert lift_subject_revocation(engine, "idp:erin") == 1
    assert (await v.verify(token)).subject == "idp:erin"


async def test_a_revocation_at_another_issuer_does_not_apply(
    idp: TestIssuer, engine: Engine
) -> None:
    v = make_verifier(idp, engine)
    revoke_identity(engine, "https://other.example.com", subject="frank")
    assert (await v.verify(idp.token(sub="frank"))).subject == "frank"


# -- one verifier for every issuer ----------------------------------------------------------


async def test_identity_verifier_routes_gateway_and_oidc_tokens(
    idp: TestIssuer, engine: Engine, authority: GatewayTokenAuthority
) -> None:
    v = IdentityVerifier([GatewayTokenVerifier(authority), make_verifier(idp, engine)])
    assert (await v.verify(idp.token(sub="oidc-user"))).issuer == idp.url
    gw = authority.issue("ci-bot", ["it"])
    assert (await v.verify(gw.token)).issuer == "lockgate"
    stranger = TestIssuer()
    try:
        stranger.add_key()
        err = await refused(v, stranger.token())
    finally:
        stranger.close()
    assert "is not trusted by this gateway" in err.message


def test_manifest_refuses_plain_http_issuers_off_loopback() -> None:
    with pytest.raises(ValidationError, match="https"):
        OIDCIssuer(issuer="http://idp.example.com", audiences=["x"])
    OIDCIssuer(issuer="http://localhost:8080", audiences=["x"])
    with pytest.raises(ValidationError, match="once"):
        Identity(
            oidc=[
                OIDCIssuer(issuer="https://a.example.com", audiences=["x"]),
                OIDCIssuer(issuer="https://a.example.com", audiences=["y"]),
            ]
        )


# -- a real provider: oidc-provider-mock ----------------------------------------------------


async def test_real_id_tokens_from_oidc_provider_mock(manifest: Manifest, engine: Engine) -> None:
    with mock_provider({"alice@example.com": {"groups": ["it", "dba"]}}) as base:
        s = OIDCIssuer(issuer=base, audiences=["lockgate"])
        v = OIDCVerifier(s, engine)
        token = mock_id_token(base, "alice@example.com")
        assert jwt.get_unverified_header(token)["alg"] == "RS256"
        p = await v.verify(token)
        assert p.subject == "alice@example.com"
        assert p.groups == {"it", "dba"}
        assert p.issuer == base

        other = mock_id_token(base, "bob@example.com", client_id="another-app")
        err = await refused(v, other)
        assert "wrong audience" in err.message

        header, _, sig = token.split(".")
        body = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
        body["groups"] = ["admins"]
        err = await refused(v, f"{header}.{_b64(json.dumps(body).encode())}.{sig}")
        assert err.message == "token signature is invalid"
