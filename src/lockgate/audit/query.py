"""Reading the audit store: sessions with their statements, and refused connections."""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, or_, select
from sqlalchemy.engine import Engine

from lockgate.audit.tables import command_results, commands, refusals, sessions
from lockgate.errors import LockgateError


class AmbiguousSessionId(LockgateError):
    """A session id prefix matches more than one session."""


def _statement_count() -> Any:
    return (
        select(func.count())
        .select_from(commands)
        .where(commands.c.session_id == sessions.c.id)
        .scalar_subquery()
        .label("statements")
    )


def _session_dict(row: Any) -> dict[str, Any]:
    d = dict(row._mapping)
    started: datetime = d["started_at"]
    ended: datetime | None = d["ended_at"]
    d["duration_ms"] = None if ended is None else (ended - started).total_seconds() * 1000
    d["live"] = ended is None
    return d


def _denied_count() -> Any:
    return (
        select(func.count())
        .select_from(commands)
        .where(commands.c.session_id == sessions.c.id, commands.c.decision == "deny")
        .scalar_subquery()
        .label("denied")
    )


def _masked_sum() -> Any:
    return (
        select(func.coalesce(func.sum(commands.c.masked_cells), 0))
        .where(commands.c.session_id == sessions.c.id)
        .scalar_subquery()
        .label("masked_cells")
    )


def _held_count() -> Any:
    from lockgate.approvals.tables import approval_requests as held

    return (
        select(func.count())
        .select_from(held)
        .where(held.c.session_id == sessions.c.id, held.c.kind == "statement")
        .scalar_subquery()
        .label("held")
    )


def list_sessions(
    engine: Engine,
    *,
    subject: str | None = None,
    resource: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 50,
    issuer: str | None = None,
    where: Sequence[Any] = (),
    before: tuple[datetime, str] | None = None,
    held: bool = False,
) -> list[dict[str, Any]]:
    """The most recent sessions first, with their statement count and duration.

    Also counts denied statements and masked cells, and with `held` the statements held
    for review (that needs the approval tables in the store). `where`: more conditions
    on `sessions` (e.g. `search.in_group`); `before`: the (started_at, id) of the last
    session of a previous page, for keyset paging.
    """
    counts = [
        _statement_count(),
        _denied_count(),
        _masked_sum(),
        *([_held_count()] if held else []),
    ]
    q = select(sessions, *counts)
    for condition in where:
        q = q.where(condition)
    if before is not None:
        at, sid = before
        q = q.where(
            or_(sessions.c.started_at < at, and_(sessions.c.started_at == at, sessions.c.id > sid))
        )
    if issuer is not None:
        q = q.where(sessions.c.issuer == issuer)
    if subject is not None:
        q = q.where(sessions.c.subject == subject)
    if resource is not None:
        q = q.where(sessions.c.resource == resource)
    if since is not None:
        q = q.where(sessions.c.started_at >= since)
    if until is not None:
        q = q.where(sessions.c.started_at < until)
    q = q.order_by(sessions.c.started_at.desc(), sessions.c.id).limit(limit)
    with engine.connect() as conn:
        return [_session_dict(r) for r in conn.execute(q)]


def get_session(engine: Engine, id_or_prefix: str) -> dict[str, Any] | None:
    """One session by id or unique id prefix, with its `commands` ordered by seq."""
    with engine.connect() as conn:
        row = conn.execute(
            select(sessions, _statement_count()).where(sessions.c.id == id_or_prefix)
        ).first()
        if row is None and id_or_prefix:
            pattern = (
                id_or_prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            )
            rows = conn.execute(
                select(sessions, _statement_count())
                .where(sessions.c.id.like(pattern, escape="\\"))
                .order_by(sessions.c.started_at.desc())
                .limit(6)
            ).all()
            if len(rows) > 1:
                shown = ", ".join(r.id for r in rows[:5])
                more = " and more" if len(rows) > 5 else ""
                raise AmbiguousSessionId(
                    f"session id prefix {id_or_prefix!r} matches several sessions: {shown}{more}",
                    hint="give more characters of the id",
                )
            row = rows[0] if rows else None
        if row is None:
            return None
        session = _session_dict(row)
        cmds = conn.execute(
            select(commands).where(commands.c.session_id == row.id).order_by(commands.c.seq)
        )
        session["commands"] = [dict(c._mapping) for c in cmds]
        results = {
            r.seq: (r.format, r.codec, bytes(r.data))
            for r in conn.execute(
                select(command_results).where(command_results.c.session_id == row.id)
            )
        }
    for c in session["commands"]:
        found = results.get(c["seq"])
        c["result_format"] = None if found is None else found[0]
        c["result_data"] = None if found is None else _inflate(found[1], found[2])
    return session


def _inflate(codec: str, data: bytes) -> bytes | None:
    """A captured result's bytes (None when the stored codec is unknown or the data damaged)."""
    if codec == "raw":
        return data
    if codec != "zlib":
        return None
    try:
        return zlib.decompress(data)
    except zlib.error:
        return None


def list_refusals(engine: Engine, *, limit: int = 50) -> list[dict[str, Any]]:
    """The most recent refused connections first."""
    q = select(refusals).order_by(refusals.c.at.desc(), refusals.c.id.desc()).limit(limit)
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(q)]
