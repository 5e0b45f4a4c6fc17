"""`verify`: walk every audit chain and name the first record that does not match.

Theory of operation
-------------------
For each chain (see chain.py) the events are read in order, joined to the rows they
describe. For each event the digest is recomputed from its row (a purged event keeps its
stored digest and is counted towards the purge checkpoint that sealed it) and linked to the
previous hash. The first of these ends the walk of a chain, with its position:

* a gap in the positions: records *deleted* (events and rows);
* an event whose row is gone: a record *deleted* from the store;
* a digest that differs: a record *altered* in the store;
* a link that differs: the chain itself was altered or an event *inserted*;
* a checkpoint whose signature or hash does not match, or that signs a position past the
  chain's end (records deleted at the end); a `break` checkpoint (the ingester found its
  chain shorter than it had left it);
* a purge seal whose count or digest differs from the events marked with it.

Rows no event describes (a session, command, outcome, end or refusal *inserted* directly
into the store) are listed separately. The head file of this host's chain, when present,
also anchors the events written after the last checkpoint.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Text, and_, exists, func, select, type_coerce
from sqlalchemy.engine import Connection, Engine

from lockgate.audit.chain import (
    COMMANDS,
    HEAD_FILE,
    KEY_FILE,
    KIND_NAMES,
    OUTCOMES,
    STATEMENTS,
    Checkpoint,
    event_digest,
    genesis,
    link,
    purge_digest,
    read_head,
    ts_text,
)
from lockgate.audit.tables import (
    audit_chains,
    audit_checkpoints,
    audit_events,
    command_results,
    commands,
    refusals,
    sessions,
)

_JSON_COLUMNS = {"groups", "tables", "params"}


@dataclass(slots=True)
class Finding:
    """One problem: what, where (chain and position when it has one), and about which record."""

    problem: str  # altered | deleted | inserted | chain-altered | checkpoint | break
    detail: str
    chain: str | None = None
    position: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "problem": self.problem,
            "chain": self.chain,
            "position": self.position,
            "detail": self.detail,
        }


@dataclass(slots=True)
class ChainReport:
    name: str
    host: str
    public_key: str
    events: int = 0
    purged: int = 0
    checkpoints: int = 0
    last_seq: int = 0
    sealed_seq: int = 0
    head_checked: bool = False
    finding: Finding | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "chain": self.name,
            "host": self.host,
            "public_key": self.public_key,
            "events": self.events,
            "purged": self.purged,
            "checkpoints": self.checkpoints,
            "last_position": self.last_seq,
            "sealed_position": self.sealed_seq,
            "head_file_checked": self.head_checked,
            "ok": self.finding is None,
            "finding": None if self.finding is None else self.finding.as_dict(),
        }


@dataclass(slots=True)
class Report:
    chains: list[ChainReport] = field(default_factory=list)
    unchained: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.unchained and all(c.finding is None for c in self.chains)

    def findings(self) -> list[Finding]:
        return [c.finding for c in self.chains if c.finding is not None] + self.unchained

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "chains": [c.as_dict() for c in self.chains],
            "events": sum(c.events for c in self.chains),
            "purged": sum(c.purged for c in self.chains),
            "checkpoints": sum(c.checkpoints for c in self.chains),
            "unchained": [f.as_dict() for f in self.unchained],
        }


def verify(engine: Engine, state_dir: Path | None = None) -> Report:
    """Walk every chain in the store behind `engine` (and this host's head file, if given)."""
    report = Report()
    head = read_head(state_dir / HEAD_FILE) if state_dir is not None else None
    if state_dir is not None and not (state_dir / KEY_FILE).exists():
        head = None
    with engine.connect() as conn:
        chains = conn.execute(select(audit_chains).order_by(audit_chains.c.id)).all()
        keys = {r.id: (r.name, r.public_key) for r in chains}
        for r in chains:
            cr = ChainReport(r.name, r.host, r.public_key)
            _walk(conn, r.id, cr, keys, head if head and head.get("chain") == r.name else None)
            report.chains.append(cr)
        report.unchained = _unchained(conn) + _results(conn)
    return report


def _label(kind: str, session_id: str | None, item: int | None) -> str:
    what = KIND_NAMES.get(kind, kind)
    if kind in COMMANDS:
        return f"{what} #{item} of session {session_id}"
    if kind == "R":
        return f"{what} #{item}"
    return f"{what} of session {session_id}"


def _event_query(chain_id: int) -> Any:
    e = audit_events
    cols: list[Any] = [e.c.seq, e.c.kind, e.c.session_id, e.c.item, e.c.digest, e.c.hash]
    cols.append(e.c.purge)
    for prefix, table in (("s_", sessions), ("c_", commands), ("r_", refusals)):
        for col in table.columns:
            expr = type_coerce(col, Text) if col.name in _JSON_COLUMNS else col
            cols.append(expr.label(prefix + col.name))
    joined = (
        e.outerjoin(sessions, and_(e.c.kind.in_(("S", "E")), sessions.c.id == e.c.session_id))
        .outerjoin(
            commands,
            and_(
                e.c.kind.in_(sorted(COMMANDS)),
                commands.c.session_id == e.c.session_id,
                commands.c.seq == e.c.item,
            ),
        )
        .outerjoin(refusals, and_(e.c.kind == "R", refusals.c.id == e.c.item))
    )
    return select(*cols).select_from(joined).where(e.c.chain == chain_id).order_by(e.c.seq)


_PREFIX = {"S": "s_", "E": "s_", "R": "r_"} | dict.fromkeys(COMMANDS, "c_")
_KEY = {"S": "s_id", "E": "s_id", "R": "r_id"} | dict.fromkeys(COMMANDS, "c_session_id")


def _walk(
    conn: Connection,
    chain_id: int,
    cr: ChainReport,
    keys: dict[int, tuple[str, str]],
    head: dict[str, Any] | None,
) -> None:
    cps = conn.execute(
        select(audit_checkpoints)
        .where(audit_checkpoints.c.chain == chain_id)
        .order_by(audit_checkpoints.c.seq, audit_checkpoints.c.id)
    ).all()
    cr.checkpoints = len(cps)
    at_seq: dict[int, list[Any]] = {}
    for cp in cps:
        at_seq.setdefault(cp.seq, []).append(cp)
    purges: dict[int, list[tuple[int, bytes]]] = {cp.id: [] for cp in cps if cp.kind == "purge"}
    head_seq = int(head["seq"]) if head else 0
    prev = genesis(cr.name)
    expected = 1
    finding: Finding | None = None

    def found(problem: str, position: int, detail: str) -> None:
        nonlocal finding
        if finding is None:
            finding = Finding(problem, detail, cr.name, position)

    rows = conn.execution_options(yield_per=5000).execute(_event_query(chain_id))
    for row in rows:
        m = row._mapping
        seq = int(m["seq"])
        kind = m["kind"]
        label = _label(kind, m["session_id"], m["item"])
        if seq != expected:
            gone = f"{expected}" if seq == expected + 1 else f"{expected} to {seq - 1}"
            found("deleted", expected, f"the records at positions {gone} are missing")
            break
        stored_digest = bytes(m["digest"])
        if m["purge"] is not None:
            purged = purges.get(int(m["purge"]))
            if purged is None:
                found("deleted", seq, f"{label} is marked purged by no purge checkpoint")
                break
            purged.append((seq, stored_digest))
            digest = stored_digest
            cr.purged += 1
        elif m[_KEY[kind]] is None:
            found("deleted", seq, f"{label} was deleted from the store")
            break
        else:
            prefix = _PREFIX[kind]
            values = {k[len(prefix) :]: v for k, v in m.items() if k.startswith(prefix)}
            digest = event_digest(kind, values)
            if digest != stored_digest:
                found("altered", seq, f"{label} was altered in the store")
                break
        h = link(prev, digest)
        if h != bytes(m["hash"]):
            found("chain-altered", seq, f"the chain link of {label} does not match")
            break
        for cp in at_seq.get(seq, ()):
            problem = _check_checkpoint(cp, cr.name, keys, h)
            if problem:
                found("checkpoint", seq, problem)
            elif cp.kind == "periodic":
                cr.sealed_seq = seq
        if finding is not None:
            break
        if head and seq == head_seq:
            cr.head_checked = True
            if h.hex() != head.get("hash"):
                found("chain-altered", seq, "the chain differs from this host's head file")
                break
        prev = h
        expected = seq + 1
        cr.events += 1
    cr.last_seq = expected - 1
    if finding is None:
        for cp in cps:
            if cp.kind == "break":
                found("break", cp.seq, _break_detail(cp))
                break
            if cp.seq > cr.last_seq:
                found(
                    "deleted",
                    cr.last_seq + 1,
                    f"the records at positions {cr.last_seq + 1} to {cp.seq} are missing "
                    f"(a signed checkpoint covers position {cp.seq})",
                )
                break
    if finding is None and head and head_seq > cr.last_seq:
        found(
            "deleted",
            cr.last_seq + 1,
            f"the records at positions {cr.last_seq + 1} to {head_seq} are missing "
            "(this host wrote them)",
        )
    if finding is None:
        for cp in cps:
            if cp.kind != "purge":
                continue
            events = purges[cp.id]
            if len(events) != cp.purged or purge_digest(events) != bytes(cp.purged_digest or b""):
                found(
                    "checkpoint",
                    cp.seq,
                    f"the purge sealed at position {cp.seq} removed {cp.purged} record(s), "
                    f"but {len(events)} are marked with it or they differ",
                )
                break
    cr.finding = finding


def _break_detail(cp: Any) -> str:
    return (
        f"the ingester found this chain shorter than it had left it at {ts_text(cp.at)} UTC: "
        f"records up to position {cp.seq} were removed (or the store restored from a backup)"
    )


def _check_checkpoint(cp: Any, name: str, keys: dict[int, tuple[str, str]], h: bytes) -> str:
    signer = keys.get(cp.signer)
    if signer is None:
        return f"the checkpoint at position {cp.seq} names an unknown signer"
    message = Checkpoint(
        name,
        int(cp.seq),
        bytes(cp.hash),
        cp.kind,
        ts_text(cp.at) or "",
        signer[0],
        int(cp.purged),
        None if cp.purged_digest is None else bytes(cp.purged_digest),
    )
    if not message.verify(signer[1], bytes(cp.signature)):
        return f"the {cp.kind} checkpoint at position {cp.seq} has an invalid signature"
    if cp.kind != "break" and bytes(cp.hash) != h:
        return f"the chain at position {cp.seq} differs from what its {cp.kind} checkpoint signed"
    return ""


def _unchained(conn: Connection, sample: int = 5) -> list[Finding]:
    """Rows that no event describes: inserted directly into the store."""
    e = audit_events

    def event(kinds: Iterable[str], *where: Any) -> Any:
        """An event of one of `kinds` (a string of one-letter kinds, or a set) that exists."""
        return exists().where(e.c.kind.in_(sorted(kinds)), *where)

    # An event that describes the `commands` row being checked.
    of_command = (e.c.session_id == commands.c.session_id, e.c.item == commands.c.seq)
    checks = [
        (
            "session",
            select(sessions.c.id).where(
                ~event("S", e.c.session_id == sessions.c.id, e.c.item.is_(None))
            ),
        ),
        (
            "session end",
            select(sessions.c.id).where(
                sessions.c.ended_at.is_not(None),
                ~event("E", e.c.session_id == sessions.c.id, e.c.item.is_(None)),
            ),
        ),
        (
            "command",
            select(commands.c.session_id, commands.c.seq).where(~event(STATEMENTS, *of_command)),
        ),
        (
            "command outcome",
            select(commands.c.session_id, commands.c.seq).where(
                commands.c.finished_at.is_not(None),
                ~event(OUTCOMES, *of_command),
            ),
        ),
        (
            "refused connection",
            select(refusals.c.id).where(
                ~event("R", e.c.session_id.is_(None), e.c.item == refusals.c.id)
            ),
        ),
    ]
    out: list[Finding] = []
    for what, q in checks:
        count = conn.execute(select(func.count()).select_from(q.subquery())).scalar_one()
        if not count:
            continue
        names = [" #".join(str(v) for v in r) for r in conn.execute(q.limit(sample))]
        more = f" and {count - sample} more" if count > sample else ""
        out.append(
            Finding(
                "inserted",
                f"{count} {what} record(s) are in no chain (inserted into the store directly, "
                f"or recorded before chains existed): {', '.join(names)}{more}",
            )
        )
    return out


def _results(conn: Connection, sample: int = 5) -> list[Finding]:
    """Captured results that do not match the hash their command's chained outcome holds."""
    r, c = command_results, commands
    q = (
        select(c.c.session_id, c.c.seq, c.c.result_sha256, r.c.codec, r.c.data)
        .select_from(c.outerjoin(r, and_(r.c.session_id == c.c.session_id, r.c.seq == c.c.seq)))
        .where(c.c.result_sha256.is_not(None))
    )
    bad: dict[str, list[str]] = {"altered": [], "deleted": []}
    for row in conn.execution_options(yield_per=1000).execute(q):
        name = f"{row.session_id} #{row.seq}"
        if row.data is None:
            bad["deleted"].append(name)
            continue
        try:
            data = bytes(row.data)
            raw = zlib.decompress(data) if row.codec == "zlib" else b""
            if row.codec == "raw":
                raw = data
        except zlib.error:
            raw = b""
        if hashlib.sha256(raw).hexdigest() != row.result_sha256:
            bad["altered"].append(name)
    inserted = conn.execute(
        select(r.c.session_id, r.c.seq)
        .select_from(r.join(c, and_(r.c.session_id == c.c.session_id, r.c.seq == c.c.seq)))
        .where(c.c.result_sha256.is_(None))
    ).all()
    bad["inserted"] = [f"{x.session_id} #{x.seq}" for x in inserted]
    out: list[Finding] = []
    for problem, names in bad.items():
        if names:
            more = f" and {len(names) - sample} more" if len(names) > sample else ""
            out.append(
                Finding(
                    problem,
                    f"{len(names)} captured result(s) {problem} (their hash is in the "
                    f"command's chained outcome): {', '.join(names[:sample])}{more}",
                )
            )
    return out
