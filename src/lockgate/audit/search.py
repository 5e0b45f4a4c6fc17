"""Searching recorded statements: by who, where, when, decision, rule, and words.

Word search uses the store's full-text index: on SQLite the FTS5 table the ingester fills in
the same transaction as the commands (`audit_commands_fts`), on PostgreSQL a GIN index over
`to_tsvector('simple', text)`. Words are matched whole and all must occur (in any order);
on other backends a substring match is used.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Text,
    and_,
    column,
    func,
    literal_column,
    select,
    table,
    tuple_,
    type_coerce,
)
from sqlalchemy.engine import Engine

from lockgate.audit.tables import FTS_TABLE, commands, sessions

_WORD = re.compile(r"\w+", re.UNICODE)


@dataclass(frozen=True, slots=True)
class SearchFilter:
    """What `lockgate audit search` asks for; None means any."""

    subject: str | None = None
    group: str | None = None
    resource: str | None = None
    protocol: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    decision: str | None = None
    rule: str | None = None
    text: str | None = None
    session: str | None = None
    limit: int = 50


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _fts_query(text: str) -> str:
    return " ".join('"' + w.replace('"', '""') + '"' for w in words(text))


def in_group(group: str) -> Any:
    """A condition on `sessions`: the session's principal was in `group`."""
    escaped = group.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    # groups is a JSON list kept as text: match one whole quoted element.
    groups = type_coerce(sessions.c.groups, Text)
    return groups.like(f'%"{escaped}"%', escape="\\")


def sessions_matching(engine: Engine, text: str) -> Any:
    """A condition on `sessions`: one of its statements matches the words of `text`."""
    return sessions.c.id.in_(select(commands.c.session_id).where(_text_match(engine, text)))


def search(engine: Engine, f: SearchFilter) -> list[dict[str, Any]]:
    """Matching statements, newest first, each with its session's who and where."""
    c, s = commands, sessions
    q = select(
        c,
        s.c.subject,
        s.c.groups,
        s.c.resource,
        s.c.protocol,
        s.c.client_addr,
    ).select_from(c.join(s, s.c.id == c.c.session_id))
    where: list[Any] = []
    if f.subject is not None:
        where.append(s.c.subject == f.subject)
    if f.group is not None:
        where.append(in_group(f.group))
    if f.resource is not None:
        where.append(s.c.resource == f.resource)
    if f.protocol is not None:
        where.append(s.c.protocol == f.protocol)
    if f.session is not None:
        where.append(c.c.session_id == f.session)
    if f.since is not None:
        where.append(c.c.started_at >= f.since)
    if f.until is not None:
        where.append(c.c.started_at < f.until)
    if f.decision == "masked":
        where.append(c.c.masked_cells > 0)
    elif f.decision is not None:
        where.append(c.c.decision == f.decision)
    if f.rule is not None:
        where.append(c.c.rule == f.rule)
    match = _text_match(engine, f.text) if f.text else None
    order = (c.c.started_at.desc(), c.c.session_id, c.c.seq.desc())
    with engine.begin() as conn:
        if match is not None and engine.dialect.name == "postgresql" and words(f.text or ""):
            # PostgreSQL estimates a rare word as fairly common and then scans statements
            # newest first, testing each (seconds on a million). Count the matches through
            # the GIN index first (bounded): when they are few, fetch them that way.
            conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
            conn.exec_driver_sql("SET LOCAL enable_indexscan = off")
            probe = select(c.c.seq).where(match).limit(_FEW).subquery()
            few = conn.execute(select(func.count()).select_from(probe)).scalar_one() < _FEW
            if few:
                hits = select(c.c.session_id, c.c.seq).where(match).cte("hits")
                hits = hits.prefix_with("MATERIALIZED")
                match = tuple_(c.c.session_id, c.c.seq).in_(select(hits.c.session_id, hits.c.seq))
            else:
                conn.exec_driver_sql("SET LOCAL enable_seqscan = on")
                conn.exec_driver_sql("SET LOCAL enable_indexscan = on")
        if match is not None:
            where.append(match)
        q = q.where(and_(*where)) if where else q
        q = q.order_by(*order).limit(f.limit)
        return [dict(r._mapping) for r in conn.execute(q)]


_FEW = 1000


def _text_match(engine: Engine, text: str) -> Any:
    name = engine.dialect.name
    if not words(text):
        return commands.c.text.contains(text, autoescape=True)
    if name == "sqlite":
        fts = table(FTS_TABLE, column("session_id"), column("seq"))
        hits = (
            select(fts.c.session_id, fts.c.seq)
            .select_from(fts)
            .where(literal_column(FTS_TABLE).op("MATCH")(_fts_query(text)))
        )
        return tuple_(commands.c.session_id, commands.c.seq).in_(hits)
    if name == "postgresql":
        return func.to_tsvector(literal_column("'simple'"), commands.c.text).op("@@")(
            func.plainto_tsquery(literal_column("'simple'"), " ".join(words(text)))
        )
    return and_(*(commands.c.text.contains(w, autoescape=True) for w in words(text)))
