"""Retention and legal hold: purge expired sessions and refusals, keep the chains verifiable.

Theory of operation
-------------------
A session expires when its end (or its start, if it never recorded an end) is older than
the retention of its resource (`audit.resource_retention`, else `audit.retention`); a
refused connection by its time. Sessions under legal hold (`audit_holds`) never expire.

Purging deletes the rows (a session with its commands) but keeps their chain events: for
each chain touched, one transaction signs a `purge` checkpoint with this host's audit key
that records how many events it removed, a digest over their positions and digests, and
the chain position and hash it ends on, then marks those events with it. `verify` walks
across purged events with their stored digests and checks them against the seal, so the
chain stays verifiable and nobody can pass off a deletion as a purge without the key.
"""

from __future__ import annotations

import getpass
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import and_, delete, func, insert, or_, select, text, update
from sqlalchemy.engine import Connection, Engine

from lockgate.audit.chain import (
    FTS_SHIFT,
    KEY_FILE,
    STATEMENTS,
    Checkpoint,
    chain_name,
    load_or_create_key,
    public_hex,
    purge_digest,
    ts_text,
)
from lockgate.audit.tables import (
    CHAIN_TABLES,
    FTS_TABLE,
    audit_chains,
    audit_checkpoints,
    audit_events,
    audit_holds,
    commands,
    refusals,
    sessions,
)
from lockgate.errors import LockgateError
from lockgate.store import metadata

_BATCH = 500


class UnknownSession(LockgateError):
    """No session has this id (or unique id prefix)."""


# ---------------------------------------------------------------------- legal hold


def resolve_session(conn: Connection, id_or_prefix: str) -> str:
    """The full id of the one session `id_or_prefix` names."""
    pattern = id_or_prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    found = [
        r.id
        for r in conn.execute(
            select(sessions.c.id)
            .where(or_(sessions.c.id == id_or_prefix, sessions.c.id.like(pattern, escape="\\")))
            .limit(2)
        )
    ]
    if id_or_prefix in found:
        return id_or_prefix
    if len(found) != 1:
        raise UnknownSession(
            f"{'several sessions match' if found else 'no session'} {id_or_prefix!r}",
            hint="list sessions with `lockgate audit sessions`; give more of the id",
        )
    return str(found[0])


def hold(engine: Engine, id_or_prefix: str, reason: str, by: str | None = None) -> str:
    """Put a session under legal hold (purges skip it); returns its full id."""
    metadata.create_all(engine, tables=CHAIN_TABLES)
    with engine.begin() as conn:
        sid = resolve_session(conn, id_or_prefix)
        values = {
            "reason": reason,
            "held_by": by or _operator(),
            "held_at": datetime.now(UTC),
        }
        done = conn.execute(
            update(audit_holds).where(audit_holds.c.session_id == sid).values(**values)
        )
        if done.rowcount == 0:
            conn.execute(insert(audit_holds).values(session_id=sid, **values))
    return sid


def release(engine: Engine, id_or_prefix: str) -> str | None:
    """Lift a session's legal hold; its full id, or None if it was not held."""
    metadata.create_all(engine, tables=CHAIN_TABLES)
    with engine.begin() as conn:
        held = conn.execute(
            select(audit_holds.c.session_id).where(
                audit_holds.c.session_id.like(id_or_prefix.replace("%", "") + "%")
            )
        ).all()
        if len(held) != 1:
            return None
        sid = str(held[0][0])
        conn.execute(delete(audit_holds).where(audit_holds.c.session_id == sid))
    return sid


def list_holds(engine: Engine) -> list[dict[str, Any]]:
    metadata.create_all(engine, tables=CHAIN_TABLES)
    with engine.connect() as conn:
        q = select(audit_holds).order_by(audit_holds.c.held_at)
        return [dict(r._mapping) for r in conn.execute(q)]


def _operator() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


# ---------------------------------------------------------------------- purge


@dataclass(slots=True)
class PurgeResult:
    sessions: int = 0
    commands: int = 0
    refusals: int = 0
    held: int = 0
    events: int = 0
    seals: int = 0
    session_ids: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "sessions": self.sessions,
            "commands": self.commands,
            "refusals": self.refusals,
            "held_sessions_kept": self.held,
            "chain_events_sealed": self.events,
            "purge_checkpoints": self.seals,
        }


Retention = Callable[[str], float | None]


