"""`GET /api/config` and `GET /api/tokens`: what the gateway runs with, never a secret.

The manifest holds only credential references (env:, file:, store:), never secrets; webhook
URLs can carry a secret in their path or query (Slack's do), so only their origin is shown.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends
from pydantic import BaseModel

from lockgate.admin.auth import ADMIN, AUDITOR, CallerDep, require
from lockgate.admin.context import AdminContext, context
from lockgate.identity.tokens import TokenRecord

router = APIRouter(prefix="/api", tags=["configuration"])
Ctx = Annotated[AdminContext, Depends(context)]


class ConfigOut(BaseModel):
    resources: list[dict[str, Any]]
    access: list[dict[str, Any]]
    guardrails: dict[str, Any]
    masking: dict[str, Any]
    approvals: dict[str, Any]
    identity: dict[str, Any]


class TokenOut(BaseModel):
    jti: str
    subject: str
    groups: list[str]
    scopes: list[str] | None
    kind: str
    issued_at: str
    expires_at: str
    revoked: bool
    revoked_at: str | None
    revoked_reason: str | None


class TokenList(BaseModel):
    items: list[TokenOut]


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}/…" if parts.path not in ("", "/") else url


def config_json(ctx: AdminContext) -> dict[str, Any]:
    """The loaded manifest's policy sections as plain data, webhook secrets cut."""
    m = ctx.manifest
    approvals = m.approvals.model_dump(mode="json")
    for hook in approvals["webhooks"]:
        hook["url"] = _origin(hook["url"])
    identity = m.identity.model_dump(mode="json")
    return {
        "resources": [r.model_dump(mode="json") for r in m.resources],
        "access": [a.model_dump(mode="json") for a in m.access],
        "guardrails": m.guardrails.model_dump(mode="json"),
        "masking": m.masking.model_dump(mode="json"),
        "approvals": approvals,
        "identity": identity,
    }


@router.get("/config", response_model=ConfigOut)
def get_config(caller: CallerDep, ctx: Ctx) -> dict[str, Any]:
    """Resources, access, guardrails, masking and approval rules as loaded (admins, auditors)."""
    require(caller, ADMIN, AUDITOR)
    return config_json(ctx)


def _token(t: TokenRecord) -> dict[str, Any]:
    from lockgate.admin.reviews import iso

    return t.as_json(iso)


@router.get("/tokens", response_model=TokenList)
async def tokens(caller: CallerDep, ctx: Ctx, expired: bool = True) -> dict[str, Any]:
    """Gateway tokens issued (never the tokens themselves), with expiry and revocation."""
    require(caller, ADMIN, AUDITOR)
    found = await asyncio.to_thread(ctx.authority.list_tokens, expired)
    return {"items": [_token(t) for t in reversed(found)]}
