"""`lockgate reviews | request | grants`: approve held statements and time-boxed access.

Trust model: a reviewer proves who they are with a token the gateway itself would accept
(`--token` or $LOCKGATE_TOKEN: a gateway token or an OIDC ID token), verified here with
the gateway's own verifier; the request's reviewer groups are checked against the token's
groups. `--as SUBJECT --group G` names a reviewer without a token and is only honoured
when this command can read the gateway's token signing key: whoever can read it can mint
any token anyway, so it grants nothing new (it is how an administrator acts from the
gateway host). Every decision lands in `approval_decisions` with the reviewer's subject,
groups and reason.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import click
from sqlalchemy.exc import SQLAlchemyError

from lockgate.approvals.rules import ApprovalRules
from lockgate.approvals.store import GRANT, ApprovalRequest, ApprovalStore
from lockgate.approvals.webhook import decision_event, notify
from lockgate.cli.common import config_option, fail, load, print_json
from lockgate.config.model import Manifest, parse_duration
from lockgate.errors import LockgateError
from lockgate.identity.tokens import GatewayTokenAuthority, format_duration, iso
from lockgate.model import Principal, PrincipalKind


@dataclass
class _Ctx:
    manifest: Manifest
    store: ApprovalStore


@contextmanager
def _open(config_path: Path) -> Iterator[_Ctx]:
    from lockgate.store import open_engine

    manifest = load(config_path)
    try:
        engine = open_engine(manifest.state_url)
    except (SQLAlchemyError, OSError) as exc:
        fail(
            f"cannot open the state store ({type(exc).__name__})",
            f"check state.url in {config_path}",
        )
    try:
        yield _Ctx(manifest, ApprovalStore(engine))
    except LockgateError as exc:
        fail(exc.message, exc.hint)
    except SQLAlchemyError as exc:
        fail(f"the state store failed ({type(exc).__name__})", "retry in a moment")
    finally:
        engine.dispose()


def _identity(
    ctx: _Ctx, token: str | None, as_subject: str | None, groups: tuple[str, ...]
) -> Principal:
    """Who is acting: a verified token, or `--as` with the gateway's admin rights."""
    if as_subject is not None:
        if token:
            fail("pass either --token or --as, not both")
        authority = GatewayTokenAuthority(ctx.manifest, ctx.store.engine)
        if not authority.key_path.exists():
            fail(
                "--as needs the gateway's admin rights (its token signing key), "
                f"which are not here ({authority.key_path})",
                "prove who you are with --token or $LOCKGATE_TOKEN instead",
            )
        _ = authority.public_key  # raises SigningKeyError when it cannot be read
        return Principal(
            subject=as_subject, groups=frozenset(groups), kind=PrincipalKind.HUMAN, issuer="admin"
        )
    if not token:
        fail(
            "who are you? no token given",
            "pass --token TOKEN or set LOCKGATE_TOKEN (a gateway token or your ID token)",
        )
    from lockgate.identity.oidc import OIDCVerifier
    from lockgate.identity.verifier import GatewayTokenVerifier, IdentityVerifier, TokenVerifier

    engine = ctx.store.engine
    verifiers: list[TokenVerifier] = [
        GatewayTokenVerifier(GatewayTokenAuthority(ctx.manifest, engine))
    ]
    verifiers += [OIDCVerifier(issuer, engine) for issuer in ctx.manifest.identity.oidc]
    return asyncio.run(IdentityVerifier(verifiers).verify(token))


_token_option = click.option(
    "--token",
    default=lambda: os.environ.get("LOCKGATE_TOKEN"),
    show_default="$LOCKGATE_TOKEN",
    help="Your token (gateway or OIDC): who you are.",
)
_as_option = click.option(
    "--as", "as_subject", default=None, help="Act as SUBJECT (needs the gateway's admin rights)."
)
_group_option = click.option(
    "--group", "groups", multiple=True, help="With --as: a group SUBJECT is in (repeatable)."
)


