from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from lockgate.config.model import Manifest

IDP = "https://idp.example.com"


def _manifest(admin: dict[str, Any], oidc: list[dict[str, Any]] | None = None) -> Manifest:
    identity = {"oidc": oidc if oidc is not None else [{"issuer": IDP, "audiences": ["console"]}]}
    return Manifest.model_validate({"identity": identity, "admin": admin})


def test_defaults() -> None:
    m = Manifest.model_validate({"admin": {}})
    assert m.admin is not None
    assert (m.admin.host, m.admin.port) == ("127.0.0.1", 8443)
    assert m.admin.tls.enabled and m.admin.oidc is None
    assert m.admin.base_url() == "https://127.0.0.1:8443"
    assert m.admin.base_url(9999) == "https://127.0.0.1:9999"
    assert Manifest().admin is None


def test_sign_in_uses_the_only_listed_issuer() -> None:
    m = _manifest({"oidc": {"client_id": "console"}})
    assert m.admin is not None and m.admin.oidc is not None
    assert m.admin.oidc.issuer is None and m.admin.oidc.scopes[0] == "openid"


@pytest.mark.parametrize(
    ("admin", "oidc", "message"),
    [
        ({"oidc": {"client_id": "console", "issuer": "https://other.example"}}, None, "not listed"),
        ({"oidc": {"client_id": "console"}}, [], "name one of the issuers"),
        ({"oidc": {"client_id": "cli"}}, None, "must be one of the audiences"),
        ({"oidc": {"client_id": "console", "client_secret": "hunter2"}}, None, "reference"),
        ({"oidc": {"client_id": "console", "scopes": ["email"]}}, None, "openid"),
        ({"public_url": "http://console.example.com"}, None, "https"),
        ({"session_ttl": "30s"}, None, "at least 1m"),
        ({"listen": "nowhere"}, None, "host:port"),
        ({"roles": {"owner": ["x"]}}, None, "Extra inputs"),
    ],
)
def test_refusals(admin: dict[str, Any], oidc: list[dict[str, Any]] | None, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        _manifest(admin, oidc)


def test_public_url_is_the_base_url() -> None:
    m = _manifest({"public_url": "https://lockgate.example.com/"})
    assert m.admin is not None and m.admin.base_url(1234) == "https://lockgate.example.com"
