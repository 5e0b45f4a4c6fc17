"""Fixtures for identity tests: a manifest with its own state dir and SQLite store; a test
OIDC issuer (`idp`, one RS256 key) and its login endpoints."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from tests.identity_provider import TestIssuer
from tests.login_provider import LoginEndpoints

from lockgate.config.model import Manifest, State
from lockgate.identity.tokens import GatewayTokenAuthority
from lockgate.store import open_engine


@pytest.fixture
def manifest(tmp_path: Path) -> Manifest:
    return Manifest(
        state=State(url=f"sqlite:///{tmp_path}/state/lockgate.db", dir=tmp_path / "state"),
        base_dir=tmp_path,
    )


@pytest.fixture
def engine(manifest: Manifest) -> Iterator[Engine]:
    eng = open_engine(manifest.state_url, create=False)
    yield eng
    eng.dispose()


@pytest.fixture
def authority(manifest: Manifest, engine: Engine) -> GatewayTokenAuthority:
    return GatewayTokenAuthority(manifest, engine)


@pytest.fixture
def idp() -> Iterator[TestIssuer]:
    issuer = TestIssuer()
    issuer.add_key("RS256", kid="rsa-1")
    yield issuer
    issuer.close()


@pytest.fixture
def endpoints(idp: TestIssuer) -> Iterator[LoginEndpoints]:
    served = LoginEndpoints(idp)
    yield served
    served.close()
