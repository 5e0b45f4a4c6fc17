"""Review queue, access requests and grants over HTTP (the CLI's `reviews`, `request`, `grants`).

Who sees what: admins and auditors every request; anyone the requests they made and the
ones whose reviewer groups they are in. Deciding follows the stored request's terms exactly
as `lockgate reviews approve` does (`ApprovalStore.decide`): a member of its reviewer groups,
never the requester, once per reviewer. Auditors read and never decide.
"""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException
from pydantic import BaseModel, Field

from lockgate.admin.auth import ADMIN, AUDITOR, Caller, CallerDep
from lockgate.admin.context import AdminContext, context
from lockgate.admin.hub import hub
from lockgate.approvals.rules import ApprovalRules
from lockgate.approvals.store import (
    GRANT,
    PENDING,
    ApprovalRequest,
    DecisionRefused,
    Grant,
)
from lockgate.approvals.webhook import decision_event, notify
from lockgate.config.model import parse_duration

router = APIRouter(prefix="/api", tags=["reviews"])
_ESTIMATE = re.compile(r"estimated rows=(\d+)")
_REVOKED_BY = re.compile(r"^revoked by ([^:]+): ")


class Requester(BaseModel):
    subject: str
    issuer: str
    groups: list[str]


class DecisionOut(BaseModel):
    reviewer: str
    groups: list[str]
    verdict: Literal["approve", "deny"]
    reason: str
    at: str


class Review(BaseModel):
    id: str
    kind: Literal["statement", "grant"]
    status: Literal["pending", "approved", "denied", "expired", "withdrawn"]
    requester: Requester
    resource: str
    statement: str | None
    rule: str | None = Field(description="the guardrail rule that held a statement")
    approval_rule: str = Field(description="the approval rule whose terms govern the request")
    reason: str
    outcome: str | None
    estimated_rows: int | None
    duration_seconds: int | None
    session_id: str | None
    created_at: str
    expires_at: str
    closed_at: str | None
    waited_seconds: float
    quorum: int
    distinct_groups: bool
    reviewer_groups: list[str]
    decisions: list[DecisionOut]
    can_decide: bool


class ReviewList(BaseModel):
    items: list[Review]


class DecisionIn(BaseModel):
    reason: str


class AccessRequestIn(BaseModel):
    resource: str
    duration: str = Field(description="e.g. 30m or 2h")
    reason: str


class GrantOut(BaseModel):
    id: str
    request_id: str
    subject: str
    issuer: str
    resource: str
    granted_at: str
    expires_at: str
    revoked_at: str | None
    revoked_by: str | None
    reason: str
    status: Literal["active", "expired", "revoked"]


class GrantList(BaseModel):
    items: list[GrantOut]


class RevokeIn(BaseModel):
    reason: str