def purge(
    engine: Engine,
    retention: Retention,
    state_dir: Path,
    *,
    dry_run: bool = False,
    now: datetime | None = None,
    resources: Iterable[str] = (),
) -> PurgeResult:
    """Delete what outlived its retention (seconds per resource, None: keep forever)."""
    metadata.create_all(engine, tables=CHAIN_TABLES)
    now = now or datetime.now(UTC)
    result = PurgeResult()
    with engine.connect() as conn:
        names = set(resources) | {
            r[0] for r in conn.execute(select(sessions.c.resource).distinct())
        }
        names |= {r[0] for r in conn.execute(select(refusals.c.resource).distinct())}
        expired_ids: list[str] = []
        refusal_ids: list[int] = []
        for name in sorted(names):
            seconds = retention(name)
            if seconds is None:
                continue
            cutoff = now - timedelta(seconds=seconds)
            ended = func.coalesce(sessions.c.ended_at, sessions.c.started_at)
            q = select(sessions.c.id, audit_holds.c.session_id.label("held")).select_from(
                sessions.outerjoin(audit_holds, audit_holds.c.session_id == sessions.c.id)
            )
            for row in conn.execute(q.where(sessions.c.resource == name, ended < cutoff)):
                if row.held is not None:
                    result.held += 1
                else:
                    expired_ids.append(row.id)
            refusal_ids += [
                int(r[0])
                for r in conn.execute(
                    select(refusals.c.id).where(refusals.c.resource == name, refusals.c.at < cutoff)
                )
            ]
        result.session_ids = expired_ids
        result.sessions = len(expired_ids)
        result.refusals = len(refusal_ids)
        for chunk in _chunks(expired_ids):
            result.commands += conn.execute(
                select(func.count()).where(commands.c.session_id.in_(chunk))
            ).scalar_one()
    if dry_run or not (expired_ids or refusal_ids):
        return result
    key = load_or_create_key(state_dir / KEY_FILE)
    with engine.begin() as conn:
        signer = _register(conn, key)
    for chunk in _chunks(expired_ids):
        with engine.begin() as conn:
            events = _events(conn, audit_events.c.session_id.in_(chunk))
            result.events += len(events)
            result.seals += _seal(conn, events, key, signer)
            conn.execute(delete(commands).where(commands.c.session_id.in_(chunk)))
            conn.execute(delete(sessions).where(sessions.c.id.in_(chunk)))
    for ids in _chunks(refusal_ids):
        with engine.begin() as conn:
            events = _events(
                conn,
                and_(
                    audit_events.c.kind == "R",
                    audit_events.c.session_id.is_(None),
                    audit_events.c.item.in_(ids),
                ),
            )
            result.events += len(events)
            result.seals += _seal(conn, events, key, signer)
            conn.execute(delete(refusals).where(refusals.c.id.in_(ids)))
    return result


def _chunks(items: list[Any]) -> Iterable[list[Any]]:
    for i in range(0, len(items), _BATCH):
        yield items[i : i + _BATCH]


def _register(conn: Connection, key: Any) -> tuple[int, str]:
    public = public_hex(key)
    name = chain_name(public)
    row = conn.execute(select(audit_chains.c.id).where(audit_chains.c.name == name)).first()
    if row is None:
        conn.execute(
            insert(audit_chains).values(
                name=name,
                public_key=public,
                host=socket.gethostname(),
                created_at=datetime.now(UTC),
            )
        )
        row = conn.execute(select(audit_chains.c.id).where(audit_chains.c.name == name)).first()
    assert row is not None
    return int(row[0]), name


def _events(conn: Connection, where: Any) -> list[Any]:
    e = audit_events
    q = select(e.c.chain, e.c.seq, e.c.kind, e.c.digest, e.c.hash).where(where, e.c.purge.is_(None))
    return list(conn.execute(q.order_by(e.c.chain, e.c.seq)))


def _seal(conn: Connection, events: list[Any], key: Any, signer: tuple[int, str]) -> int:
    """Sign one purge checkpoint per chain over `events`, mark them; returns the count."""
    by_chain: dict[int, list[Any]] = {}
    for ev in events:
        by_chain.setdefault(int(ev.chain), []).append(ev)
    names = {
        int(r.id): r.name
        for r in conn.execute(
            select(audit_chains.c.id, audit_chains.c.name).where(
                audit_chains.c.id.in_(list(by_chain))
            )
        )
    }
    sqlite = conn.dialect.name == "sqlite"
    for chain_id, evs in by_chain.items():
        last = evs[-1]
        digest = purge_digest([(int(ev.seq), bytes(ev.digest)) for ev in evs])
        at = datetime.now(UTC)
        cp = Checkpoint(
            names[chain_id],
            int(last.seq),
            bytes(last.hash),
            "purge",
            ts_text(at) or "",
            signer[1],
            len(evs),
            digest,
        )
        inserted = conn.execute(
            insert(audit_checkpoints).values(
                chain=chain_id,
                seq=cp.seq,
                hash=cp.hash,
                kind="purge",
                at=at,
                purged=cp.purged,
                purged_digest=digest,
                signer=signer[0],
                signature=key.sign(cp.message()),
            )
        )
        key_row = inserted.inserted_primary_key
        assert key_row is not None
        cp_id = key_row[0]
        seqs = [int(ev.seq) for ev in evs]
        for part in _chunks(seqs):
            conn.execute(
                update(audit_events)
                .where(audit_events.c.chain == chain_id, audit_events.c.seq.in_(part))
                .values(purge=cp_id)
            )
        if sqlite:
            rowids = [(chain_id << FTS_SHIFT) | int(ev.seq) for ev in evs if ev.kind in STATEMENTS]
            for part in _chunks(rowids):
                marks = ", ".join(str(int(r)) for r in part)
                conn.execute(text(f"DELETE FROM {FTS_TABLE} WHERE rowid IN ({marks})"))
    return len(by_chain)
