"""`GET /api/events`: server-sent events of reviews and sessions the caller may see.

`event: review` (data: a Review) when a request is created or decided; `event: session`
(data: a Session) when a session starts or ends. A comment line every 15 s keeps proxies
from closing a quiet stream; the stream ends when the gateway stops.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from lockgate.admin.auth import Caller, CallerDep
from lockgate.admin.context import AdminContext, context
from lockgate.admin.hub import Change, hub
from lockgate.admin.reviews import review_json
from lockgate.admin.reviews import visible as review_visible
from lockgate.admin.sessions import session_json
from lockgate.admin.sessions import visible as session_visible

router = APIRouter(prefix="/api", tags=["events"])
KEEPALIVE_SECONDS = 15.0


def _format(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


def render(ctx: AdminContext, caller: Caller, change: Change) -> str | None:
    """The SSE text of `change` for `caller`, or None when it is not theirs to see."""
    if change.request is not None and review_visible(caller, change.request):
        return _format("review", review_json(change.request, caller))
    if change.session is not None and session_visible(caller, change.session):
        return _format("session", session_json(ctx, change.session))
    return None


async def _stream(request: Request, ctx: AdminContext, caller: Caller) -> AsyncIterator[str]:
    events = hub(ctx)
    queue = events.subscribe()
    try:
        yield ": lockgate events\n\n"
        idle = 0.0
        while not ctx.stopping.is_set():
            try:
                # Wake each second: to notice a stopping gateway or a client gone away.
                change = await asyncio.wait_for(queue.get(), timeout=1.0)
            except TimeoutError:
                if await request.is_disconnected():
                    return
                idle += 1.0
                if idle >= KEEPALIVE_SECONDS:
                    idle = 0.0
                    yield ": keepalive\n\n"
                continue
            idle = 0.0
            text = render(ctx, caller, change)
            if text is not None:
                yield text
    finally:
        events.unsubscribe(queue)


@router.get(
    "/events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def events(
    request: Request, caller: CallerDep, ctx: Annotated[AdminContext, Depends(context)]
) -> StreamingResponse:
    """Live updates: `review` and `session` events, per the caller's visibility."""
    return StreamingResponse(
        _stream(request, ctx, caller),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
