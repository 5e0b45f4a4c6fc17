from __future__ import annotations

from pathlib import Path

from tests.unit.admin.conftest import make_manifest

from lockgate.admin.roles import reads_everything, roles_for
from lockgate.config.model import Manifest


def test_roles_follow_the_group_mapping(manifest: Manifest) -> None:
    assert roles_for(manifest, ["secops"]) == ("admin",)
    assert roles_for(manifest, ["audit", "secops"]) == ("admin", "auditor")
    assert roles_for(manifest, ["it"]) == ()
    assert roles_for(manifest, []) == ()


def test_approval_reviewers_are_reviewers(manifest: Manifest) -> None:
    assert roles_for(manifest, ["dba"]) == ("reviewer",)
    assert not reads_everything(("reviewer",))
    assert reads_everything(("auditor",)) and reads_everything(("admin",))


def test_mapped_reviewer_groups(tmp_path: Path) -> None:
    m = make_manifest(tmp_path, admin={"roles": {"reviewer": ["oncall"]}})
    assert roles_for(m, ["oncall"]) == ("reviewer",)
    assert roles_for(m, ["secops"]) == ()  # no admin mapping in this manifest


def test_no_admin_section_means_only_reviewers(tmp_path: Path) -> None:
    m = make_manifest(tmp_path, admin=None)
    assert roles_for(m, ["secops", "dba"]) == ("reviewer",)
