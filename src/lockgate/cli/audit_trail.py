"""`lockgate audit verify | search | purge | hold | release | holds` and `lockgate replay`."""

from __future__ import annotations

from datetime import UTC
from pathlib import Path
from typing import Any

import click
from sqlalchemy.exc import SQLAlchemyError

from lockgate.cli.audit_format import (
    duration_text,
    jsonable,
    load_session,
    open_store,
    parse_since,
    print_table,
    read_failed,
    show_command,
    store_option,
    when,
)
from lockgate.cli.common import config_option, fail, print_json
from lockgate.cli.replay_results import show_result
from lockgate.errors import LockgateError

_STATE_HINT = "or pass -c with the gateway's manifest (its state folder holds the audit key)"


@click.command("verify")
@config_option
@store_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")
def verify_cmd(config_path: Path, store_url: str | None, as_json: bool) -> None:
    """Check every audit chain: name the first altered, inserted or deleted record."""
    from lockgate.audit.verify import verify

    engine, manifest = open_store(config_path, store_url)
    try:
        report = verify(engine, manifest.state_dir if manifest else None)
    except SQLAlchemyError as exc:
        read_failed(exc)
    finally:
        engine.dispose()
    if as_json:
        print_json(report.as_dict())
    elif not report.chains and not report.unchained:
        click.echo("no audit chains yet: nothing recorded since chains were introduced")
    else:
        for c in report.chains:
            sealed = f"signed up to {c.sealed_seq}" if c.sealed_seq else "no signed checkpoint yet"
            purged = f", {c.purged} purged" if c.purged else ""
            status = "ok" if c.finding is None else "FAILED"
            click.echo(
                f"chain {c.name} (host {c.host}): {c.events} event(s){purged}, "
                f"{c.checkpoints} checkpoint(s), {sealed}: {status}"
            )
            if c.finding is not None:
                click.secho(
                    f"  position {c.finding.position}: {c.finding.problem}: {c.finding.detail}",
                    fg="red",
                )
        for f in report.unchained:
            click.secho(f"{f.problem}: {f.detail}", fg="red")
        events = sum(c.events for c in report.chains)
        if report.ok:
            click.echo(f"everything verifies: {len(report.chains)} chain(s), {events} event(s)")
    if not report.ok:
        raise SystemExit(1)