def _line(r: ApprovalRequest) -> str:
    what = r.statement if r.kind != GRANT else f"access for {format_duration(r.grant_seconds or 0)}"
    what = " ".join((what or "").split())
    if len(what) > 70:
        what = what[:67] + "..."
    votes = f"{r.approvals}/{r.quorum}"
    return (
        f"{r.id}  {r.status:<9} {r.kind:<9} {r.requester} on {r.resource}  "
        f"[{votes}, reviewers: {', '.join(r.reviewers)}]  {what}"
    )


def _show(r: ApprovalRequest) -> None:
    click.echo(f"request {r.id} ({r.kind}) — {r.status}")
    click.echo(f"  requester: {r.requester} (groups: {', '.join(r.requester_groups) or 'none'})")
    click.echo(f"  resource:  {r.resource}")
    if r.statement is not None:
        click.echo(f"  statement: {r.statement}")
        click.echo(f"  held by:   guardrail {r.guardrail} (session {r.session_id})")
    if r.grant_seconds is not None:
        click.echo(f"  access for {format_duration(r.grant_seconds)}")
    click.echo(f"  reason:    {r.reason}")
    distinct = ", from distinct groups" if r.distinct_groups else ""
    click.echo(
        f"  rule {r.rule}: {r.quorum} approval(s){distinct} from {', '.join(r.reviewers)}; "
        f"created {iso(r.created_at)}, expires {iso(r.expires_at)}"
    )
    for d in r.decisions:
        click.echo(f"  {d.verdict} by {d.reviewer} at {iso(d.decided_at)}: {d.reason}")
    if r.outcome:
        click.echo(f"  outcome:   {r.outcome}")


@click.group()
def reviews() -> None:
    """Approval requests: held statements and access requests waiting for reviewers."""


@reviews.command("list")
@config_option
@click.option("--all", "show_all", is_flag=True, help="Closed requests too (newest first).")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def list_(config_path: Path, show_all: bool, as_json: bool) -> None:
    """List pending requests (or all with --all)."""
    with _open(config_path) as ctx:
        found = ctx.store.requests(None if show_all else "pending")
    if as_json:
        print_json([r.as_json() for r in found])
        return
    if not found:
        click.echo("No pending requests." if not show_all else "No requests.")
        return
    for r in found:
        click.echo(_line(r))
    click.echo("approve with: lockgate reviews approve ID --reason TEXT", err=True)


@reviews.command()
@config_option
@click.argument("request_id")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def show(config_path: Path, request_id: str, as_json: bool) -> None:
    """Show one request and the decisions taken on it."""
    with _open(config_path) as ctx:
        ctx.store.expire_due()
        r = ctx.store.get(request_id)
    if r is None:
        fail(f"no approval request '{request_id}'", "see them with `lockgate reviews list --all`")
    if as_json:
        print_json(r.as_json())
    else:
        _show(r)


def _decision_command(verdict: str, summary: str, reason_help: str) -> click.Command:
    """`reviews approve` and `reviews deny`: the same options, one verdict each."""

    @reviews.command(verdict, help=summary)
    @config_option
    @click.argument("request_id")
    @click.option("--reason", required=True, help=reason_help)
    @_token_option
    @_as_option
    @_group_option
    @click.option("--json", "as_json", is_flag=True, help="Print the request as JSON.")
    def decide(
        config_path: Path,
        request_id: str,
        reason: str,
        token: str | None,
        as_subject: str | None,
        groups: tuple[str, ...],
        as_json: bool,
    ) -> None:
        with _open(config_path) as ctx:
            reviewer = _identity(ctx, token, as_subject, groups)
            r = ctx.store.decide(request_id, reviewer, verdict, reason)
            notify(ctx.manifest, decision_event(r), r)
        if as_json:
            print_json(r.as_json())
            return
        done = "Approved" if verdict == "approve" else "Denied"
        click.echo(f"{done} request {r.id} as {reviewer.subject}.")
        if r.status == "pending":
            click.echo(
                f"  {r.approvals} of {r.quorum} approvals so far; waiting for more reviewers."
            )
        else:
            click.echo(f"  request is now {r.status}: {r.outcome}")

    return decide


approve = _decision_command(
    "approve",
    "Approve a request (it runs or is granted once the quorum is reached).",
    "Why (recorded with your identity).",
)
deny = _decision_command(
    "deny", "Deny a request (one denial closes it).", "Why (the requester is told)."
)


