"""`lockgate token revoke --subject / --issuer` and `lockgate token restore`."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from lockgate.cli import main
from lockgate.config.loader import load_manifest
from lockgate.identity.revocation import find_revocation, list_revocations
from lockgate.identity.tokens import GatewayTokenAuthority
from lockgate.store import open_engine

IDP = "https://token.actions.githubusercontent.com"
MANIFEST = f"""\
version: 1
state:
  url: sqlite:///state/lockgate.db
  dir: state
identity:
  oidc:
    - issuer: {IDP}
      audiences: [https://github.com/acme]
      kind: machine
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


def test_revoke_subject_covers_gateway_tokens_and_every_issuer(config: Path) -> None:
    manifest = load_manifest(config)
    engine = open_engine(manifest.state_url)
    try:
        issued = GatewayTokenAuthority(manifest, engine).issue("ci-deploy")
        code, out, _ = _run(config, "revoke", "--subject", "ci-deploy", "--reason", "left")
        assert code == 0, out
        assert "1 gateway token(s) revoked" in out
        record = GatewayTokenAuthority(manifest, engine).lookup(issued.jti)
        assert record is not None and record.revoked
        found = find_revocation(engine, IDP, "ci-deploy", None)
        assert found is not None and found.reason == "left"

        code, out, _ = _run(config, "restore", "--subject", "ci-deploy")
        assert code == 0 and "Restored" in out
        assert find_revocation(engine, IDP, "ci-deploy", None) is None
        code, _, err = _run(config, "restore", "--subject", "ci-deploy")
        assert code == 1 and "is not revoked" in err
    finally:
        engine.dispose()


def test_revoke_an_oidc_token_by_issuer_and_jti(config: Path) -> None:
    code, out, _ = _run(config, "revoke", "abc123", "--issuer", IDP)
    assert code == 0, out
    manifest = load_manifest(config)
    engine = open_engine(manifest.state_url)
    try:
        [entry] = list_revocations(engine)
        assert (entry.issuer, entry.jti, entry.subject) == (IDP, "abc123", None)
    finally:
        engine.dispose()


def test_revoke_needs_exactly_one_target_and_a_known_issuer(config: Path) -> None:
    code, _, err = _run(config, "revoke")
    assert code == 1 and "--subject" in err
    code, _, err = _run(config, "revoke", "x", "--subject", "y")
    assert code == 1
    code, _, err = _run(config, "revoke", "--subject", "y", "--issuer", "https://nope.example")
    assert code == 1 and "not in the manifest" in err