@click.command("search")
@config_option
@store_option
@click.argument("words", nargs=-1)
@click.option("--subject", "--identity", "subject", help="Only statements of this subject.")
@click.option("--group", help="Only statements of sessions whose identity is in this group.")
@click.option("--resource", help="Only statements on this resource.")
@click.option("--protocol", help="Only statements over this protocol (e.g. postgres).")
@click.option("--since", "since_text", metavar="1h|ISO", help="Only statements since then.")
@click.option("--until", "until_text", metavar="1h|ISO", help="Only statements before then.")
@click.option(
    "--decision",
    type=click.Choice(["allow", "deny", "review", "masked"]),
    help="What was decided; 'masked': statements whose results had cells masked.",
)
@click.option("--rule", help="Only statements decided by this rule.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(min=1))
@click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")
def search_cmd(
    config_path: Path,
    store_url: str | None,
    words: tuple[str, ...],
    subject: str | None,
    group: str | None,
    resource: str | None,
    protocol: str | None,
    since_text: str | None,
    until_text: str | None,
    decision: str | None,
    rule: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """Find statements: WORDS must all occur in the statement text (whole words)."""
    from lockgate.audit.search import SearchFilter, search

    f = SearchFilter(
        subject=subject,
        group=group,
        resource=resource,
        protocol=protocol,
        since=parse_since(since_text),
        until=parse_since(until_text),
        decision=decision,
        rule=rule,
        text=" ".join(words) or None,
        limit=limit,
    )
    engine, _ = open_store(config_path, store_url)
    try:
        found = search(engine, f)
    except SQLAlchemyError as exc:
        read_failed(exc)
    finally:
        engine.dispose()
    if as_json:
        print_json(jsonable(found))
        return
    if not found:
        click.echo("no statements match; widen the filters (e.g. a longer --since) or drop some")
        return
    rows = []
    for c in found:
        outcome = c["error_code"] or ("-" if c["rows"] is None else f"{c['rows']} rows")
        if c.get("masked_cells"):
            outcome += f", {c['masked_cells']} masked"
        text = " ".join(c["text"].split())
        rows.append(
            [
                f"{c['session_id'][:8]}#{c['seq']}",
                when(c["started_at"]),
                c["subject"],
                c["resource"],
                c["decision"] + (f" ({c['rule']})" if c["rule"] else ""),
                outcome,
                text if len(text) <= 60 else text[:57] + "...",
            ]
        )
    print_table(
        ["STATEMENT", "AT (UTC)", "SUBJECT", "RESOURCE", "DECISION", "RESULT", "TEXT"], rows
    )
    click.echo(f"\n{len(found)} statement(s); `lockgate replay SESSION` shows a session in full")


@click.command("purge")
@config_option
@click.option("--dry-run", is_flag=True, help="Only count what would be deleted.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")
def purge_cmd(config_path: Path, dry_run: bool, as_json: bool) -> None:
    """Delete sessions and refusals older than their retention (audit.retention)."""
    from lockgate.audit.retention import purge

    engine, manifest = open_store(config_path, None)
    assert manifest is not None
    policy = manifest.audit
    if policy.retention is None and not policy.resource_retention:
        fail(
            "no retention is configured: every record is kept",
            "set audit.retention (e.g. 365d) or audit.resource_retention in the manifest",
        )
    try:
        result = purge(
            engine,
            policy.retention_seconds,
            manifest.state_dir,
            dry_run=dry_run,
            resources=[r.name for r in manifest.resources],
        )
    except LockgateError as exc:
        fail(exc.message, exc.hint)
    except SQLAlchemyError as exc:
        read_failed(exc)
    finally:
        engine.dispose()
    if as_json:
        print_json({"dry_run": dry_run, **result.as_dict()})
        return
    verb = "would delete" if dry_run else "deleted"
    click.echo(
        f"{verb} {result.sessions} session(s) with {result.commands} statement(s) "
        f"and {result.refusals} refused connection(s)"
    )
    if result.held:
        click.echo(f"kept {result.held} expired session(s) under legal hold")
    if not dry_run and result.events:
        click.echo(
            f"sealed {result.events} chain event(s) with {result.seals} signed purge "
            "checkpoint(s); `lockgate audit verify` still verifies"
        )


@click.command("hold")
@config_option
@store_option
@click.argument("session_id", metavar="SESSION")
@click.option("--reason", required=True, help="Why (a case number, a request).")
def hold_cmd(config_path: Path, store_url: str | None, session_id: str, reason: str) -> None:
    """Keep a session past its retention (legal hold) until released."""
    from lockgate.audit.retention import hold

    engine, _ = open_store(config_path, store_url)
    try:
        sid = hold(engine, session_id, reason)
    except LockgateError as exc:
        fail(exc.message, exc.hint)
    finally:
        engine.dispose()
    click.echo(f"session {sid} is under legal hold; `lockgate audit release {sid[:8]}` lifts it")


@click.command("release")
@config_option
@store_option
@click.argument("session_id", metavar="SESSION")
def release_cmd(config_path: Path, store_url: str | None, session_id: str) -> None:
    """Lift a session's legal hold (retention applies again)."""
    from lockgate.audit.retention import release

    engine, _ = open_store(config_path, store_url)
    try:
        sid = release(engine, session_id)
    finally:
        engine.dispose()
    if sid is None:
        fail(f"no session under hold matches {session_id!r}", "list them: `lockgate audit holds`")
    click.echo(f"session {sid} is no longer under legal hold")


@click.command("holds")
@config_option
@store_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")
def holds_cmd(config_path: Path, store_url: str | None, as_json: bool) -> None:
    """List sessions under legal hold."""
    from lockgate.audit.retention import list_holds

    engine, _ = open_store(config_path, store_url)
    try:
        found = list_holds(engine)
    finally:
        engine.dispose()
    if as_json:
        print_json(jsonable(found))
    elif not found:
        click.echo("no session is under legal hold")
    else:
        rows = [[h["session_id"], when(h["held_at"]), h["held_by"], h["reason"]] for h in found]
        print_table(["SESSION", "SINCE (UTC)", "BY", "REASON"], rows)


@click.command("replay")
@config_option
@store_option
@click.argument("session_id", metavar="SESSION")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")
def replay_cmd(config_path: Path, store_url: str | None, session_id: str, as_json: bool) -> None:
    """Replay a session's statements in order: decision, parameters, rows returned, error."""
    found = load_session(
        config_path, store_url, session_id, "find one with `lockgate audit sessions` or `search`"
    )
    if as_json:
        from lockgate.cli.replay_results import result_json

        found["commands"] = [result_json(c) for c in found["commands"]]
        print_json(jsonable(found))
        return
    _replay(found)
    if found["protocol"] == "ssh":
        # The terminal output of its shells is in the recordings, not in the audit rows.
        click.echo(f"\nplay its shells with: lockgate ssh-replay {found['id']}")


def _replay(s: dict[str, Any]) -> None:
    groups = ", ".join(s["groups"]) or "no groups"
    click.secho(f"session {s['id']}", bold=True)
    click.echo(
        f"  {s['subject']} ({groups}) on {s['resource']} via {s['protocol']} from "
        f"{s['client_addr']}, {when(s['started_at'])} UTC, "
        + ("still live" if s["live"] else f"lasted {duration_text(s['duration_ms'])}")
    )
    cmds = s["commands"]
    if not cmds:
        click.echo("  no statements recorded")
        return
    start = s["started_at"]
    for c in cmds:
        offset = (c["started_at"] - start).total_seconds()
        click.echo()
        click.secho(
            f"[+{offset:.3f}s] {c['started_at'].astimezone(UTC).strftime('%H:%M:%S')}", dim=True
        )
        show_command(c, s["live"])
        show_result(c)
    click.echo(
        "\nresults are shown as the client received them (after masking), up to the "
        "resource's capture caps; `lockgate audit verify` checks the chain that covers them"
    )


AUDIT_COMMANDS = [verify_cmd, search_cmd, purge_cmd, hold_cmd, release_cmd, holds_cmd]
