"""`lockgate secret`: values go in through stdin and never come back out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from lockgate.cli import main
from lockgate.config.loader import load_manifest
from lockgate.secrets.store import KEY_ENV, SecretStore
from lockgate.store import open_engine

VALUE = "correct horse battery staple"


@pytest.fixture(autouse=True)
def _no_env_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "lockgate.yaml"
    path.write_text(
        "state: {url: 'sqlite:///state/lockgate.db', dir: state}\n"
        "resources:\n"
        "  - name: orders\n"
        "    upstream: {database: orders, user: gw, password: store:orders-pw}\n"
    )
    return path


def run(config: Path, *args: str, stdin: str | None = None) -> Result:
    return CliRunner().invoke(main, ["secret", *args, "-c", str(config)], input=stdin)


def test_set_from_stdin_then_list_shows_name_not_value(config: Path, tmp_path: Path) -> None:
    result = run(config, "set", "orders-pw", stdin=VALUE + "\n")
    assert result.exit_code == 0, result.output
    assert "stored secret 'orders-pw'" in result.stdout
    assert "Used by: orders" in result.stdout
    assert "A new key was created" in result.stdout
    assert VALUE not in result.output
    assert (tmp_path / "state" / "secret-store.key").stat().st_mode & 0o777 == 0o600

    listed = run(config, "list")
    assert listed.exit_code == 0, listed.output
    assert "orders-pw" in listed.stdout
    assert "orders" in listed.stdout
    assert VALUE not in listed.output

    as_json = run(config, "list", "--json")
    assert as_json.exit_code == 0
    [entry] = json.loads(as_json.stdout)
    assert entry["name"] == "orders-pw"
    assert entry["used_by"] == ["orders"]
    assert set(entry) == {"name", "updated_at", "used_by"}

    # The stored value is exactly what was piped in, minus the one trailing newline.
    manifest = load_manifest(config)
    engine = open_engine(manifest.state_url)
    try:
        assert SecretStore.for_manifest(manifest, engine).get("orders-pw") == VALUE
    finally:
        engine.dispose()


def test_value_is_never_an_argument(config: Path) -> None:
    result = run(config, "set", "orders-pw", VALUE, stdin=VALUE)
    assert result.exit_code == 1
    assert "never taken as arguments" in result.stderr
    assert VALUE not in result.output
    assert json.loads(run(config, "list", "--json").stdout) == []


def test_empty_value_is_refused(config: Path) -> None:
    result = run(config, "set", "x", stdin="")
    assert result.exit_code == 1
    assert "empty" in result.stderr


def test_list_when_empty(config: Path) -> None:
    result = run(config, "list")
    assert result.exit_code == 0
    assert "No secrets stored yet" in result.stdout
    assert json.loads(run(config, "list", "--json").stdout) == []


def test_delete(config: Path) -> None:
    run(config, "set", "spare", stdin="x")
    assert run(config, "delete", "spare").exit_code == 0
    missing = run(config, "delete", "spare")
    assert missing.exit_code == 1
    assert "no stored secret named 'spare'" in missing.stderr


def test_delete_refuses_a_secret_in_use_without_force(config: Path) -> None:
    run(config, "set", "orders-pw", stdin="x")
    refused = run(config, "delete", "orders-pw")
    assert refused.exit_code == 1
    assert "still used by orders" in refused.stderr
    assert run(config, "delete", "orders-pw", "--force").exit_code == 0
