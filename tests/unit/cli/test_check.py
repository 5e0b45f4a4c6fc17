"""`lockgate check`: a summary and warnings for a valid manifest, every problem otherwise."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from lockgate.cli import main

REPO = Path(__file__).resolve().parents[3]

MANIFEST = """\
listeners:
  - name: pg
    address: 127.0.0.1:6432
    tls: {enabled: false}
resources:
  - name: orders
    upstream:
      host: db.example.com
      database: orders
      user: gateway
      password: store:orders
      tls: {mode: prefer}
  - name: local
    upstream: {database: postgres, user: postgres, tls: {mode: disable}}
  - name: orphan
    upstream: {host: 127.0.0.1, database: postgres, user: postgres}
access:
  - {name: support, resources: [orders], groups: [support]}
  - {name: alice, resources: [local], subjects: [alice]}
  - {name: nobody, resources: ["*"]}
"""


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_valid_manifest_with_warnings(tmp_path: Path) -> None:
    path = tmp_path / "lockgate.yaml"
    path.write_text(MANIFEST)
    code, out, err = run("check", "-c", str(path))
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == f"✓ {path} is valid: 1 listener, 3 resources, 3 access rules"
    warnings = "\n".join(lines[1:])
    assert "listeners[0] (pg, 127.0.0.1:6432): TLS is disabled" in warnings
    assert "resources[0] (orders): upstream.tls.mode is 'prefer'" in warnings
    assert "resources[2] (orphan): no access rule lets anyone reach it" in warnings
    assert "access[2] (nobody): names no subjects and no groups" in warnings
    # Unencrypted TLS to a server on this machine is not worth a warning.
    assert "resources[1] (local): upstream.tls" not in warnings
    assert all(line.startswith("warning: ") for line in lines[1:])


def test_strict_fails_on_warnings(tmp_path: Path) -> None:
    path = tmp_path / "lockgate.yaml"
    path.write_text(MANIFEST)
    code, _, _ = run("check", "--strict", "-c", str(path))
    assert code == 1


def test_example_manifest_is_valid() -> None:
    code, out, err = run("check", "-c", str(REPO / "examples" / "lockgate.yaml"))
    assert code == 0, err
    assert "is valid: 1 listener, 2 resources, 3 access rules" in out.splitlines()[0]


def test_invalid_manifest_lists_every_problem(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        MANIFEST.replace("user: gateway", "user: gateway\n      port: 0").replace(
            "resources: [local]", "resources: [locale]"
        )
    )
    code, out, err = run("check", "-c", str(path))
    assert code == 1
    assert out == ""
    lines = err.splitlines()
    assert lines[0] == f"✗ {path} has 2 problems:"
    assert lines[1] == (
        f"  {path}:11: resources[0].upstream.port: Input should be greater than or equal to 1 "
        "(got 0)"
    )
    assert lines[2] == (
        f"  {path}:20: access[1].resources[0]: no resource named 'locale' (did you mean 'local'?)"
    )
    assert lines[3].startswith("hint: ")


@pytest.mark.parametrize("name", ["missing.yaml"])
def test_missing_manifest(tmp_path: Path, name: str) -> None:
    code, _, err = run("check", "-c", str(tmp_path / name))
    assert code == 1
    assert "no manifest at" in err
