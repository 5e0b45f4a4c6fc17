"""Fixtures for admin unit tests: a manifest with an `admin:` section and its own store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine

from lockgate.admin.context import AdminContext
from lockgate.config.model import Manifest
from lockgate.store import open_engine


def make_manifest(tmp_path: Path, **extra: Any) -> Manifest:
    data: dict[str, Any] = {
        "state": {"url": f"sqlite:///{tmp_path}/state/lockgate.db", "dir": str(tmp_path / "state")},
        "admin": {"listen": "127.0.0.1:0", "roles": {"admin": ["secops"], "auditor": ["audit"]}},
        "approvals": {"rules": [{"name": "dba-review", "reviewers": ["dba"]}]},
        "base_dir": tmp_path,
    }
    data.update(extra)
    return Manifest.model_validate(data)


@pytest.fixture
def manifest(tmp_path: Path) -> Manifest:
    return make_manifest(tmp_path)


@pytest.fixture
def engine(manifest: Manifest) -> Iterator[Engine]:
    eng = open_engine(manifest.state_url)
    yield eng
    eng.dispose()


@pytest.fixture
def ctx(manifest: Manifest, engine: Engine) -> AdminContext:
    return AdminContext.for_manifest(manifest, engine)
