"""Sessions and their statements over HTTP: search, timeline, export, recording, end.

Admins and auditors see every session; everyone else only their own (same subject and
issuer). Reads go through `audit.query` and `audit.search`. Ending a live session writes a
`session_terminations` row; the gateway process holding it ends it at its next live-session
check (`identity.sessions.check_interval`), with end reason `ended_by_admin`.
"""

from __future__ import annotations

import asyncio
import base64
import csv
import gzip
import io
import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel

from lockgate.admin.auth import ADMIN, Caller, CallerDep, require
from lockgate.admin.context import AdminContext, context
from lockgate.admin.hub import hub
from lockgate.audit.query import AmbiguousSessionId, get_session, list_sessions
from lockgate.audit.search import in_group, sessions_matching
from lockgate.audit.tables import commands, sessions
from lockgate.identity.session_limits import request_end

router = APIRouter(prefix="/api/sessions", tags=["sessions"])
Ctx = Annotated[AdminContext, Depends(context)]
_APPROVAL = re.compile(r"\[request ([0-9a-f]+) ")
EXPORT_LIMIT = 10_000


class SessionOut(BaseModel):
    id: str
    subject: str
    issuer: str
    groups: list[str]
    resource: str
    protocol: str
    client_addr: str
    started_at: str
    ended_at: str | None
    end_reason: str | None
    error: str | None
    live: bool
    statements: int
    denied: int
    held: int
    masked_cells: int
    has_recording: bool


class SessionPage(BaseModel):
    items: list[SessionOut]
    next: str | None


class TimelineEntry(BaseModel):
    seq: int
    at: str
    kind: str
    text: str
    decision: str
    rule: str
    reason: str
    status: str | None
    rows: int | None
    masked_cells: int | None
    duration_ms: float | None
    error: str | None
    approval_id: str | None


class SessionDetail(BaseModel):
    session: SessionOut
    timeline: list[TimelineEntry]


class EndIn(BaseModel):
    reason: str


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ") if value else None


def _recordings(ctx: AdminContext, session_id: str) -> list[Path]:
    from lockgate.proxy.ssh_recording import session_dir

    folder = session_dir(ctx.manifest.state_dir, session_id)
    if not folder.is_dir():
        return []
    return sorted(folder.glob("*.cast.gz"), key=lambda p: int(p.name.split(".")[0]))


def session_json(ctx: AdminContext, row: dict[str, Any]) -> dict[str, Any]:
    """The contract's Session object from an `audit.query` row."""
    return {
        "id": row["id"],
        "subject": row["subject"],
        "issuer": row["issuer"],
        "groups": list(row["groups"] or []),
        "resource": row["resource"],
        "protocol": row["protocol"],
        "client_addr": row["client_addr"],
        "started_at": _iso(row["started_at"]),
        "ended_at": _iso(row["ended_at"]),
        "end_reason": row["end_reason"],
        "error": row.get("error"),
        "live": row["ended_at"] is None,
        "statements": int(row.get("statements") or 0),
        "denied": int(row.get("denied") or 0),
        "held": int(row.get("held") or 0),
        "masked_cells": int(row.get("masked_cells") or 0),
        "has_recording": row["protocol"] == "ssh" and bool(_recordings(ctx, row["id"])),
    }


def _entry(c: dict[str, Any]) -> dict[str, Any]:
    error = c.get("error_message")
    if error and c.get("error_code"):
        error = f"{c['error_code']}: {error}"
    found = _APPROVAL.search(c.get("reason") or "")
    return {
        "seq": c["seq"],
        "at": _iso(c["started_at"]),
        "kind": c.get("kind") or "",
        "text": c["text"],
        "decision": c["decision"],
        "rule": c.get("rule") or "",
        "reason": c.get("reason") or "",
        "status": c.get("status"),
        "rows": c.get("rows"),
        "masked_cells": c.get("masked_cells"),
        "duration_ms": c.get("duration_ms"),
        "error": error,
        "approval_id": found.group(1) if found else None,
    }


def visible(caller: Caller, row: dict[str, Any]) -> bool:
    return caller.reads_everything or caller.owns(row["subject"], row["issuer"])


