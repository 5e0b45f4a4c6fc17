"""`lockgate audit`: read who connected, what they ran, and who was turned away."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from sqlalchemy.exc import SQLAlchemyError

from lockgate.cli.audit_format import (
    duration_text,
    engine_for,
    jsonable,
    load_session,
    parse_since,
    print_table,
    read_failed,
    show_command,
    size_text,
    store_option,
    when,
)
from lockgate.cli.audit_trail import AUDIT_COMMANDS, replay_cmd
from lockgate.cli.common import config_option, print_json

_NO_SESSIONS = "no sessions recorded yet; connect through the gateway first"
_NO_MATCH = "no sessions match these filters; widen them (e.g. a longer --since) or drop some"


def _ended(s: dict[str, Any]) -> str:
    if s["live"]:
        return "live"
    reason = str(s["end_reason"] or "ended").replace("_", " ")
    return f"{reason}: {s['error']}" if s.get("error") else reason


def _session_row(s: dict[str, Any]) -> list[str]:
    return [
        s["id"][:8],
        s["subject"],
        s["resource"],
        s["client_addr"],
        when(s["started_at"]),
        duration_text(s["duration_ms"]),
        str(s["statements"]),
        size_text(s["bytes_from_client"]),
        size_text(s["bytes_to_client"]),
        _ended(s),
    ]


def _show_header(s: dict[str, Any]) -> None:
    groups = ", ".join(s["groups"]) or "none"
    click.secho(f"session {s['id']}", bold=True)
    click.echo(
        f"  subject   {s['subject']} ({s['principal_kind']}; groups: {groups}; "
        f"issuer {s['issuer']})"
    )
    via = f"{s['protocol']} from {s['client_addr']}"
    extras = [f"user {s['user_name']}"] if s["user_name"] else []
    if s["application_name"]:
        extras.append(f"app {s['application_name']}")
    click.echo(
        f"  resource  {s['resource']} via {via}" + (f" ({', '.join(extras)})" if extras else "")
    )
    click.echo(f"  started   {when(s['started_at'])} UTC")
    if s["live"]:
        click.echo("  ended     live (still connected)")
    else:
        click.echo(
            f"  ended     {when(s['ended_at'])} UTC "
            f"after {duration_text(s['duration_ms'])} ({_ended(s)})"
        )
        click.echo(
            f"  traffic   {size_text(s['bytes_from_client'])} from client, "
            f"{size_text(s['bytes_to_client'])} to client"
        )


# ---------------------------------------------------------------------- commands


@click.group("audit")
def audit() -> None:
    """Read the audit trail: sessions, their statements, refused connections."""


@audit.command("sessions")
@config_option
@store_option
@click.option("--subject", help="Only sessions of this subject.")
@click.option("--resource", help="Only sessions to this resource.")
@click.option("--since", "since_text", metavar="1h|ISO", help="Only sessions started since then.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(min=1))
@click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")
def sessions_cmd(
    config_path: Path,
    store_url: str | None,
    subject: str | None,
    resource: str | None,
    since_text: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """List recent sessions, newest first."""
    from lockgate.audit.query import list_sessions

    since = parse_since(since_text)
    engine = engine_for(config_path, store_url)
    try:
        found = list_sessions(engine, subject=subject, resource=resource, since=since, limit=limit)
    except SQLAlchemyError as exc:
        read_failed(exc)
    finally:
        engine.dispose()
    if as_json:
        print_json(jsonable(found))
        return
    if not found:
        filtered = subject or resource or since
        click.echo(_NO_MATCH if filtered else _NO_SESSIONS)
        return
    headers = [
        "ID",
        "SUBJECT",
        "RESOURCE",
        "CLIENT",
        "STARTED (UTC)",
        "DURATION",
        "STMTS",
        "IN",
        "OUT",
        "ENDED",
    ]
    print_table(headers, [_session_row(s) for s in found])
    click.echo(
        f"\n{len(found)} session(s); `lockgate audit show ID` shows one session's statements"
    )


@audit.command("show")
@config_option
@store_option
@click.argument("session_id", metavar="SESSION")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")
def show_cmd(config_path: Path, store_url: str | None, session_id: str, as_json: bool) -> None:
    """Show one session (id or unique id prefix) and the statements it ran."""
    found = load_session(
        config_path, store_url, session_id, "list sessions with `lockgate audit sessions`"
    )
    if as_json:
        print_json(jsonable(found))
        return
    _show_header(found)
    cmds = found["commands"]
    click.echo()
    if not cmds:
        click.echo("  no statements recorded in this session")
        return
    click.echo(f"  {len(cmds)} statement(s), times in UTC:")
    for c in cmds:
        show_command(c, found["live"])


@audit.command("refusals")
@config_option
@store_option
@click.option("--limit", default=50, show_default=True, type=click.IntRange(min=1))
@click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")
def refusals_cmd(config_path: Path, store_url: str | None, limit: int, as_json: bool) -> None:
    """List recently refused connections, newest first."""
    from lockgate.audit.query import list_refusals

    engine = engine_for(config_path, store_url)
    try:
        found = list_refusals(engine, limit=limit)
    except SQLAlchemyError as exc:
        read_failed(exc)
    finally:
        engine.dispose()
    if as_json:
        print_json(jsonable(found))
        return
    if not found:
        click.echo("no refused connections recorded")
        return
    rows = [
        [
            when(r["at"]),
            r["client_addr"],
            r["protocol"],
            r["resource"],
            r["subject"] or "-",
            r["code"],
            r["reason"],
        ]
        for r in found
    ]
    print_table(["AT (UTC)", "CLIENT", "PROTOCOL", "RESOURCE", "SUBJECT", "CODE", "REASON"], rows)


for _command in AUDIT_COMMANDS:
    audit.add_command(_command)

COMMANDS: list[click.Command] = [audit, replay_cmd]
