"""The upstream catalog masking needs: table OIDs to names, views traced to base columns.

Theory of operation
-------------------
A `Catalog` per resource (shared by the sessions of one worker) loads, over a side
connection made with the resource's own stored credential (read-only), every user
relation with its columns and their types, view definitions, user-defined function names
and the string types. The snapshot answers synchronously on the hot path (`origin(oid,
attnum)`), and `relation(schema, name)` for the lineage of statements and of views
(a view's columns are traced through its definition, recursively, on first use).

A snapshot goes stale after DDL through the gateway (`invalidate`), or when a result names
a table OID it does not know (DDL elsewhere, a new temporary table): then the relay holds
that result until `refresh()` has loaded a new snapshot. Refreshes are coalesced.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from lockgate.protocols.postgres import messages as m
from lockgate.proxy.endpoint import Endpoint
from lockgate.sql.lineage import Output, Relation, view_columns
from lockgate.tasks import spawn

log = logging.getLogger("lockgate.masking")

_SYSTEM = "('pg_catalog', 'information_schema')"
# System objects (OIDs below FirstNormalObjectId) hold no user data, except statistics,
# which sample column values: those columns are of unknown origin (masked whole).
FIRST_NORMAL_OID = 16384
_STATS_RELATIONS = (
    "('pg_stats', 'pg_stats_ext', 'pg_stats_ext_exprs', 'pg_statistic', 'pg_statistic_ext_data')"
)
_STATS_COLUMNS = frozenset(
    {
        "most_common_vals",
        "histogram_bounds",
        "most_common_elems",
        "most_common_base_freqs",
        "stxdmcv",
        "stxdexpr",
        "exprs",
    }
    | {f"stavalues{i}" for i in range(1, 6)}
)
RELATIONS_SQL = f"""
SELECT c.oid, n.nspname, c.relname, c.relkind, a.attnum, a.attname, a.atttypid,
       CASE WHEN c.relkind IN ('v', 'm') THEN pg_get_viewdef(c.oid) END
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
WHERE c.relkind IN ('r', 'v', 'm', 'p', 'f')
  AND (n.nspname NOT IN {_SYSTEM} AND n.nspname NOT LIKE 'pg\\_toast%'
       OR n.nspname = 'pg_catalog' AND c.relname IN {_STATS_RELATIONS})