@click.command()
@config_option
@click.argument("resource")
@click.option("--for", "duration", required=True, help="How long, e.g. 30m or 2h.")
@click.option("--reason", required=True, help="Why, e.g. an incident number.")
@_token_option
@click.option("--json", "as_json", is_flag=True, help="Print the request as JSON.")
def request(
    config_path: Path, resource: str, duration: str, reason: str, token: str | None, as_json: bool
) -> None:
    """Ask for time-boxed access to RESOURCE (a grant, once reviewers approve)."""
    try:
        seconds = parse_duration(duration)
    except ValueError as exc:
        fail(f"--for: {exc}")
    with _open(config_path) as ctx:
        if ctx.manifest.target(resource) is None:
            fail(f"resource '{resource}' does not exist", "name a resource from the manifest")
        rule = ApprovalRules(ctx.manifest).for_grant(resource)
        if rule is None:
            fail(
                f"no approval rule takes access requests for '{resource}'",
                "ask an administrator to add one under `approvals.rules`",
            )
        longest = parse_duration(rule.max_grant)
        if seconds > longest:
            fail(f"--for {duration} is longer than rule '{rule.name}' allows ({rule.max_grant})")
        requester = _identity(ctx, token, None, ())
        r = ctx.store.create(GRANT, requester, resource, rule, reason, grant_seconds=seconds)
        notify(ctx.manifest, "request.created", r)
    if as_json:
        print_json(r.as_json())
        return
    click.echo(r.id)
    click.echo(
        f"Requested {format_duration(seconds)} of access to {resource} as {requester.subject}; "
        f"waiting for {rule.quorum} approval(s) from {', '.join(rule.reviewers)} "
        f"(expires {iso(r.expires_at)}).",
        err=True,
    )
    click.echo(
        f"  a reviewer approves it with: lockgate reviews approve {r.id} --reason TEXT", err=True
    )


@click.group()
def grants() -> None:
    """Time-boxed access grants from approved access requests."""


@grants.command("list")
@config_option
@click.option("--all", "show_all", is_flag=True, help="Expired and revoked grants too.")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def grants_list(config_path: Path, show_all: bool, as_json: bool) -> None:
    """List active grants (or all with --all)."""
    now = datetime.now(UTC)
    with _open(config_path) as ctx:
        found = ctx.store.list_grants(active_only=not show_all, now=now)
    if as_json:
        print_json([g.as_json(now) for g in found])
        return
    if not found:
        click.echo("No active grants." if not show_all else "No grants.")
        return
    for g in found:
        j = g.as_json(now)
        click.echo(
            f"{g.id}  {j['status']:<8} {g.subject} on {g.resource} until {j['expires_at']}  "
            f"(request {g.request_id}: {g.reason})"
        )


@grants.command()
@config_option
@click.argument("grant_id")
@click.option("--reason", required=True, help="Why it ends early.")
@_token_option
@_as_option
@_group_option
def revoke(
    config_path: Path,
    grant_id: str,
    reason: str,
    token: str | None,
    as_subject: str | None,
    groups: tuple[str, ...],
) -> None:
    """End a grant now (live sessions under it end at their next check)."""
    with _open(config_path) as ctx:
        who = _identity(ctx, token, as_subject, groups)
        found = ctx.store.grants_by_id([grant_id]).get(grant_id)
        if found is None:
            fail(f"no grant '{grant_id}'", "see them with `lockgate grants list`")
        rule = ApprovalRules(ctx.manifest).for_grant(found.resource)
        if as_subject is None and (rule is None or who.groups.isdisjoint(rule.reviewers)):
            fail(
                f"'{who.subject}' may not revoke grants on {found.resource}",
                "reviewers of its approval rule (or an administrator with --as) may",
            )
        if not ctx.store.revoke_grant(grant_id, f"revoked by {who.subject}: {reason}"):
            fail(f"grant '{grant_id}' was already revoked")
    click.echo(f"Revoked grant {grant_id}; sessions under it end at their next check.")


COMMANDS: list[click.Command] = [reviews, request, grants]
