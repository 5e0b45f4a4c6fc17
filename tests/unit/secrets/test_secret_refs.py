"""Credential references: env:, file: and store:, and errors that never show the value."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from lockgate.config.model import Manifest
from lockgate.errors import SecretError
from lockgate.secrets.refs import SecretRef, parse_ref, resolve_secret
from lockgate.secrets.store import KEY_ENV, SecretStore
from lockgate.secrets.tables import secrets
from lockgate.store import metadata, open_engine


@pytest.fixture
def manifest(tmp_path: Path) -> Manifest:
    return Manifest(base_dir=tmp_path)


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    eng = open_engine(f"sqlite:///{tmp_path}/state.db", create=False)
    metadata.create_all(eng, tables=[secrets])
    yield eng
    eng.dispose()


def test_parse() -> None:
    assert parse_ref("env:PG_PASSWORD") == SecretRef("env", "PG_PASSWORD")
    assert parse_ref("file:/run/secrets/pg") == SecretRef("file", "/run/secrets/pg")
    assert str(parse_ref("store:orders")) == "store:orders"


@pytest.mark.parametrize("ref", ["hunter2", "vault:x", "", "hunter2:with-colon"])
def test_not_a_reference_never_echoes_it(ref: str) -> None:
    with pytest.raises(SecretError, match="not a credential reference") as info:
        parse_ref(ref)
    if ref:
        assert ref not in info.value.message


def test_env(manifest: Manifest, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LG_TEST_PW", "from-env")
    assert resolve_secret("env:LG_TEST_PW", manifest, None) == "from-env"


def test_env_missing_names_the_variable(
    manifest: Manifest, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LG_TEST_MISSING", raising=False)
    with pytest.raises(SecretError, match="LG_TEST_MISSING is not set"):
        resolve_secret("env:LG_TEST_MISSING", manifest, None)


def test_file_relative_to_manifest(manifest: Manifest, tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "pg").write_text("pw with space\n\n")
    assert resolve_secret("file:secrets/pg", manifest, None) == "pw with space\n"
    (tmp_path / "abs").write_text("abs-pw\r\n")
    assert resolve_secret(f"file:{tmp_path / 'abs'}", manifest, None) == "abs-pw"


def test_file_missing_or_unreadable(manifest: Manifest, tmp_path: Path) -> None:
    with pytest.raises(SecretError, match="file:nope: no such file"):
        resolve_secret("file:nope", manifest, None)
    secret = tmp_path / "locked"
    secret.write_text("topsecret")
    secret.chmod(0)
    try:
        if os.access(secret, os.R_OK):  # running as root: permissions do not apply
            pytest.skip("file permissions are not enforced for this user")
        with pytest.raises(SecretError, match="permission denied") as info:
            resolve_secret("file:locked", manifest, None)
        assert "topsecret" not in info.value.message
    finally:
        secret.chmod(0o600)


def test_store(
    manifest: Manifest, engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    store = SecretStore(engine, tmp_path / "key")
    store.set("orders", "from-store")
    assert resolve_secret("store:orders", manifest, store) == "from-store"
    with pytest.raises(SecretError, match="needs the secret store"):
        resolve_secret("store:orders", manifest, None)
    with pytest.raises(SecretError, match="no stored secret named 'other'"):
        resolve_secret("store:other", manifest, store)
