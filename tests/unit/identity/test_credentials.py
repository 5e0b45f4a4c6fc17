"""Stored logins: where they live, their permissions, and transparent refresh over HTTP."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from tests.login_provider import LoginEndpoints

from lockgate.identity import credentials as store
from lockgate.identity.login import LoginFailed, id_token_claims


@pytest.fixture
def config_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "xdg"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home))
    return home


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _login(endpoints: LoginEndpoints, *, ttl: int = 600, refresh: bool = True) -> store.StoredLogin:
    token = endpoints.id_token(ttl=ttl)
    return store.StoredLogin(
        issuer=endpoints.issuer.url,
        client_id=endpoints.client_id,
        token_endpoint=f"{endpoints.url}/token",
        id_token=token,
        refresh_token=endpoints.new_refresh_token() if refresh else None,
        expires_at=int(id_token_claims(token)["exp"]),
        scopes=("openid", "email"),
    )


def test_the_file_lives_in_xdg_config_home(config_home: Path) -> None:
    assert store.credentials_path() == config_home / "lockgate" / "credentials.json"


def test_without_xdg_it_is_under_home_dot_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert store.credentials_path() == tmp_path / ".config" / "lockgate" / "credentials.json"
    monkeypatch.setenv("XDG_CONFIG_HOME", "relative/ignored")  # the spec says: ignore it
    assert store.credentials_path() == tmp_path / ".config" / "lockgate" / "credentials.json"


def test_saved_with_owner_only_permissions(config_home: Path, endpoints: LoginEndpoints) -> None:
    folder = config_home / "lockgate"
    folder.mkdir(parents=True, mode=0o755)
    folder.chmod(0o755)
    path = store.remember(_login(endpoints))
    assert _mode(path) == 0o600
    assert _mode(folder) == 0o700
    assert [p.name for p in folder.iterdir()] == ["credentials.json"]  # no temporary left


def test_round_trip_and_default(config_home: Path, endpoints: LoginEndpoints) -> None:
    first = _login(endpoints)
    store.remember(first)
    loaded = store.load()
    assert loaded.default == first.issuer
    assert loaded.pick(None) == first
    assert loaded.pick(first.issuer) == first
    with pytest.raises(LoginFailed, match=r"not logged in for https://x\.example"):
        loaded.pick("https://x.example")


def test_forget_removes_the_tokens(config_home: Path, endpoints: LoginEndpoints) -> None:
    login = _login(endpoints)
    path = store.remember(login)
    assert store.forget(None) == [login.issuer]
    assert not path.exists()
    assert store.forget(None) == []
    with pytest.raises(LoginFailed, match="you are not logged in"):
        store.current_token()


def test_a_valid_token_is_used_as_is(config_home: Path, endpoints: LoginEndpoints) -> None:
    login = _login(endpoints)
    store.remember(login)
    _, token = store.current_token()
    assert token == login.id_token
    assert endpoints.requests == []


def test_an_expired_token_is_refreshed_and_stored(
    config_home: Path, endpoints: LoginEndpoints
) -> None:
    login = _login(endpoints, ttl=-30)
    path = store.remember(login)
    got, token = store.current_token()
    assert token != login.id_token
    assert got.expires_at > login.expires_at
    assert got.refresh_token not in (None, login.refresh_token)  # rotated
    assert endpoints.requests == [
        {
            "grant_type": "refresh_token",
            "refresh_token": login.refresh_token,
            "client_id": "lockgate-cli",
        }
    ]
    saved = json.loads(path.read_text())["logins"][0]
    assert saved["id_token"] == token and saved["refresh_token"] == got.refresh_token
    assert _mode(path) == 0o600
    # The next call uses the stored fresh token without asking the provider.
    assert store.current_token()[1] == token
    assert len(endpoints.requests) == 1


def test_a_token_about_to_expire_is_refreshed_too(
    config_home: Path, endpoints: LoginEndpoints
) -> None:
    login = _login(endpoints, ttl=30)  # inside the one-minute margin
    store.remember(login)
    assert store.current_token()[1] != login.id_token


def test_a_refused_refresh_says_log_in_again(config_home: Path, endpoints: LoginEndpoints) -> None:
    login = _login(endpoints, ttl=-30)
    path = store.remember(login)
    endpoints.refresh_tokens.clear()  # the provider revoked it
    with pytest.raises(LoginFailed) as info:
        store.current_token()
    assert "run `lockgate login` again" in info.value.hint
    assert login.refresh_token is not None
    assert login.refresh_token not in info.value.message
    assert json.loads(path.read_text())["logins"][0]["id_token"] == login.id_token


def test_expired_without_a_refresh_token(config_home: Path, endpoints: LoginEndpoints) -> None:
    store.remember(_login(endpoints, ttl=-30, refresh=False))
    with pytest.raises(LoginFailed, match="expired"):
        store.current_token()


def test_a_damaged_file_is_a_friendly_error(config_home: Path) -> None:
    path = store.credentials_path()
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    with pytest.raises(LoginFailed, match="not JSON"):
        store.load()
    path.write_text(json.dumps({"logins": [{"issuer": "x"}]}))
    with pytest.raises(LoginFailed, match="not a credentials file"):
        store.load()
