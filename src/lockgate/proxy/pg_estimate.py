"""The planner's row estimate for a statement, before it runs (`rows_over` guardrails).

`EXPLAIN (FORMAT JSON)` — never `ANALYZE`: nothing is executed — over a short side
connection made with the resource's own credential, read-only. Only single, read-only
statements are explained (the gate says which); anything else, or any failure, is "no
estimate" (-1), which a `rows_over` rule treats as over its threshold (fail closed).
Statements with `$n` parameters are planned generically (`GENERIC_PLAN`, PostgreSQL 16+).
"""

from __future__ import annotations

import asyncio
import json
import logging

from lockgate.gate import Gate
from lockgate.protocols.postgres import messages as m
from lockgate.proxy.pg_catalog import simple_query

log = logging.getLogger("lockgate.postgres")

NO_ESTIMATE = -1
_LIMIT = 10.0


async def estimate_rows(gate: Gate, resource_name: str, text: str) -> int:
    """Rows the planner expects `text` to return, or -1 when it cannot say."""
    from lockgate.proxy.pg_upstream import connect_upstream

    resource = gate.manifest.resource(resource_name)
    if resource is None:
        return NO_ESTIMATE
    try:
        async with asyncio.timeout(_LIMIT):
            conn = await connect_upstream(
                resource,
                gate.manifest,
                gate.credential(resource),
                {"application_name": "lockgate-estimate", "default_transaction_read_only": "on"},
            )
            ep = conn.endpoint
            try:
                options = "GENERIC_PLAN, FORMAT JSON" if "$" in text else "FORMAT JSON"
                rows = await simple_query(ep, f"EXPLAIN ({options}) {text}")
            finally:
                if not ep.closed:
                    ep.write(m.TERMINATE)
                ep.close()
        plan = json.loads(rows[0][0] or "[]")
        return int(plan[0]["Plan"]["Plan Rows"])
    except Exception as exc:  # no estimate: the rule holds the statement
        log.info("no row estimate for a statement on %s: %s", resource_name, exc)
        return NO_ESTIMATE
