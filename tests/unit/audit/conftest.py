"""Audit test fixtures: a real SQLite state store and a journal folder in tmp_path."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from audit_builders import make_engine
from sqlalchemy.engine import Engine

from lockgate.audit.recorder import AuditRecorder
from lockgate.store import open_engine


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "lockgate.db"


@pytest.fixture
def journal_dir(tmp_path: Path) -> Path:
    return tmp_path / "state" / "journal"


@pytest.fixture
def engine(db_path: Path) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{db_path}")
    yield engine
    engine.dispose()


@pytest.fixture
def reader(db_path: Path, engine: Engine) -> Iterator[Engine]:
    """A second engine on the same file, as another process (the CLI) would open it."""
    other = open_engine(f"sqlite:///{db_path}", create=False)
    yield other
    other.dispose()


@pytest.fixture
async def recorder(engine: Engine, journal_dir: Path) -> AsyncIterator[AuditRecorder]:
    """A recorder with its in-process ingester thread (`await recorder.sync()` to read)."""
    rec = AuditRecorder(engine, journal_dir)
    await rec.start()
    yield rec
    await rec.close()
