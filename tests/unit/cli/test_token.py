from __future__ import annotations

import json
from pathlib import Path

import jwt
import pytest
from click.testing import CliRunner

from lockgate.cli import main

MANIFEST = """\
version: 1
state:
  url: sqlite:///state/lockgate.db
  dir: state
identity:
  gateway_tokens:
    default_ttl: 1h
    max_ttl: 7d
resources:
  - name: orders
    upstream:
      host: db.internal
      database: orders
      user: app
access:
  - name: orders-readers
    resources: [orders]
    groups: [readers]
"""


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "lockgate.yaml"
    path.write_text(MANIFEST)
    return path


def _run(config: Path, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["token", args[0], "-c", str(config), *args[1:]])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def _issue(config: Path, *args: str) -> str:
    code, out, err = _run(config, "issue", *args)
    assert code == 0, err
    return out.strip()


def test_issue_prints_only_the_token_on_stdout(config: Path) -> None:
    code, out, err = _run(config, "issue", "--subject", "ci-bot", "--group", "readers")
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 1
    claims = jwt.decode(lines[0], options={"verify_signature": False})
    assert claims["sub"] == "ci-bot"
    assert claims["groups"] == ["readers"]
    assert claims["exp"] - claims["iat"] == 3600
    # The friendly part goes to stderr: who, groups, id, expiry, how to revoke, what it reaches.
    assert "'ci-bot' (groups: readers)" in err
    assert claims["jti"] in err
    assert f"lockgate token revoke {claims['jti']}" in err
    assert "it can reach: orders" in err
    assert lines[0] not in err


def test_issue_options(config: Path) -> None:
    token = _issue(
        config,
        "--subject",
        "alice",
        "--group",
        "readers",
        "--group",
        "dba",
        "--ttl",
        "2d",
        "--scope",
        "orders",
        "--human",
    )
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["groups"] == ["readers", "dba"]
    assert claims["scope"] == ["orders"]
    assert claims["kind"] == "human"
    assert claims["exp"] - claims["iat"] == 2 * 86400


def test_issue_json(config: Path) -> None:
    code, out, _err = _run(config, "issue", "--subject", "ci-bot", "--json")
    assert code == 0
    data = json.loads(out)
    assert set(data) >= {"token", "jti", "subject", "groups", "expires_at"}
    assert data["subject"] == "ci-bot"
    assert data["scopes"] is None


def test_issue_warns_when_nothing_is_reachable(config: Path) -> None:
    code, _out, err = _run(config, "issue", "--subject", "x", "--scope", "nope")
    assert code == 0
    assert "resource 'nope' is not in the manifest" in err
    assert "no access rule lets this identity reach any resource" in err


@pytest.mark.parametrize(
    ("ttl", "message"),
    [("30d", "exceeds the maximum of 7d"), ("soon", "expected a duration")],
)
def test_issue_refuses_bad_ttl(config: Path, ttl: str, message: str) -> None:
    code, out, err = _run(config, "issue", "--subject", "ci-bot", "--ttl", ttl)
    assert code == 1
    assert out == ""
    assert message in err


def test_list_never_prints_tokens_and_revoke_marks_them(config: Path) -> None:
    token = _issue(config, "--subject", "ci-bot", "--group", "readers")
    jti = jwt.decode(token, options={"verify_signature": False})["jti"]

    code, out, _ = _run(config, "list")
    assert code == 0
    assert jti in out and "ci-bot" in out and "active" in out
    assert token not in out and token.split(".")[2] not in out

    code, out, _ = _run(config, "revoke", jti, "--reason", "rotated")
    assert code == 0
    assert f"Revoked token {jti}" in out

    code, out, _ = _run(config, "list", "--json")
    assert code == 0
    [row] = json.loads(out)
    assert row["jti"] == jti
    assert row["revoked"] is True
    assert row["revoked_reason"] == "rotated"
    assert row["status"] == "revoked"
    assert token not in out


def test_revoke_unknown_id(config: Path) -> None:
    code, _out, err = _run(config, "revoke", "no-such-id")
    assert code == 1
    assert "no token with id 'no-such-id'" in err
    assert "lockgate token list --all" in err


def test_list_when_empty(config: Path) -> None:
    code, out, _ = _run(config, "list")
    assert code == 0
    assert "No tokens" in out
    code, out, _ = _run(config, "list", "--all", "--json")
    assert json.loads(out) == []