def _cursor(row: dict[str, Any]) -> str:
    raw = f"{row['started_at'].astimezone(UTC).isoformat()}|{row['id']}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _parse_cursor(text: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()
        at, _, sid = raw.partition("|")
        return datetime.fromisoformat(at), sid
    except ValueError:
        raise HTTPException(422, detail="cursor: not a cursor this API returned") from None


class Filters:
    """The query parameters shared by the list and the export."""

    def __init__(
        self,
        live: bool | None = None,
        subject: str | None = None,
        group: str | None = None,
        resource: str | None = None,
        protocol: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        decision: Literal["denied", "held", "masked"] | None = None,
        q: str | None = Query(None, description="words that occur in one of its statements"),
    ) -> None:
        self.live, self.subject, self.group, self.resource = live, subject, group, resource
        self.protocol, self.since, self.until = protocol, since, until
        self.decision, self.q = decision, q

    def query(
        self, ctx: AdminContext, caller: Caller, limit: int, before: tuple[datetime, str] | None
    ) -> list[dict[str, Any]]:
        """The matching sessions the caller may see (blocking: run it in a thread)."""
        from sqlalchemy import exists, select

        from lockgate.approvals.tables import approval_requests

        where: list[Any] = []
        if self.live is not None:
            ended = sessions.c.ended_at
            where.append(ended.is_(None) if self.live else ended.is_not(None))
        if self.group:
            where.append(in_group(self.group))
        if self.protocol:
            where.append(sessions.c.protocol == self.protocol)
        if self.q and self.q.strip():
            where.append(sessions_matching(ctx.engine, self.q))
        if self.decision == "denied":
            where.append(
                exists(
                    select(commands.c.seq).where(
                        commands.c.session_id == sessions.c.id, commands.c.decision == "deny"
                    )
                )
            )
        elif self.decision == "held":
            t = approval_requests.c
            where.append(exists(select(t.id).where(t.session_id == sessions.c.id)))
        elif self.decision == "masked":
            where.append(
                exists(
                    select(commands.c.seq).where(
                        commands.c.session_id == sessions.c.id, commands.c.masked_cells > 0
                    )
                )
            )
        subject, issuer = self.subject, None
        if not caller.reads_everything:
            if subject is not None and subject != caller.subject:
                return []
            subject, issuer = caller.subject, caller.principal.issuer
        return list_sessions(
            ctx.engine,
            subject=subject,
            issuer=issuer,
            resource=self.resource,
            since=self.since,
            until=self.until,
            limit=limit,
            where=where,
            before=before,
            held=True,
        )


FiltersDep = Annotated[Filters, Depends()]


@router.get("", response_model=SessionPage)
async def list_(
    caller: CallerDep,
    ctx: Ctx,
    filters: FiltersDep,
    limit: int = Query(50, ge=1, le=500),
    cursor: str | None = None,
) -> dict[str, Any]:
    """Sessions, newest first, filtered; `next` is the cursor of the following page."""
    before = _parse_cursor(cursor) if cursor else None
    rows = await asyncio.to_thread(filters.query, ctx, caller, limit + 1, before)
    page = rows[:limit]
    return {
        "items": [session_json(ctx, r) for r in page],
        "next": _cursor(page[-1]) if len(rows) > limit else None,
    }


def _export_lines(ctx: AdminContext, rows: list[dict[str, Any]], fmt: str) -> Iterator[str]:
    if fmt == "jsonl":
        for row in rows:
            full = get_session(ctx.engine, row["id"]) or {"commands": []}
            item = session_json(ctx, row)
            item["timeline"] = [_entry(c) for c in full["commands"]]
            yield json.dumps(item, ensure_ascii=False) + "\n"
        return
    session_cols = [
        "id",
        "subject",
        "issuer",
        "resource",
        "protocol",
        "client_addr",
        "started_at",
        "ended_at",
        "end_reason",
    ]
    entry_cols = [
        "seq",
        "at",
        "kind",
        "text",
        "decision",
        "rule",
        "reason",
        "rows",
        "duration_ms",
        "error",
        "approval_id",
    ]
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(
        [f"session_{c}" if c != "id" else "session_id" for c in session_cols] + entry_cols
    )
    for row in rows:
        item = session_json(ctx, row)
        head = [item[c] for c in session_cols]
        full = get_session(ctx.engine, row["id"]) or {"commands": []}
        entries = [_entry(c) for c in full["commands"]] or [{}]
        for e in entries:
            writer.writerow(head + [e.get(c) for c in entry_cols])
        yield out.getvalue()
        out.seek(0)
        out.truncate()


