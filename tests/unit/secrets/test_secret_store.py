"""The encrypted secret store: round trips, keys, and refusing what is unsafe."""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select, update
from sqlalchemy.engine import Engine

from lockgate.config.model import Manifest, State
from lockgate.errors import SecretError
from lockgate.secrets.store import KEY_ENV, SecretStore
from lockgate.secrets.tables import secrets
from lockgate.store import metadata, open_engine


@pytest.fixture(autouse=True)
def _no_env_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    eng = open_engine(f"sqlite:///{tmp_path}/state.db", create=False)
    metadata.create_all(eng, tables=[secrets])
    yield eng
    eng.dispose()


@pytest.fixture
def key_path(tmp_path: Path) -> Path:
    return tmp_path / "keys" / "secret-store.key"


def test_round_trip_and_overwrite(engine: Engine, key_path: Path) -> None:
    store = SecretStore(engine, key_path)
    store.set("orders", "s3cret value ✓")
    assert store.get("orders") == "s3cret value ✓"
    store.set("orders", "second")
    assert store.get("orders") == "second"
    assert SecretStore(engine, key_path).get("orders") == "second"  # same key file, new store


def test_value_is_not_stored_in_clear_and_nonces_differ(engine: Engine, key_path: Path) -> None:
    store = SecretStore(engine, key_path)
    store.set("a", "hunter2hunter2")
    store.set("b", "hunter2hunter2")
    with engine.connect() as conn:
        rows = conn.execute(select(secrets.c.nonce, secrets.c.ciphertext)).all()
    assert len({bytes(r.nonce) for r in rows}) == 2
    assert all(len(bytes(r.nonce)) == 12 for r in rows)
    assert all(b"hunter2" not in bytes(r.ciphertext) for r in rows)
    assert bytes(rows[0].ciphertext) != bytes(rows[1].ciphertext)


def test_names_delete_and_times(engine: Engine, key_path: Path) -> None:
    store = SecretStore(engine, key_path)
    before = datetime.now(UTC)
    store.set("zeta", "1")
    store.set("alpha", "2")
    listed = store.names()
    assert [name for name, _ in listed] == ["alpha", "zeta"]
    assert all(
        when.tzinfo is not None and when >= before.replace(microsecond=0) for _, when in listed
    )
    assert store.delete("zeta") is True
    assert store.delete("zeta") is False
    assert [name for name, _ in store.names()] == ["alpha"]


def test_missing_secret(engine: Engine, key_path: Path) -> None:
    with pytest.raises(SecretError, match="no stored secret named 'nope'"):
        SecretStore(engine, key_path).get("nope")


def test_key_file_is_created_private_on_first_use(engine: Engine, key_path: Path) -> None:
    store = SecretStore(engine, key_path)
    store.names()
    store.delete("x")
    assert not key_path.exists()  # listing and deleting need no key
    store.set("a", "1")
    assert store.key_created
    assert key_path.stat().st_mode & 0o777 == 0o600
    assert len(base64.b64decode(key_path.read_text().strip())) == 32


def test_key_file_readable_by_others_is_refused(engine: Engine, key_path: Path) -> None:
    SecretStore(engine, key_path).set("a", "1")
    key_path.chmod(0o644)
    with pytest.raises(SecretError, match="accessible by group or others") as info:
        SecretStore(engine, key_path).get("a")
    assert "chmod 600" in info.value.hint
    key_path.chmod(0o640)
    with pytest.raises(SecretError, match="mode 0640"):
        SecretStore(engine, key_path).set("b", "2")


def test_wrong_key_cannot_decrypt(
    engine: Engine, key_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    SecretStore(engine, key_path).set("orders", "hunter2")
    other = SecretStore(engine, tmp_path / "other.key")
    with pytest.raises(SecretError) as info:
        other.get("orders")
    assert info.value.message == "stored secret 'orders' cannot be decrypted with this key"
    monkeypatch.setenv(KEY_ENV, base64.b64encode(os.urandom(32)).decode())
    with pytest.raises(SecretError, match="cannot be decrypted"):
        SecretStore(engine, key_path).get("orders")


def test_ciphertext_moved_to_another_name_does_not_decrypt(engine: Engine, key_path: Path) -> None:
    store = SecretStore(engine, key_path)
    store.set("a", "alpha-secret")
    store.set("b", "beta-secret")
    with engine.begin() as conn:
        row = conn.execute(select(secrets).where(secrets.c.name == "a")).one()
        conn.execute(
            update(secrets)
            .where(secrets.c.name == "b")
            .values(nonce=row.nonce, ciphertext=row.ciphertext)
        )
    with pytest.raises(SecretError, match="'b' cannot be decrypted"):
        store.get("b")


def test_env_key_takes_precedence(
    engine: Engine, key_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, base64.b64encode(os.urandom(32)).decode())
    store = SecretStore(engine, key_path)
    store.set("a", "1")
    assert not key_path.exists()
    assert store.key_source == f"${KEY_ENV}"
    assert SecretStore(engine, key_path).get("a") == "1"


@pytest.mark.parametrize("bad", ["not base64!!", base64.b64encode(b"short").decode()])
def test_bad_env_key(
    engine: Engine, key_path: Path, monkeypatch: pytest.MonkeyPatch, bad: str
) -> None:
    monkeypatch.setenv(KEY_ENV, bad)
    with pytest.raises(SecretError, match=KEY_ENV) as info:
        SecretStore(engine, key_path).set("a", "1")
    assert bad not in info.value.message


def test_invalid_names_and_empty_values(engine: Engine, key_path: Path) -> None:
    store = SecretStore(engine, key_path)
    with pytest.raises(SecretError, match="not a valid secret name"):
        store.set("-bad name", "1")
    with pytest.raises(SecretError, match="empty value"):
        store.set("ok", "")


def test_for_manifest_uses_the_state_dir(engine: Engine, tmp_path: Path) -> None:
    manifest = Manifest(state=State(dir=Path("st")), base_dir=tmp_path)
    store = SecretStore.for_manifest(manifest, engine)
    assert store.key_path == tmp_path / "st" / "secret-store.key"
