"""`lockgate audit`: read who connected, what they ran, and who was turned away."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NoReturn

import click
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from lockgate.cli.common import config_option, fail, load, print_json
from lockgate.config.model import parse_duration
from lockgate.errors import LockgateError

_NO_SESSIONS = "no sessions recorded yet; connect through the gateway first"
_NO_MATCH = "no sessions match these filters; widen them (e.g. a longer --since) or drop some"


def _store_option(f: Any) -> Any:
    return click.option(
        "--store",
        "store_url",
        metavar="URL",
        help="Read this audit store (a SQLAlchemy URL) instead of the manifest's state store.",
    )(f)


def _engine(config_path: Path, store_url: str | None) -> Engine:
    from lockgate.store import open_engine

    manifest = None if store_url else load(config_path)
    url = store_url or (manifest.state_url if manifest else "")
    if url.startswith("sqlite:///") and not url.endswith(":memory:"):
        path = Path(url[len("sqlite:///") :])
        if not path.exists():
            fail(
                f"no audit store at {path} yet",
                "start the gateway (`lockgate serve`) or `lockgate demo`, "
                "then connect through it; or point --store / -c at the right place",
            )
    try:
        engine = open_engine(url, create=False)
        if manifest is not None:
            # Records a stopped gateway left in its journal become visible here.
            from lockgate.audit.ingest import catch_up

            catch_up(engine, manifest.state_dir / "journal")
        return engine
    except (SQLAlchemyError, ImportError) as exc:
        fail(
            f"cannot open the audit store: {type(exc).__name__}", "check state.url in the manifest"
        )


def _read_failed(exc: SQLAlchemyError) -> NoReturn:
    orig = getattr(exc, "orig", None)
    detail = str(orig).strip().splitlines()[0] if orig is not None and str(orig).strip() else ""
    fail(
        f"cannot read the audit store ({type(exc).__name__}{': ' + detail if detail else ''})",
        "is it a Lockgate state store? Run `lockgate serve` once to create its tables",
    )


def _since(value: str | None) -> datetime | None:
    if value is None:
        return None
    text = value.strip()
    if re.fullmatch(r"\d+[smhd]", text):
        return datetime.now(UTC) - timedelta(seconds=parse_duration(text))
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(
            f"expected a duration such as 30m, 1h, 7d or a time such as 2024-05-01T12:00, "
            f"got {value!r}"
        ) from None
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at


# ---------------------------------------------------------------------- formatting


def _when(at: datetime | None) -> str:
    return "-" if at is None else at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _duration(ms: float | None) -> str:
    if ms is None:
        return "live"
    if ms < 1000:
        return f"{ms:.1f}ms" if ms < 10 else f"{ms:.0f}ms"
    s = ms / 1000
    if s < 60:
        return f"{s:.1f}s"
    m, sec = divmod(int(s), 60)
    if m < 60:
        return f"{m}m{sec:02d}s"
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m"


def _bytes(n: int | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{int(value)}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1000
    return f"{n}B"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    click.secho(
        "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip(), bold=True
    )
    for r in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, datetime):
        return obj.isoformat()
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    return obj


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
        _when(s["started_at"]),
        _duration(s["duration_ms"]),
        str(s["statements"]),
        _bytes(s["bytes_from_client"]),
        _bytes(s["bytes_to_client"]),
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
    click.echo(f"  started   {_when(s['started_at'])} UTC")
    if s["live"]:
        click.echo("  ended     live (still connected)")
    else:
        click.echo(
            f"  ended     {_when(s['ended_at'])} UTC "
            f"after {_duration(s['duration_ms'])} ({_ended(s)})"
        )
        click.echo(
            f"  traffic   {_bytes(s['bytes_from_client'])} from client, "
            f"{_bytes(s['bytes_to_client'])} to client"
        )


def _show_command(c: dict[str, Any], live: bool) -> None:
    decision = c["decision"]
    if c["rule"]:
        decision += f" by {c['rule']}"
    parts = [f"#{c['seq']}", c["started_at"].astimezone(UTC).strftime("%H:%M:%S.%f")[:-3], decision]
    if c["kind"]:
        parts.append(c["kind"])
    if c["finished_at"] is None:
        if c["decision"] != "allow":
            parts.append("not forwarded")
        else:
            parts.append("running" if live else "no result recorded")
    else:
        if c["rows"] is not None:
            parts.append(f"{c['rows']} row" + ("" if c["rows"] == 1 else "s"))
        parts.append(_duration(c["duration_ms"]))
        if c["error_code"] or c["error_message"]:
            parts.append(f"error {c['error_code'] or ''} {c['error_message'] or ''}".rstrip())
    click.echo("  " + "  ".join(parts))
    if c["reason"]:
        click.echo(f"      reason: {c['reason']}")
    for line in c["text"].splitlines() or [""]:
        click.echo(f"      {line}")
    if c["params"]:
        shown = ", ".join(
            f"${i}=" + ("NULL" if p is None else repr(p)) for i, p in enumerate(c["params"], 1)
        )
        click.echo(f"      params: {shown}")


# ---------------------------------------------------------------------- commands


@click.group("audit")
def audit() -> None:
    """Read the audit trail: sessions, their statements, refused connections."""


@audit.command("sessions")
@config_option
@_store_option
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

    since = _since(since_text)
    engine = _engine(config_path, store_url)
    try:
        found = list_sessions(engine, subject=subject, resource=resource, since=since, limit=limit)
    except SQLAlchemyError as exc:
        _read_failed(exc)
    finally:
        engine.dispose()
    if as_json:
        print_json(_jsonable(found))
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
    _table(headers, [_session_row(s) for s in found])
    click.echo(
        f"\n{len(found)} session(s); `lockgate audit show ID` shows one session's statements"
    )


@audit.command("show")
@config_option
@_store_option
@click.argument("session_id", metavar="SESSION")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")
def show_cmd(config_path: Path, store_url: str | None, session_id: str, as_json: bool) -> None:
    """Show one session (id or unique id prefix) and the statements it ran."""
    from lockgate.audit.query import get_session

    engine = _engine(config_path, store_url)
    try:
        found = get_session(engine, session_id)
    except LockgateError as exc:
        fail(exc.message, exc.hint)
    except SQLAlchemyError as exc:
        _read_failed(exc)
    finally:
        engine.dispose()
    if found is None:
        fail(f"no session {session_id!r}", "list sessions with `lockgate audit sessions`")
    if as_json:
        print_json(_jsonable(found))
        return
    _show_header(found)
    cmds = found["commands"]
    click.echo()
    if not cmds:
        click.echo("  no statements recorded in this session")
        return
    click.echo(f"  {len(cmds)} statement(s), times in UTC:")
    for c in cmds:
        _show_command(c, found["live"])


@audit.command("refusals")
@config_option
@_store_option
@click.option("--limit", default=50, show_default=True, type=click.IntRange(min=1))
@click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")
def refusals_cmd(config_path: Path, store_url: str | None, limit: int, as_json: bool) -> None:
    """List recently refused connections, newest first."""
    from lockgate.audit.query import list_refusals

    engine = _engine(config_path, store_url)
    try:
        found = list_refusals(engine, limit=limit)
    except SQLAlchemyError as exc:
        _read_failed(exc)
    finally:
        engine.dispose()
    if as_json:
        print_json(_jsonable(found))
        return
    if not found:
        click.echo("no refused connections recorded")
        return
    rows = [
        [
            _when(r["at"]),
            r["client_addr"],
            r["protocol"],
            r["resource"],
            r["subject"] or "-",
            r["code"],
            r["reason"],
        ]
        for r in found
    ]
    _table(["AT (UTC)", "CLIENT", "PROTOCOL", "RESOURCE", "SUBJECT", "CODE", "REASON"], rows)


COMMANDS: list[click.Command] = [audit]
