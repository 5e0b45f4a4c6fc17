"""`lockgate token issue | revoke | list`: gateway-signed tokens for agents, CI jobs and people.

`issue` prints only the token on stdout so `TOKEN=$(lockgate token issue ...)` works; every
friendly word goes to stderr. No command ever prints a stored token (none is stored).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
from sqlalchemy.exc import SQLAlchemyError

from lockgate.cli.common import config_option, fail, load, print_json
from lockgate.config.model import Manifest, parse_duration
from lockgate.errors import LockgateError
from lockgate.identity.tokens import GatewayTokenAuthority, TokenRecord, format_duration, iso
from lockgate.model import Principal, PrincipalKind
from lockgate.policy.access import AccessPolicy


@contextmanager
def _authority(config_path: Path) -> Iterator[tuple[Manifest, GatewayTokenAuthority]]:
    from lockgate.store import open_engine

    manifest = load(config_path)
    try:
        # Token commands touch only `issued_tokens`, which the authority creates if missing.
        engine = open_engine(manifest.state_url, create=False)
    except (SQLAlchemyError, OSError) as exc:
        fail(
            f"cannot open the state store ({type(exc).__name__})",
            f"check state.url in {config_path}",
        )
    try:
        yield manifest, GatewayTokenAuthority(manifest, engine)
    except LockgateError as exc:
        fail(exc.message, exc.hint)
    finally:
        engine.dispose()


def _status(record: TokenRecord, now: datetime) -> str:
    if record.revoked:
        return "revoked"
    return "expired" if record.expired(now) else "active"


def _as_json(record: TokenRecord, now: datetime) -> dict[str, Any]:
    return {**record.as_json(iso), "status": _status(record, now)}


@click.group()
def token() -> None:
    """Issue, list and revoke gateway-signed tokens."""


@token.command()
@config_option
@click.option("--subject", required=True, help="Who the token is for (e.g. ci-deploy).")
@click.option("--group", "groups", multiple=True, help="A group the subject is in (repeatable).")
@click.option("--ttl", default=None, help="Lifetime such as 15m, 1h, 7d (default from manifest).")
@click.option(
    "--scope", "scopes", multiple=True, help="Limit the token to this resource (repeatable)."
)
@click.option("--human", is_flag=True, help="Mark the subject as a person, not a machine.")
@click.option("--json", "as_json", is_flag=True, help="Print token and details as JSON.")
def issue(
    config_path: Path,
    subject: str,
    groups: tuple[str, ...],
    ttl: str | None,
    scopes: tuple[str, ...],
    human: bool,
    as_json: bool,
) -> None:
    """Print a new token (only the token on stdout; details on stderr)."""
    ttl_seconds: int | None = None
    if ttl is not None:
        try:
            ttl_seconds = parse_duration(ttl)
        except ValueError as exc:
            fail(f"--ttl: {exc}")
    kind = PrincipalKind.HUMAN if human else PrincipalKind.MACHINE
    with _authority(config_path) as (manifest, authority):
        issued = authority.issue(
            subject, groups, ttl_seconds=ttl_seconds, scopes=scopes or None, kind=kind
        )
        policy = AccessPolicy(manifest)
    if as_json:
        print_json(
            {
                "token": issued.token,
                "jti": issued.jti,
                "subject": issued.subject,
                "groups": list(issued.groups),
                "scopes": list(issued.scopes) if issued.scopes is not None else None,
                "kind": kind.value,
                "expires_at": iso(issued.expires_at),
            }
        )
    else:
        click.echo(issued.token)

    lifetime = format_duration(int((issued.expires_at - datetime.now(UTC)).total_seconds() + 0.5))
    group_text = ", ".join(issued.groups) or "none"
    click.echo(
        f"Issued a {kind.value} token for '{issued.subject}' (groups: {group_text})"
        + (f", scoped to {', '.join(issued.scopes)}" if issued.scopes else "")
        + ".",
        err=True,
    )
    click.echo(f"  id {issued.jti}, expires {iso(issued.expires_at)} (in {lifetime})", err=True)
    click.echo(f"  revoke it with: lockgate token revoke {issued.jti}", err=True)
    for name in issued.scopes or ():
        if manifest.target(name) is None:  # any type: PostgreSQL or SSH
            click.secho(
                f"warning: resource '{name}' is not in the manifest; the token cannot reach it",
                fg="yellow",
                err=True,
            )
    principal = Principal(
        subject=issued.subject,
        groups=frozenset(issued.groups),
        kind=kind,
        scopes=frozenset(issued.scopes) if issued.scopes is not None else None,
    )
    reachable = policy.reachable(principal)
    if reachable:
        click.echo(f"  it can reach: {', '.join(reachable)}", err=True)
    else:
        click.secho(
            "warning: no access rule lets this identity reach any resource yet; "
            f"add one under `access:` in {config_path}",
            fg="yellow",
            err=True,
        )


@token.command()
@config_option
@click.argument("jti", required=False)
@click.option(
    "--subject", default=None, help="Revoke an identity: all its tokens, gateway and OIDC."
)
@click.option(
    "--issuer",
    default=None,
    help="The OIDC issuer URL of the token or subject (default: the gateway; with --subject, "
    "every issuer).",
)
@click.option("--reason", default="", help="Why (kept with the revocation).")
def revoke(
    config_path: Path, jti: str | None, subject: str | None, issuer: str | None, reason: str
) -> None:
    """Revoke a token by its id, or an identity with --subject; live sessions end too."""
    from lockgate.identity.revocation import (
        ANY_ISSUER,
        ensure_tables,
        revoke_gateway_subject,
        revoke_identity,
    )

    if (jti is None) == (subject is None):
        fail(
            "name one token id, or an identity with --subject",
            "e.g. `lockgate token revoke ID` or `lockgate token revoke --subject ci-deploy`",
        )
    with _authority(config_path) as (manifest, authority):
        ensure_tables(authority.engine)
        gateway_issuer = manifest.identity.gateway_tokens.issuer
        oidc_issuers = [i.issuer for i in manifest.identity.oidc]
        if issuer is not None and issuer not in (gateway_issuer, *oidc_issuers):
            fail(
                f"issuer '{issuer}' is not in the manifest",
                "use an issuer URL listed under identity.oidc, exactly as written there",
            )
        if jti is not None:
            if issuer is None or issuer == gateway_issuer:
                if not authority.revoke(jti, reason):
                    fail(
                        f"no token with id '{jti}'",
                        "see the ids with `lockgate token list --all`; for an OIDC token "
                        "add --issuer URL",
                    )
            else:
                revoke_identity(authority.engine, issuer, jti=jti, reason=reason)
            click.echo(
                f"Revoked token {jti}. New connections with it are refused, "
                "and its live sessions end within seconds."
            )
            return
        assert subject is not None
        count = 0
        if issuer is None or issuer == gateway_issuer:
            count = revoke_gateway_subject(authority.engine, subject, reason)
        if issuer != gateway_issuer:
            revoke_identity(authority.engine, issuer or ANY_ISSUER, subject=subject, reason=reason)
    where = "every issuer" if issuer is None else issuer
    click.echo(
        f"Revoked identity '{subject}' at {where} ({count} gateway token(s) revoked). "
        "Its live sessions end within seconds."
    )
    if issuer != gateway_issuer:
        click.echo(f"Undo with: lockgate token restore --subject {subject}", err=True)


@token.command()
@config_option
@click.option("--subject", required=True, help="The identity whose revocation to lift.")
@click.option("--issuer", default=None, help="Only the revocation at this issuer.")
def restore(config_path: Path, subject: str, issuer: str | None) -> None:
    """Lift an identity's revocation (revoked gateway tokens stay revoked)."""
    from lockgate.identity.revocation import ensure_tables, lift_subject_revocation

    with _authority(config_path) as (_manifest, authority):
        ensure_tables(authority.engine)
        lifted = lift_subject_revocation(authority.engine, subject, issuer)
    if not lifted:
        fail(f"identity '{subject}' is not revoked", "nothing to restore")
    click.echo(f"Restored identity '{subject}': new tokens from its identity provider work again.")


@token.command(name="list")
@config_option
@click.option("--all", "include_expired", is_flag=True, help="Include expired tokens.")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def list_(config_path: Path, include_expired: bool, as_json: bool) -> None:
    """List issued tokens (ids and details, never the tokens themselves)."""
    with _authority(config_path) as (_manifest, authority):
        records = authority.list_tokens(include_expired=include_expired)
    now = datetime.now(UTC)
    if as_json:
        print_json([_as_json(r, now) for r in records])
        return
    if not records:
        more = "" if include_expired else " (add --all to include expired ones)"
        click.echo(f"No tokens{more}. Issue one with `lockgate token issue --subject NAME`.")
        return
    rows = [("ID", "SUBJECT", "KIND", "GROUPS", "SCOPE", "EXPIRES", "STATUS")]
    for r in records:
        rows.append(
            (
                r.jti,
                r.subject,
                r.kind.value,
                ",".join(r.groups) or "-",
                ",".join(r.scopes) if r.scopes is not None else "*",
                iso(r.expires_at),
                _status(r, now),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


COMMANDS: list[click.Command] = [token]
