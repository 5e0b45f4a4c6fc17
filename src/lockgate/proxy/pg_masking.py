"""Masking on the PostgreSQL relay: plans per result, rows, COPY, errors, notices, NOTIFY.

Theory of operation
-------------------
`SessionMasker` exists only for sessions some masking rule applies to; the relay asks it
about nothing otherwise. It rides along the relay's FIFO of client requests: each `Query`,
`Execute` and `Describe` op carries a `Track` that says what it describes or runs,
captured when the client sent it (statement generation, portal binding, result formats),
so pipelined batches that re-bind the unnamed portal still get the right plan.

Upstream → client, per message type:
- `T` RowDescription: origins from the catalog (table OID + column number, views traced
  to base columns) and, for outputs without a table OID, from the statement's lineage;
  `masking.plan.build` makes the plan and the RowDescription sent on (types adjusted).
  An OID the catalog does not know holds the stream until the catalog is refreshed.
- `D` DataRow runs: rewritten by the op's plan (an Execute whose portal or statement was
  never described gets every cell NULL: the gateway cannot know what the columns are).
- `H`/`d` COPY TO STDOUT: a `CopyMasker` from the COPY statement's lineage.
- `E`/`N` errors and notices, `A` NOTIFY payloads, `S` ParameterStatus: values echoed
  there (`Key (ssn)=(…)`, `Failing row contains (…)`, `…: "value"`) are cut, and content
  detectors run over the text.
Before a command runs, `refusal` refuses what would launder masked data: writing it into
a non-temporary table, and (strict mode) any output derived from a masked column.
Writing it into a temporary table taints that table's columns for this session.
"""

from __future__ import annotations

import asyncio
import logging
import re
import struct
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Final

from lockgate.config.model import Manifest, Resource
from lockgate.errors import CommandDenied, LockgateError
from lockgate.gate import Gate
from lockgate.masking import plan as mp
from lockgate.masking.copy import CopyMasker
from lockgate.masking.policy import ColumnMaskSpec, MaskPolicy, load_hash_key
from lockgate.masking.strategies import Strategy
from lockgate.model import Session
from lockgate.protocols.postgres import messages as m
from lockgate.proxy.endpoint import Endpoint
from lockgate.proxy.pg_catalog import Catalog, CatalogSnapshot
from lockgate.sql import lineage as lin

log = logging.getLogger("lockgate.masking")

_Q, _E, _D, _P, _B = b"QEDPB"
_ROWDESC, _NOTICE, _NOTIFY, _PARAM, _COPYOUT, _COPYDATA, _DONE, _EMPTY = b"TNASHdCI"
# Upstream message types the masker looks at (besides DataRows); E is ErrorResponse.
UPSTREAM_TYPES: Final = frozenset(b"TENASHdCI")
NULL_ROWS: Final = object()
_CLEAR_NODES = frozenset({"VariableShowStmt", "ExplainStmt"})

_KEY_DETAIL = re.compile(r"(Key \((?:[^()]|\([^()]*\))*\)=\()(.*)(\))", re.DOTALL)
_FAILING_ROW = re.compile(r"(Failing row contains \()(.*)(\))", re.DOTALL)
_QUOTED_TAIL = re.compile(r'(: ")(.*)("\s*)$', re.DOTALL)
_SCRUBBED_FIELDS = frozenset("MDHWqp")


@dataclass(slots=True)
class Track:
    """What one client request (Query, Execute, Describe) needs for masking its answer."""

    kind: int
    text: str = ""
    name: str = ""
    statement: str = ""
    gen: int = 0
    stmt_gen: int = 0
    formats: tuple[int, ...] = ()
    index: int = 0
    plan: mp.MaskPlan | object | None = None
    described: bool = False
    copy: CopyMasker | None = None
    counts: dict[str, int] = field(default_factory=dict)
    ddl: bool = False


@dataclass(slots=True)
class _Described:
    gen: int
    plan: mp.MaskPlan | None


# Per gate: the hash key and one catalog per resource (sessions of a worker share them).
_KEYS: weakref.WeakKeyDictionary[Gate, bytes] = weakref.WeakKeyDictionary()
_CATALOGS: weakref.WeakKeyDictionary[Gate, dict[str, Catalog]] = weakref.WeakKeyDictionary()