def iso(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def visible(caller: Caller, r: ApprovalRequest) -> bool:
    """Whether the caller may see request `r`."""
    if caller.reads_everything or caller.owns(r.requester, r.requester_issuer):
        return True
    return not caller.principal.groups.isdisjoint(r.reviewers)


def can_decide(caller: Caller, r: ApprovalRequest, now: datetime) -> bool:
    """Whether an approve or deny by the caller would be taken now."""
    return (
        r.status == PENDING
        and r.expires_at > now
        and r.requester != caller.subject
        and not caller.principal.groups.isdisjoint(r.reviewers)
        and all(d.reviewer != caller.subject for d in r.decisions)
    )


def review_json(r: ApprovalRequest, caller: Caller, now: datetime | None = None) -> dict[str, Any]:
    """The contract's Review object for `caller`."""
    now = now or datetime.now(UTC)
    estimate = _ESTIMATE.search(r.reason or "")
    return {
        "id": r.id,
        "kind": r.kind,
        "status": r.status,
        "requester": {
            "subject": r.requester,
            "issuer": r.requester_issuer,
            "groups": list(r.requester_groups),
        },
        "resource": r.resource,
        "statement": r.statement,
        "rule": r.guardrail,
        "approval_rule": r.rule,
        "reason": r.reason,
        "outcome": r.outcome,
        "estimated_rows": int(estimate.group(1)) if estimate else None,
        "duration_seconds": r.grant_seconds,
        "session_id": r.session_id,
        "created_at": iso(r.created_at),
        "expires_at": iso(r.expires_at),
        "closed_at": iso(r.closed_at) if r.closed_at else None,
        "waited_seconds": round(((r.closed_at or now) - r.created_at).total_seconds(), 3),
        "quorum": r.quorum,
        "distinct_groups": r.distinct_groups,
        "reviewer_groups": list(r.reviewers),
        "decisions": [
            {
                "reviewer": d.reviewer,
                "groups": list(d.reviewer_groups),
                "verdict": d.verdict,
                "reason": d.reason,
                "at": iso(d.decided_at),
            }
            for d in r.decisions
        ],
        "can_decide": can_decide(caller, r, now),
    }


def grant_json(g: Grant, now: datetime) -> dict[str, Any]:
    revoked_by = _REVOKED_BY.match(g.revoked_reason or "")
    status = "revoked" if g.revoked_at else ("active" if g.active(now) else "expired")
    return {
        "id": g.id,
        "request_id": g.request_id,
        "subject": g.subject,
        "issuer": g.issuer,
        "resource": g.resource,
        "granted_at": iso(g.starts_at),
        "expires_at": iso(g.expires_at),
        "revoked_at": iso(g.revoked_at) if g.revoked_at else None,
        "revoked_by": revoked_by.group(1) if revoked_by else None,
        "reason": g.reason,
        "status": status,
    }


Ctx = Annotated[AdminContext, Depends(context)]


@router.get("/reviews", response_model=ReviewList)
async def list_reviews(
    caller: CallerDep,
    ctx: Ctx,
    status: Literal["pending", "decided", "all"] = "pending",
    kind: Literal["statement", "grant"] | None = None,
    limit: int = 200,
) -> dict[str, Any]:
    """Held statements and access requests the caller may see, newest first."""
    limit = max(1, min(limit, 1000))
    wanted = PENDING if status == "pending" else None
    found = await asyncio.to_thread(
        ctx.approvals.requests, wanted, 1000 if wanted is None else limit
    )
    now = datetime.now(UTC)
    items = [
        review_json(r, caller, now)
        for r in found
        if visible(caller, r)
        and (kind is None or r.kind == kind)
        and (status != "decided" or r.status != PENDING)
    ]
    return {"items": items[:limit]}


async def _visible_request(ctx: AdminContext, caller: Caller, request_id: str) -> ApprovalRequest:
    await asyncio.to_thread(ctx.approvals.expire_due)
    r = await asyncio.to_thread(ctx.approvals.get, request_id)
    if r is None or not visible(caller, r):
        raise HTTPException(404, detail=f"no approval request '{request_id}'")
    return r


@router.get("/reviews/{request_id}", response_model=Review)
async def get_review(request_id: str, caller: CallerDep, ctx: Ctx) -> dict[str, Any]:
    """One request with its decisions (404 when unknown or not visible to the caller)."""
    return review_json(await _visible_request(ctx, caller, request_id), caller)


async def _decide(
    ctx: AdminContext, caller: Caller, request_id: str, verdict: str, body: DecisionIn
) -> dict[str, Any]:
    r = await _visible_request(ctx, caller, request_id)
    if not body.reason.strip():
        raise HTTPException(422, detail="a decision needs a reason")
    if r.status != PENDING:
        raise HTTPException(409, detail=f"request {r.id} is already {r.status}")
    if r.requester == caller.subject:
        raise HTTPException(
            403, detail=f"'{caller.subject}' made request {r.id} and cannot decide on it"
        )
    if caller.principal.groups.isdisjoint(r.reviewers):
        raise HTTPException(
            403,
            detail=f"'{caller.subject}' is not a reviewer of request {r.id} "
            f"(reviewers are members of: {', '.join(r.reviewers)})",
        )
    try:
        decided = await asyncio.to_thread(
            ctx.approvals.decide, r.id, caller.principal, verdict, body.reason.strip()
        )
    except DecisionRefused as exc:
        # Lost a race (expired, decided elsewhere) or already voted: the request moved on.
        raise HTTPException(409, detail=exc.message) from None
    if ctx.manifest.approvals.webhooks:
        await asyncio.to_thread(notify, ctx.manifest, decision_event(decided), decided)
    hub(ctx).kick()
    return review_json(decided, caller)


@router.post("/reviews/{request_id}/approve", response_model=Review)
async def approve(request_id: str, body: DecisionIn, caller: CallerDep, ctx: Ctx) -> dict[str, Any]:
    """Approve (runs or grants once the quorum is reached). 403 not a reviewer / own request."""
    return await _decide(ctx, caller, request_id, "approve", body)


@router.post("/reviews/{request_id}/deny", response_model=Review)
async def deny(request_id: str, body: DecisionIn, caller: CallerDep, ctx: Ctx) -> dict[str, Any]:
    """Deny (one denial closes the request; the requester is told the reason)."""
    return await _decide(ctx, caller, request_id, "deny", body)


@router.post("/requests", response_model=Review, status_code=201)
async def request_access(body: AccessRequestIn, caller: CallerDep, ctx: Ctx) -> dict[str, Any]:
    """Ask for time-boxed access to a resource (a grant once reviewers approve)."""
    try:
        seconds = parse_duration(body.duration)
    except ValueError as exc:
        raise HTTPException(422, detail=f"duration: {exc}") from None
    if not body.reason.strip():
        raise HTTPException(422, detail="an access request needs a reason")
    if ctx.manifest.target(body.resource) is None:
        raise HTTPException(422, detail=f"resource '{body.resource}' does not exist")
    rule = ApprovalRules(ctx.manifest).for_grant(body.resource)
    if rule is None:
        raise HTTPException(
            422, detail=f"no approval rule takes access requests for '{body.resource}'"
        )
    if seconds > parse_duration(rule.max_grant):
        raise HTTPException(
            422,
            detail=f"{body.duration} is longer than rule '{rule.name}' allows ({rule.max_grant})",
        )
    created = await asyncio.to_thread(
        ctx.approvals.create,
        GRANT,
        caller.principal,
        body.resource,
        rule,
        body.reason.strip(),
        grant_seconds=seconds,
    )
    if ctx.manifest.approvals.webhooks:
        await asyncio.to_thread(notify, ctx.manifest, "request.created", created)
    hub(ctx).kick()
    return review_json(created, caller)


@router.get("/grants", response_model=GrantList)
async def list_grants(caller: CallerDep, ctx: Ctx, all: bool = False) -> dict[str, Any]:
    """Active grants (`all=true`: expired and revoked too): the caller's own, those on
    resources whose access requests the caller reviews, everyone's for admins and auditors."""
    now = datetime.now(UTC)
    found = await asyncio.to_thread(ctx.approvals.list_grants, not all, now)
    rules = ApprovalRules(ctx.manifest)
    items = [
        grant_json(g, now)
        for g in found
        if caller.reads_everything
        or caller.owns(g.subject, g.issuer)
        or _reviews_grants_on(caller, rules, g.resource)
    ]
    return {"items": items}


def _reviews_grants_on(caller: Caller, rules: ApprovalRules, resource: str) -> bool:
    """Whether the caller reviews access requests for `resource` (and may revoke its grants)."""
    rule = rules.for_grant(resource)
    return rule is not None and not caller.principal.groups.isdisjoint(rule.reviewers)


@router.post("/grants/{grant_id}/revoke", response_model=GrantOut)
async def revoke_grant(
    grant_id: str, body: RevokeIn, caller: CallerDep, ctx: Ctx
) -> dict[str, Any]:
    """End a grant now (admins, and reviewers of its approval rule); its sessions end soon."""
    found = (await asyncio.to_thread(ctx.approvals.grants_by_id, [grant_id])).get(grant_id)
    if found is None:
        raise HTTPException(404, detail=f"no grant '{grant_id}'")
    reviewer = _reviews_grants_on(caller, ApprovalRules(ctx.manifest), found.resource)
    if not (caller.is_admin or reviewer):
        if not (caller.reads_everything or caller.owns(found.subject, found.issuer)):
            raise HTTPException(404, detail=f"no grant '{grant_id}'")
        raise HTTPException(
            403, detail=f"'{caller.subject}' may not revoke grants on {found.resource}"
        )
    if not body.reason.strip():
        raise HTTPException(422, detail="a revocation needs a reason")
    done = await asyncio.to_thread(
        ctx.approvals.revoke_grant, grant_id, f"revoked by {caller.subject}: {body.reason.strip()}"
    )
    if not done:
        raise HTTPException(409, detail=f"grant '{grant_id}' was already revoked")
    now = datetime.now(UTC)
    updated = (await asyncio.to_thread(ctx.approvals.grants_by_id, [grant_id]))[grant_id]
    return grant_json(updated, now)


__all__ = ["ADMIN", "AUDITOR", "router"]
