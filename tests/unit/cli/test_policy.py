"""`lockgate policy test`: differences between a candidate manifest and a baseline."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from click.testing import CliRunner

from lockgate.cli import main


def _manifest(path: Path, rules: list[dict[str, Any]]) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "state": {"url": f"sqlite:///{path.parent / 'state.db'}", "dir": "state"},
                "resources": [{"name": "prod", "upstream": {"database": "d", "user": "u"}}],
                "access": [{"name": "all", "resources": ["prod"], "groups": ["dev"]}],
                "guardrails": {"rules": rules},
            }
        )
    )
    return path


def test_statements_file_against_current_manifest(tmp_path: Path) -> None:
    current = _manifest(
        tmp_path / "current.yaml", [{"name": "no-drop", "match": {"kinds": ["drop"]}}]
    )
    candidate = _manifest(tmp_path / "candidate.yaml", [{"use": "protect-production"}])
    sql = tmp_path / "statements.sql"
    sql.write_text("SELECT 1;\nDELETE FROM t;\nDROP TABLE t;\nDELETE FROM t WHERE id = 1;\n")
    out = CliRunner().invoke(
        main,
        ["policy", "test", "-c", str(candidate), "--against", str(current),
         "--statements", str(sql), "--group", "dev", "--json"],
    )  # fmt: skip
    assert out.exit_code == 0, out.output
    got = json.loads(out.output)
    assert got["statements"] == 4
    changes = {c["statement"]: c for c in got["changes"]}
    # DROP was refused before and still is (another rule name: still a change of rule).
    assert changes["DELETE FROM t"]["before"]["decision"] == "allow"
    assert changes["DELETE FROM t"]["after"]["rule"] == "protect-production/no-unbounded-write"
    assert "SELECT 1" not in changes
    assert "DELETE FROM t WHERE id = 1" not in changes


def test_human_output_names_both_directions(tmp_path: Path) -> None:
    current = _manifest(
        tmp_path / "current.yaml", [{"name": "no-select", "match": {"kinds": ["select"]}}]
    )
    candidate = _manifest(
        tmp_path / "candidate.yaml", [{"name": "no-drop", "match": {"kinds": ["drop"]}}]
    )
    sql = tmp_path / "s.sql"
    sql.write_text("SELECT 1; DROP TABLE t;")
    out = CliRunner().invoke(
        main,
        [
            "policy",
            "test",
            "-c",
            str(candidate),
            "--against",
            str(current),
            "--statements",
            str(sql),
        ],
    )
    assert out.exit_code == 0, out.output
    assert "2 would change" in out.output
    assert "now allowed: deny (no-select) -> allow" in out.output
    assert "now refused: allow -> deny (no-drop)" in out.output