def catalog_for(
    gate: Gate, manifest: Manifest, resource: Resource, password: str | None
) -> Catalog:
    by_name = _CATALOGS.setdefault(gate, {})
    cat = by_name.get(resource.name)
    if cat is None:
        from lockgate.proxy.pg_upstream import connect_upstream

        async def connect() -> Endpoint:
            conn = await connect_upstream(
                resource,
                manifest,
                password,
                # Only reads the catalog: make sure it cannot write either.
                {"application_name": "lockgate-catalog", "default_transaction_read_only": "on"},
            )
            return conn.endpoint

        cat = by_name[resource.name] = Catalog(connect, resource.name)
    return cat


def masker_for(gate: Gate, session: Session) -> SessionMasker | None:
    """The masker for a session, or None when no masking rule applies to it."""
    manifest = gate.manifest
    if not manifest.masking.rules:
        return None
    principal = session.principal
    resource_name = session.resource
    key = _KEYS.get(gate)
    if key is None:

        def resolve(ref: str) -> str:
            from lockgate.secrets.refs import resolve_secret

            return resolve_secret(ref, manifest, gate.secrets)

        key = _KEYS[gate] = load_hash_key(manifest, resolve)
    policy = MaskPolicy.for_session(manifest, principal, resource_name, key)
    if not policy.active:
        return None
    resource = manifest.resource(resource_name)
    if resource is None:
        return None
    password = gate.credential(resource)
    return SessionMasker(policy, catalog_for(gate, manifest, resource, password))


