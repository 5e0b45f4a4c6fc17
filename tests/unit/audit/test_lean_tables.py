"""Revision 0004 on SQLite: chain events and captured results without a rowid, a search index
without column sizes; a store written before it keeps its chain, search and replay."""

from __future__ import annotations

from pathlib import Path

from audit_builders import make_command, make_session
from sqlalchemy import text
from sqlalchemy.engine import Engine

from lockgate import schema
from lockgate.audit.query import get_session
from lockgate.audit.recorder import AuditRecorder
from lockgate.audit.search import SearchFilter, search
from lockgate.audit.tables import FTS_TABLE
from lockgate.audit.verify import verify
from lockgate.model import CapturedResult, ResultSummary
from lockgate.store import open_engine

LEAN = ("audit_events", "command_results")
# RowDescription (one int4 column), one DataRow, CommandComplete.
RESULT = (
    b"T\x00\x00\x00\x1a\x00\x01n\x00\x00\x00\x40\x06\x00\x03\x00\x00\x00\x17\x00\x04"
    b"\xff\xff\xff\xff\x00\x00D\x00\x00\x00\x0b\x00\x01\x00\x00\x00\x017"
    b"C\x00\x00\x00\x0dSELECT 1\x00"
)


def _ddl(engine: Engine, name: str) -> str:
    with engine.connect() as conn:
        found = conn.execute(
            text("SELECT sql FROM sqlite_master WHERE name = :n"), {"n": name}
        ).scalar()
    return str(found)


def _as_before_0004(engine: Engine) -> None:
    """Rebuild the lean tables the way revisions before 0004 made them, rows kept."""
    with engine.begin() as conn:
        for name in LEAN:
            ddl = _ddl(engine, name).replace("WITHOUT ROWID", "")
            conn.exec_driver_sql(f"ALTER TABLE {name} RENAME TO {name}_lean")
            conn.exec_driver_sql(ddl)
            conn.exec_driver_sql(f"INSERT INTO {name} SELECT * FROM {name}_lean")
            conn.exec_driver_sql(f"DROP TABLE {name}_lean")
        conn.exec_driver_sql("CREATE INDEX ix_audit_events_ref ON audit_events (session_id, item)")
        conn.exec_driver_sql(f"ALTER TABLE {FTS_TABLE} RENAME TO fts_lean")
        conn.exec_driver_sql(
            f"CREATE VIRTUAL TABLE {FTS_TABLE} USING fts5("
            "text, session_id UNINDEXED, seq UNINDEXED)"
        )
        conn.exec_driver_sql(
            f"INSERT INTO {FTS_TABLE} (rowid, text, session_id, seq) "
            "SELECT rowid, text, session_id, seq FROM fts_lean"
        )
        conn.exec_driver_sql("DROP TABLE fts_lean")
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = '0003'")


def _counts(engine: Engine) -> tuple[int, ...]:
    with engine.connect() as conn:
        return tuple(
            int(conn.execute(text(f"SELECT count(*) FROM {name}")).scalar_one())
            for name in (*LEAN, FTS_TABLE)
        )


async def _record(engine: Engine, journal_dir: Path) -> None:
    rec = AuditRecorder(engine, journal_dir)
    await rec.start()
    for i in range(3):
        sid = f"s-{i}"
        await rec.session_started(make_session(sid))
        for seq in (1, 2):
            await rec.command_started(make_command(sid, seq, f"SELECT n FROM ledger_{i}_{seq}"))
            captured = CapturedResult("pgwire", RESULT, 1, 0, 0)
            rec.command_finished(
                sid, seq, ResultSummary(1, "SELECT 1", None, None, 71, 0.5, captured)
            )
    await rec.close()


async def test_new_stores_are_lean(tmp_path: Path) -> None:
    engine = open_engine(f"sqlite:///{tmp_path / 'state' / 'lockgate.db'}")
    try:
        for name in LEAN:
            assert "WITHOUT ROWID" in _ddl(engine, name)
        assert "columnsize=0" in _ddl(engine, FTS_TABLE)
    finally:
        engine.dispose()


async def test_a_store_from_before_is_rebuilt_with_its_chain_search_and_results(
    tmp_path: Path,
) -> None:
    state_dir = tmp_path / "state"
    engine = open_engine(f"sqlite:///{state_dir / 'lockgate.db'}")
    try:
        await _record(engine, state_dir / "journal")
        _as_before_0004(engine)
        before = _counts(engine)
        # Events: 3 session starts, and each command chained with its outcome as one.
        assert before == (3 * 2 + 3, 6, 6)
        for name in LEAN:
            assert "WITHOUT ROWID" not in _ddl(engine, name)
        assert schema.state(engine).current == "0003"

        assert schema.migrate(engine) == ("0003", schema.head())

        for name in LEAN:
            assert "WITHOUT ROWID" in _ddl(engine, name)
        assert "columnsize=0" in _ddl(engine, FTS_TABLE)
        assert "ix_audit_events_ref" in _ddl(engine, "ix_audit_events_ref")
        assert _counts(engine) == before
        report = verify(engine, state_dir)
        assert report.ok, report.findings()
        assert report.as_dict()["events"] == before[0]
        hits = search(engine, SearchFilter(text="ledger_1_2"))
        assert [(h["session_id"], h["seq"]) for h in hits] == [("s-1", 2)]
        session = get_session(engine, "s-2")
        assert session is not None
        assert [c["result_data"] for c in session["commands"]] == [RESULT, RESULT]
        # Running it again changes nothing.
        assert schema.migrate(engine) == (schema.head(), schema.head())
        assert _counts(engine) == before
    finally:
        engine.dispose()