ORDER BY c.oid, a.attnum
"""
FUNCTIONS_SQL = f"""
SELECT DISTINCT n.nspname, p.proname FROM pg_proc p
JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname NOT IN {_SYSTEM}
"""
TEXT_TYPES_SQL = "SELECT oid FROM pg_type WHERE typcategory = 'S' OR oid IN (114, 142, 3802)"


@dataclass(slots=True)
class _Rel:
    schema: str
    name: str
    kind: str
    columns: dict[int, tuple[str, int]] = field(default_factory=dict)
    definition: str | None = None


class CatalogSnapshot:
    """One load of the catalog; answers lookups without I/O."""

    def __init__(
        self,
        rels: dict[int, _Rel],
        functions: set[tuple[str, str]],
        text_types: frozenset[int],
    ) -> None:
        self.rels = rels
        self.functions = functions
        self.function_names = {name for _, name in functions}
        self.text_types = text_types
        self._by_name: dict[str, list[int]] = {}
        for oid, rel in rels.items():
            self._by_name.setdefault(rel.name, []).append(oid)
        self._resolved: dict[int, Relation | None] = {}
        self._resolving: set[int] = set()

    def knows(self, oid: int) -> bool:
        return oid in self.rels or oid < FIRST_NORMAL_OID

    def column_type(self, oid: int, attnum: int) -> int:
        rel = self.rels.get(oid)
        return rel.columns.get(attnum, ("", 0))[1] if rel is not None else 0

    def origin(self, oid: int, attnum: int) -> Output | None:
        """Lineage of table column `attnum` of relation `oid` (views traced to base tables)."""
        rel = self._relation(oid)
        if rel is None:
            return Output("?") if oid < FIRST_NORMAL_OID else None
        raw = self.rels[oid]
        names = list(raw.columns)
        if attnum not in raw.columns:
            return None
        idx = names.index(attnum)
        return rel.columns[idx] if idx < len(rel.columns) else None

    # -- lineage.Relations --------------------------------------------------------------
    def relation(self, schema: str | None, name: str) -> Relation | None:
        oids = self._by_name.get(name, [])
        if schema is not None:
            oids = [o for o in oids if self.rels[o].schema == schema]
        if not oids:
            return None

        # Unqualified: a temporary table shadows; then `public`; then any schema.
        def rank(o: int) -> int:
            s = self.rels[o].schema
            return 0 if s.startswith("pg_temp") else (1 if s == "public" else 2)

        return self._relation(min(oids, key=rank))

    def user_function(self, schema: str | None, name: str) -> bool:
        if schema is not None:
            return (schema, name) in self.functions
        return name in self.function_names

    def _relation(self, oid: int) -> Relation | None:
        if oid in self._resolved:
            return self._resolved[oid]
        raw = self.rels.get(oid)
        if raw is None:
            return None
        if raw.schema == "pg_catalog":
            cols = tuple(
                Output(n, None, frozenset(), n in _STATS_COLUMNS) for n, _ in raw.columns.values()
            )
            rel: Relation | None = Relation(raw.schema, raw.name, cols)
        elif raw.definition is None or oid in self._resolving:
            cols = tuple(
                Output(n, (raw.schema, raw.name, n), frozenset({(raw.schema, raw.name, n)}))
                for n, _ in raw.columns.values()
            )
            if oid in self._resolving:
                # A view that refers to itself cannot exist; be safe anyway.
                cols = tuple(Output(n, None, frozenset(), True) for n, _ in raw.columns.values())
            rel = Relation(raw.schema, raw.name, cols)
        else:
            self._resolving.add(oid)
            try:
                rel = view_columns(raw.schema, raw.name, raw.definition, self)
            finally:
                self._resolving.discard(oid)
            names = [n for n, _ in raw.columns.values()]
            if rel is None or len(rel.columns) != len(names):
                # Unreadable definition: every column of the view is of unknown origin.
                rel = Relation(
                    raw.schema, raw.name, tuple(Output(n, None, frozenset(), True) for n in names)
                )
            else:
                rel = Relation(
                    raw.schema,
                    raw.name,
                    tuple(
                        Output(n, o.direct, o.sources, o.opaque)
                        for n, o in zip(names, rel.columns, strict=True)
                    ),
                )
        self._resolved[oid] = rel
        return rel


EMPTY = CatalogSnapshot({}, set(), frozenset())

Connector = Callable[[], Awaitable[Endpoint]]


class Catalog:
    """The catalog of one resource, refreshed on demand over a side connection."""

    def __init__(self, connect: Connector, name: str = "") -> None:
        self._connect = connect
        self.name = name
        self.snapshot = EMPTY
        self.loaded = False
        self.failed = False
        self._loading: asyncio.Future[CatalogSnapshot] | None = None
        self.loaded_at = 0.0

    def invalidate(self) -> None:
        """Mark the snapshot stale (after DDL): the next unknown OID triggers a refresh."""
        self.loaded = False

    def refresh(self) -> asyncio.Future[CatalogSnapshot]:
        """Load a new snapshot (one load at a time; callers share it)."""
        if self._loading is not None and not self._loading.done():
            return self._loading
        fut: asyncio.Future[CatalogSnapshot] = asyncio.get_running_loop().create_future()
        self._loading = fut
        spawn(self._load(fut), name=f"catalog-{self.name}")
        return fut

    async def _load(self, fut: asyncio.Future[CatalogSnapshot]) -> None:
        try:
            snap = await load_snapshot(self._connect)
        except Exception as exc:  # any failure: masking falls back to masking unknowns
            log.warning("catalog of resource %s could not be loaded: %r", self.name, exc)
            self.failed = True
            if not fut.done():
                fut.set_result(self.snapshot)
            return
        self.snapshot = snap
        self.loaded = True
        self.failed = False
        self.loaded_at = time.monotonic()
        if not fut.done():
            fut.set_result(snap)


async def load_snapshot(connect: Connector, limit: float = 30.0) -> CatalogSnapshot:
    ep = await connect()
    try:
        async with asyncio.timeout(limit):
            rows = await simple_query(ep, RELATIONS_SQL)
            funcs = await simple_query(ep, FUNCTIONS_SQL)
            types = await simple_query(ep, TEXT_TYPES_SQL)
    finally:
        if not ep.closed:
            ep.write(m.TERMINATE)
        ep.close()
    rels: dict[int, _Rel] = {}
    for oid_s, schema, name, kind, attnum, attname, typ, definition in rows:
        oid = int(oid_s or 0)
        rel = rels.get(oid)
        if rel is None:
            rel = rels[oid] = _Rel(schema or "", name or "", kind or "", definition=definition)
        rel.columns[int(attnum or 0)] = (attname or "", int(typ or 0))
    functions = {(s or "", n or "") for s, n in funcs}
    text_types = frozenset(int(t or 0) for (t,) in types)
    return CatalogSnapshot(rels, functions, text_types)


async def simple_query(ep: Endpoint, sql: str) -> list[tuple[str | None, ...]]:
    """Run one statement with the simple protocol; rows as text (raises on an error)."""
    ep.write(m.query(sql))
    rows: list[tuple[str | None, ...]] = []
    error: str | None = None
    while True:
        got = m.read_message(ep.buffer)
        if got is None:
            await ep.wait_data()
            continue
        type_, payload, used = got
        del ep.buffer[:used]
        if type_ == b"D":
            rows.append(_data_row(payload))
        elif type_ == b"E":
            error = m.parse_error_fields(payload).get("M", "error")
        elif type_ == b"Z":
            if error is not None:
                raise RuntimeError(f"catalog query failed: {error}")
            return rows


def _data_row(payload: bytes) -> tuple[str | None, ...]:
    count = int.from_bytes(payload[:2], "big", signed=True)
    pos = 2
    out: list[str | None] = []
    for _ in range(count):
        n = int.from_bytes(payload[pos : pos + 4], "big", signed=True)
        pos += 4
        if n < 0:
            out.append(None)
            continue
        out.append(payload[pos : pos + n].decode("utf-8", "replace"))
        pos += n
    return tuple(out)
