"""`lockgate replay`: the captured result of a statement, as tables (decoded only here)."""

from __future__ import annotations

from typing import Any

import click

from lockgate.protocols.postgres.results import ResultSet, decode

_NULL = "NULL"


def result_sets(c: dict[str, Any]) -> list[ResultSet] | None:
    """The result sets captured for a command, None when none were kept or readable."""
    data = c.get("result_data")
    if data is None or c.get("result_format") != "pgwire":
        return None
    return decode(data)


def show_result(c: dict[str, Any]) -> None:
    """Print a command's captured result under it, with what was not kept."""
    if c.get("result_sha256") is None:
        return
    sets = result_sets(c)
    if sets is None:
        click.secho("      result: captured, but missing or unreadable in the store", fg="red")
        return
    for s in sets:
        click.echo()
        rows = [[_cell(v) for v in r] + [""] * (len(s.columns) - len(r)) for r in s.rows]
        if s.columns:
            _table(s.columns, rows)
        if s.tag:
            click.echo(f"      ({s.tag})")
    click.echo("      " + _kept(c))


def _table(headers: list[str], rows: list[list[str]]) -> None:
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    head = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    click.secho("      " + head.rstrip(), bold=True)
    for r in rows:
        line = "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False))
        click.echo("      " + line.rstrip())


def _kept(c: dict[str, Any]) -> str:
    rows = int(c.get("result_rows") or 0)
    dropped = c.get("result_rows_dropped")
    dropped_bytes = int(c.get("result_bytes_dropped") or 0)
    text = f"result: {rows} row" + ("" if rows == 1 else "s") + " kept"
    if dropped is None:
        text += f"; more not kept ({dropped_bytes} bytes, row count unknown)"
    elif dropped or dropped_bytes:
        text += f"; {dropped} row(s), {dropped_bytes} bytes not kept (capture caps)"
    else:
        text += " (all of it)"
    return text


def _cell(v: str | None) -> str:
    if v is None:
        return _NULL
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")


def result_json(c: dict[str, Any]) -> dict[str, Any]:
    """A command as `replay --json` prints it: the decoded result instead of its bytes."""
    out = {k: v for k, v in c.items() if k not in ("result_data", "result_format")}
    sets = result_sets(c)
    out["result"] = (
        None
        if sets is None
        else [{"columns": s.columns, "rows": s.rows, "tag": s.tag} for s in sets]
    )
    return out