class SessionMasker:
    """Masking state of one session (see the module docstring)."""

    def __init__(self, policy: MaskPolicy, catalog: Catalog) -> None:
        self.policy = policy
        self.catalog = catalog
        self._stmt_gen: dict[str, int] = {}
        self._stmt_text: dict[str, str] = {}
        self._bindings: dict[str, tuple[str, int, tuple[int, ...], int]] = {}
        self._stmt_plans: dict[str, _Described] = {}
        self._portal_plans: dict[str, _Described] = {}
        self._gen = 0
        self._cursors: dict[str, lin.StatementLineage] = {}
        self._prepared: dict[str, lin.StatementLineage] = {}
        self._tainted: dict[str, dict[str, ColumnMaskSpec]] = {}
        self._lineage: OrderedDict[tuple[str, int], tuple[lin.StatementLineage, ...] | None] = (
            OrderedDict()
        )
        self._refreshed_for: set[int] = set()
        self._just_refreshed = False

    # ------------------------------------------------------------------ startup
    def ready(self) -> asyncio.Future[CatalogSnapshot] | None:
        """A future to wait for before relaying, when the catalog is not loaded yet."""
        if self.catalog.loaded:
            return None
        return self.catalog.refresh()

    # ------------------------------------------------------------------ client → upstream
    def step(self, t: int, payload: bytes) -> Track | None:
        """Note a Parse, Bind or Describe; Describe ops get a Track."""
        if t == _P:
            parsed = m.parse_parse(payload)
            self._gen += 1
            self._stmt_gen[parsed.statement] = self._gen
            self._stmt_text[parsed.statement] = parsed.query
            return None
        if t == _B:
            bind = m.parse_bind(payload)
            self._gen += 1
            formats = _result_formats(payload)
            stmt = bind.statement
            self._bindings[bind.portal] = (stmt, self._stmt_gen.get(stmt, 0), formats, self._gen)
            return None
        if t == _D:
            kind, name = m.parse_close_or_describe(payload)
            if kind == b"S":
                return Track(
                    _D,
                    self._stmt_text.get(name, ""),
                    name,
                    name,
                    self._stmt_gen.get(name, 0),
                    described=True,
                )
            stmt, stmt_gen, formats, gen = self._bindings.get(name, ("", 0, (), 0))
            return Track(_D, self._stmt_text.get(stmt, ""), name, stmt, gen, stmt_gen, formats)
        return None

    def command(self, t: int, text: str, portal: str = "") -> Track:
        """The Track of a Query or Execute."""
        if t == _Q:
            return Track(_Q, text)
        stmt, stmt_gen, formats, gen = self._bindings.get(portal, ("", 0, (), 0))
        return Track(_E, text, portal, stmt, gen, stmt_gen, formats)

    def refusal(self, text: str) -> LockgateError | None:
        """Why the command must not run (it would launder masked data), or None."""
        lineages = self._analyze(text)
        if lineages is None:
            return None
        for lg in lineages:
            if lg.declares is not None:
                self._cursors[lg.declares] = lg
            if lg.prepares is not None:
                self._prepared[lg.prepares] = lg
            for w in lg.writes:
                err = self._write(w)
                if err is not None:
                    return err
            if self.policy.strict and self.policy.columns:
                outs = lg.outputs
                if outs is None and (lg.declares or lg.prepares):
                    outs = tuple(lin.Output("?", None, lg.touched, lg.opaque) for _ in (0,))
                for o in outs or ():
                    if o.direct is not None and self.column(*o.direct) is not None:
                        continue
                    if o.opaque or any(self.column(*s) is not None for s in o.sources):
                        return CommandDenied(
                            f"output '{o.name}' is computed from a masked column; in strict "
                            "masking mode such statements are refused",
                            hint="select the masked column itself (it comes back masked), or "
                            "ask for an exemption",
                            rule=self.policy.strict_rule or "masking",
                        )
            if lg.ddl:
                self.catalog.invalidate()
        return None

    def _write(self, w: lin.Write) -> LockgateError | None:
        masked: dict[str, ColumnMaskSpec] = {}
        for name, o in w.columns:
            spec = self.column(*o.direct) if o.direct is not None else None
            if spec is None:
                hits = [self.column(*s) for s in o.sources]
                found = [h for h in hits if h is not None]
                if found or (o.opaque and self.policy.columns):
                    rule = found[0].rule if found else "opaque"
                    spec = ColumnMaskSpec(rule, Strategy("redact"))
            if spec is not None:
                masked[(name or o.name).lower()] = spec
        if not masked:
            return None
        if w.temporary:
            self._tainted.setdefault(w.table.lower(), {}).update(masked)
            return None
        return CommandDenied(
            f"this statement would copy masked data into table '{w.table}'",
            hint="masked values cannot be stored through the gateway by identities that may "
            "not see them; use a temporary table, or ask for an exemption",
            rule=next(iter(masked.values())).rule or "masking",
        )

    def column(self, schema: str, table: str, column: str) -> ColumnMaskSpec | None:
        spec = self.policy.column(schema, table, column)
        if spec is None and self._tainted and schema.startswith("pg_temp"):
            return self._tainted.get(table.lower(), {}).get(column.lower())
        return spec

    def _analyze(self, text: str) -> tuple[lin.StatementLineage, ...] | None:
        snap = self.catalog.snapshot
        key = (text, id(snap))
        if key in self._lineage:
            self._lineage.move_to_end(key)
            return self._lineage[key]
        result = lin.analyze(text, snap)
        self._lineage[key] = result
        if len(self._lineage) > 512:
            self._lineage.popitem(last=False)
        return result

    # ------------------------------------------------------------------ upstream → client
    def upstream(
        self, t: int, payload: bytes, track: Track | None
    ) -> bytes | asyncio.Future[CatalogSnapshot] | None:
        """Replacement bytes for one message, None to pass it, or a future to wait for."""
        if t == _ROWDESC:
            return self._row_description(payload, track)
        if t == _E or t == _NOTICE:
            return self._error(t, payload)
        if t == _NOTIFY:
            return self._notify(payload)
        if t == _PARAM:
            return self._parameter(payload)
        if track is None:
            return None
        if t == _COPYOUT:
            self._copy_out(payload, track)
            return None
        if t == _COPYDATA:
            if track.copy is None:
                return None
            new = track.copy.rewrite(payload)
            return None if new is payload else m.message(b"d", new)
        if t == _DONE or t == _EMPTY:
            if track.copy is not None:
                _add(track.counts, track.copy.counts)
                track.copy = None
            if track.kind == _Q:
                lg = self._statement(track)
                if lg is not None and lg.ddl:
                    self.catalog.invalidate()
                track.index += 1
                track.plan = None
        return None

    def rewrite_rows(
        self, track: Track | None, buf: bytes | bytearray, start: int, stop: int
    ) -> bytes | None:
        """DataRows `buf[start:stop]` masked by the op's plan; None when they pass as they are."""
        if track is None:
            return None
        plan = track.plan
        if plan is None and track.kind == _E:
            plan = track.plan = self._execute_plan(track)
        if plan is None:
            return None
        if plan is NULL_ROWS:
            track.counts["undescribed"] = track.counts.get("undescribed", 0) + 1
            return mp.null_rows(buf, start, stop)
        assert isinstance(plan, mp.MaskPlan)
        plan.counts = track.counts
        return plan.rewrite_rows(buf, start, stop)

    def summary(self, track: Track | None) -> str:
        """A note for the audit record: masked cells per rule ("" when none)."""
        if track is None or not track.counts:
            return ""
        parts = ", ".join(f"{k}={v}" for k, v in sorted(track.counts.items()))
        return f" (masked: {parts})"

    # ------------------------------------------------------------------ plans
    def _execute_plan(self, track: Track) -> mp.MaskPlan | object | None:
        got = self._portal_plans.get(track.name)
        if got is not None and got.gen == track.gen:
            return got.plan
        st = self._stmt_plans.get(track.statement)
        if st is not None and st.gen == track.stmt_gen:
            return st.plan.with_formats(track.formats) if st.plan is not None else None
        return NULL_ROWS

    def _statement(self, track: Track) -> lin.StatementLineage | None:
        lineages = self._analyze(track.text)
        if not lineages:
            return None
        idx = min(track.index, len(lineages) - 1) if track.kind == _Q else 0
        lg = lineages[idx]
        if lg.fetches is not None:
            return self._cursors.get(lg.fetches, lg)
        if lg.executes is not None:
            return self._prepared.get(lg.executes, lg)
        return lg

    def _origins(
        self, cols: list[mp.ResultColumn], lg: lin.StatementLineage | None
    ) -> list[mp.Origin] | asyncio.Future[CatalogSnapshot]:
        snap = self.catalog.snapshot
        unknown = [c.table_oid for c in cols if c.table_oid and not snap.knows(c.table_oid)]
        stale = not self.catalog.loaded and any(c.table_oid for c in cols)
        fresh = [o for o in unknown if o not in self._refreshed_for]
        if (stale or fresh) and not self._just_refreshed:
            # Hold this result until the catalog knows its tables (once: then fail closed).
            self._refreshed_for.update(unknown)
            self._just_refreshed = True
            return self.catalog.refresh()
        self._just_refreshed = False
        outs = lg.outputs if lg is not None else None
        clear = lg is not None and lg.node in _CLEAR_NODES
        origins: list[mp.Origin] = []
        for i, c in enumerate(cols):
            if c.table_oid:
                o = snap.origin(c.table_oid, c.attnum)
                origins.append(
                    mp.Origin(o.direct, o.sources, o.opaque)
                    if o is not None
                    else mp.Origin(opaque=True)
                )
            elif clear:
                origins.append(mp.Origin())
            elif outs is not None and len(outs) == len(cols):
                o = outs[i]
                origins.append(
                    mp.Origin(None, o.sources | ({o.direct} if o.direct else set()), o.opaque)
                )
            elif lg is not None and outs is not None:
                origins.append(mp.Origin(None, lg.touched, lg.opaque))
            else:
                origins.append(mp.Origin(opaque=True))
        return origins

    def _row_description(
        self, payload: bytes, track: Track | None
    ) -> bytes | asyncio.Future[CatalogSnapshot] | None:
        cols = mp.parse_row_description(payload)
        lg = self._statement(track) if track is not None else None
        origins = self._origins(cols, lg)
        if isinstance(origins, asyncio.Future):
            return origins
        text_like = self.catalog.snapshot.text_types or mp.TEXT_LIKE
        plan, described, _derived = mp.build(cols, origins, self.policy, text_like, self.column)
        if track is not None:
            if track.kind == _D and track.described:
                self._stmt_plans[track.statement] = _Described(track.gen, plan)
            elif track.kind == _D:
                self._portal_plans[track.name] = _Described(track.gen, plan)
            else:
                track.plan = plan
        if described == cols:
            return None
        return mp.row_description(described)

    def _copy_out(self, payload: bytes, track: Track) -> None:
        count = struct.unpack_from("!h", payload, 1)[0] if len(payload) >= 3 else 0
        lg = self._statement(track)
        snap = self.catalog.snapshot
        cols: list[mp.ResultColumn] = []
        origins: list[mp.Origin] = []
        outs = lg.outputs if lg is not None else None
        for i in range(count):
            o = outs[i] if outs is not None and len(outs) == count else None
            typ = 0
            if o is not None and o.direct is not None:
                rel = snap.relation(o.direct[0], o.direct[1])
                typ = _type_of(snap, rel, o.direct[2])
            cols.append(mp.ResultColumn(b"", 0, 0, typ, -1, -1, 0))
            if o is None:
                origins.append(mp.Origin(None, lg.touched if lg else frozenset(), True))
            else:
                origins.append(mp.Origin(o.direct, o.sources, o.opaque))
        text_like = snap.text_types or mp.TEXT_LIKE
        # COPY text is text whatever the column type: let detectors read every column.
        fmt = lg.copy_out if lg is not None and lg.copy_out else "text"
        if fmt != "binary":
            cols = [
                mp.ResultColumn(b"", 0, 0, 25, -1, -1, 0) if c.type_oid == 0 else c for c in cols
            ]
            text_like = frozenset(text_like | {c.type_oid for c in cols})
        plan, _, _ = mp.build(cols, origins, self.policy, text_like, self.column)
        if plan is None:
            return None
        opts = dict(lg.copy_options) if lg is not None else {}
        csv = fmt == "csv"
        track.copy = CopyMasker(
            plan,
            fmt=fmt,
            delimiter=opts.get("delimiter", "," if csv else "\t"),
            null=opts.get("null", "" if csv else "\\N"),
            quote=opts.get("quote", '"'),
            escape=opts.get("escape", opts.get("quote", '"')),
            skip_header=opts.get("header", "false") == "true",
        )
        return None

    # ------------------------------------------------------------------ echoes
    def scrub_text(self, text: str) -> str:
        """Text of an error, notice or notification with echoed values cut out."""
        out = _KEY_DETAIL.sub(r"\1****\3", text)
        out = _FAILING_ROW.sub(r"\1****\3", out)
        out = _QUOTED_TAIL.sub(r"\1****\3", out)
        return self.policy.scrub(out)[0]

    def _error(self, t: int, payload: bytes) -> bytes | None:
        try:
            fields = m.parse_error_fields(payload)
        except m.ProtocolViolation:
            return None
        changed = False
        body = bytearray()
        for k, v in fields.items():
            nv = self.scrub_text(v) if k in _SCRUBBED_FIELDS else v
            changed = changed or nv != v
            body += k.encode() + nv.encode("utf-8", "replace") + b"\x00"
        if not changed:
            return None
        return m.message(bytes((t,)), bytes(body) + b"\x00")

    def _notify(self, payload: bytes) -> bytes | None:
        pid = payload[:4]
        channel, pos = m.read_cstring(payload, 4)
        text, _ = m.read_cstring(payload, pos)
        new = self.scrub_text(text)
        if new == text:
            return None
        return m.message(b"A", pid + channel.encode() + b"\x00" + new.encode() + b"\x00")

    def _parameter(self, payload: bytes) -> bytes | None:
        name, pos = m.read_cstring(payload, 0)
        value, _ = m.read_cstring(payload, pos)
        new = self.policy.scrub(value)[0]
        if name == "application_name" and new == value and self.policy.columns:
            new = _QUOTED_TAIL.sub(r"\1****\3", value)
        return None if new == value else m.parameter_status(name, new)


def _type_of(snap: CatalogSnapshot, rel: lin.Relation | None, column: str) -> int:
    if rel is None:
        return 0
    for raw in snap.rels.values():
        if raw.schema == rel.schema and raw.name == rel.name:
            for _, (name, typ) in raw.columns.items():
                if name == column:
                    return typ
            return 0
    return 0


def _add(into: dict[str, int], more: dict[str, int]) -> None:
    for k, v in more.items():
        into[k] = into.get(k, 0) + v


def _result_formats(payload: bytes) -> tuple[int, ...]:
    """The result-column format codes at the end of a Bind message."""
    bind = m.parse_bind(payload)
    pos = payload.index(b"\x00") + 1
    pos = payload.index(b"\x00", pos) + 1
    pos += 2 + 2 * len(bind.param_formats) + 2
    for p in bind.params:
        pos += 4 + (len(p) if p is not None else 0)
    if pos + 2 > len(payload):
        return ()
    (n,) = struct.unpack_from("!h", payload, pos)
    return tuple(struct.unpack_from(f"!{n}h", payload, pos + 2)) if n > 0 else ()
