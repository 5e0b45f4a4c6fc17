"""Shared by the `lockgate audit` and `lockgate replay` commands: opening the store, parsing
times, and formatting sessions and statements for people."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NoReturn

import click
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from lockgate.cli.common import fail, load
from lockgate.config.model import Manifest, parse_duration


def store_option(f: Any) -> Any:
    return click.option(
        "--store",
        "store_url",
        metavar="URL",
        help="Read this audit store (a SQLAlchemy URL) instead of the manifest's state store.",
    )(f)


def engine_for(config_path: Path, store_url: str | None) -> Engine:
    return open_store(config_path, store_url)[0]


def open_store(config_path: Path, store_url: str | None) -> tuple[Engine, Manifest | None]:
    """The audit store (and the manifest, unless --store was given), journal caught up."""
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
        return engine, manifest
    except (SQLAlchemyError, ImportError) as exc:
        fail(
            f"cannot open the audit store: {type(exc).__name__}", "check state.url in the manifest"
        )


def load_session(
    config_path: Path, store_url: str | None, session_id: str, find_hint: str
) -> dict[str, Any]:
    """One session (id or unique id prefix) with its commands, or exit with an error."""
    from lockgate.audit.query import get_session
    from lockgate.errors import LockgateError

    engine = engine_for(config_path, store_url)
    try:
        found = get_session(engine, session_id)
    except LockgateError as exc:
        fail(exc.message, exc.hint)
    except SQLAlchemyError as exc:
        read_failed(exc)
    finally:
        engine.dispose()
    if found is None:
        fail(f"no session {session_id!r}", find_hint)
    return found


def read_failed(exc: SQLAlchemyError) -> NoReturn:
    orig = getattr(exc, "orig", None)
    detail = str(orig).strip().splitlines()[0] if orig is not None and str(orig).strip() else ""
    fail(
        f"cannot read the audit store ({type(exc).__name__}{': ' + detail if detail else ''})",
        "is it a Lockgate state store? Run `lockgate serve` once to create its tables",
    )


def parse_since(value: str | None) -> datetime | None:
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


def when(at: datetime | None) -> str:
    return "-" if at is None else at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def duration_text(ms: float | None) -> str:
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


def size_text(n: int | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{int(value)}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1000
    return f"{n}B"


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    click.secho(
        "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip(), bold=True
    )
    for r in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def jsonable(obj: Any) -> Any:
    if isinstance(obj, datetime):
        return obj.isoformat()
    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    return obj


def show_command(c: dict[str, Any], live: bool) -> None:
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
        parts.append(duration_text(c["duration_ms"]))
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