@router.get("/export", response_class=StreamingResponse)
async def export(
    caller: CallerDep,
    ctx: Ctx,
    filters: FiltersDep,
    format: Literal["jsonl", "csv"] = "jsonl",
) -> StreamingResponse:
    """Download the filtered sessions with their statements (JSON lines or CSV)."""
    rows = await asyncio.to_thread(filters.query, ctx, caller, EXPORT_LIMIT, None)
    lines = await asyncio.to_thread(lambda: list(_export_lines(ctx, rows, format)))
    media = "application/x-ndjson" if format == "jsonl" else "text/csv"
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return StreamingResponse(
        iter(lines),
        media_type=media,
        headers={
            "Content-Disposition": f'attachment; filename="lockgate-sessions-{stamp}.{format}"'
        },
    )


async def _visible_session(ctx: AdminContext, caller: Caller, session_id: str) -> dict[str, Any]:
    try:
        found = await asyncio.to_thread(get_session, ctx.engine, session_id)
    except AmbiguousSessionId as exc:
        raise HTTPException(404, detail=exc.message) from None
    if found is None or not visible(caller, found):
        raise HTTPException(404, detail=f"no session '{session_id}'")
    return found


def _with_counts(ctx: AdminContext, found: dict[str, Any]) -> dict[str, Any]:
    rows = list_sessions(ctx.engine, where=[sessions.c.id == found["id"]], limit=1, held=True)
    return rows[0] if rows else found


@router.get("/{session_id}", response_model=SessionDetail)
async def detail(session_id: str, caller: CallerDep, ctx: Ctx) -> dict[str, Any]:
    """One session and its timeline of statements (decision, rows, duration, error)."""
    found = await _visible_session(ctx, caller, session_id)
    row = await asyncio.to_thread(_with_counts, ctx, found)
    return {
        "session": session_json(ctx, row),
        "timeline": [_entry(c) for c in found["commands"]],
    }


@router.post("/{session_id}/end", response_model=SessionOut, status_code=202)
async def end(session_id: str, body: EndIn, caller: CallerDep, ctx: Ctx) -> dict[str, Any]:
    """End a live session wherever it runs (admins); the client gets a FATAL error."""
    require(caller, ADMIN)
    found = await _visible_session(ctx, caller, session_id)
    if found["ended_at"] is not None:
        raise HTTPException(409, detail=f"session {found['id']} already ended")
    reason = body.reason.strip()
    if not reason:
        raise HTTPException(422, detail="ending a session needs a reason")
    asked = await asyncio.to_thread(request_end, ctx.engine, found["id"], caller.subject, reason)
    if not asked:
        raise HTTPException(409, detail=f"session {found['id']} is already being ended")
    hub(ctx).kick()
    row = await asyncio.to_thread(_with_counts, ctx, found)
    return session_json(ctx, row)


@router.get(
    "/{session_id}/recording",
    response_class=Response,
    responses={200: {"content": {"application/x-asciicast": {}}}},
)
async def recording(
    session_id: str, caller: CallerDep, ctx: Ctx, seq: int | None = None
) -> Response:
    """The SSH session's terminal recording (asciicast v2); `seq` picks a channel."""
    found = await _visible_session(ctx, caller, session_id)
    casts = _recordings(ctx, found["id"])
    if seq is not None:
        casts = [p for p in casts if p.name.split(".")[0] == str(seq)]
    if not casts:
        raise HTTPException(404, detail=f"session {found['id']} has no terminal recording")
    data = await asyncio.to_thread(lambda: gzip.decompress(casts[0].read_bytes()))
    return Response(data, media_type="application/x-asciicast")
