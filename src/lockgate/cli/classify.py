"""`lockgate classify RESOURCE`: suggest masking rules from samples of the resource's tables."""

from __future__ import annotations

import asyncio
from pathlib import Path

import click

from lockgate.cli.common import config_option, fail, load, print_json
from lockgate.config.model import Manifest, Resource
from lockgate.errors import LockgateError

_COLUMNS_SQL = """
SELECT n.nspname, c.relname, a.attname
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
JOIN pg_type t ON t.oid = a.atttypid
WHERE c.relkind IN ('r', 'p', 'm') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\\_%' AND (t.typcategory IN ('S', 'N', 'I') OR t.oid IN (114, 3802))
ORDER BY 1, 2, a.attnum
"""


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


async def _samples(
    manifest: Manifest, resource: Resource, password: str | None, rows: int
) -> list[tuple[str, str, str, list[str | None]]]:
    from lockgate.proxy.pg_catalog import simple_query
    from lockgate.proxy.pg_upstream import connect_upstream

    conn = await connect_upstream(
        resource,
        manifest,
        password,
        {"application_name": "lockgate-classify", "default_transaction_read_only": "on"},
    )
    ep = conn.endpoint
    try:
        by_table: dict[tuple[str, str], list[str]] = {}
        for schema, table, column in await simple_query(ep, _COLUMNS_SQL):
            by_table.setdefault((schema or "", table or ""), []).append(column or "")
        out: list[tuple[str, str, str, list[str | None]]] = []
        for (schema, table), columns in by_table.items():
            cols = ", ".join(f"{_ident(c)}::text" for c in columns)
            sql = f"SELECT {cols} FROM {_ident(schema)}.{_ident(table)} LIMIT {rows}"
            try:
                got = await simple_query(ep, sql)
            except RuntimeError as exc:
                click.echo(f"skipped {schema}.{table}: {exc}", err=True)
                continue
            for i, column in enumerate(columns):
                out.append((schema, table, column, [r[i] for r in got]))
        return out
    finally:
        ep.close()


@click.command()
@click.argument("resource_name", metavar="RESOURCE")
@click.option("--rows", default=200, show_default=True, help="Rows sampled per table.")
@click.option("--json", "as_json", is_flag=True, help="Print suggestions as JSON.")
@click.option(
    "--presidio/--no-presidio",
    default=True,
    show_default=True,
    help="Also run Microsoft Presidio's recognizers when it is installed.",
)
@config_option
def classify(
    resource_name: str, rows: int, as_json: bool, presidio: bool, config_path: Path
) -> None:
    """Sample RESOURCE's tables, detect personal data, print masking rules to paste."""
    from lockgate.masking.classify import as_yaml
    from lockgate.masking.classify import classify as run
    from lockgate.secrets.refs import resolve_secret
    from lockgate.secrets.store import SecretStore
    from lockgate.store import open_engine

    manifest = load(config_path)
    resource = manifest.resource(resource_name)
    if resource is None or getattr(resource, "type", "postgres") != "postgres":
        fail(f"no PostgreSQL resource named '{resource_name}'", "see `resources` in the manifest")
    try:
        password = None
        if resource.upstream.password is not None:
            store = SecretStore.for_manifest(manifest, open_engine(manifest.state_url))
            password = resolve_secret(resource.upstream.password, manifest, store)
        samples = asyncio.run(_samples(manifest, resource, password, rows))
    except LockgateError as exc:
        fail(exc.message, exc.hint)
    extra = None
    if presidio:
        from lockgate.masking import presidio as presidio_scanner

        extra = presidio_scanner.load()
        if extra is not None:
            click.echo("# Microsoft Presidio is installed: its recognizers vote too", err=True)
    suggestions = run(samples, extra)
    if as_json:
        print_json([
            {"column": f"{s.schema}.{s.table}.{s.column}", "kind": s.kind,
             "share": round(s.share, 3), "sampled": s.sampled, "strategy": s.strategy}
            for s in suggestions
        ])  # fmt: skip
        return
    if not suggestions:
        click.echo(f"No personal data found in {len(samples)} sampled columns of {resource_name}.")
        return
    click.echo(f"# {len(suggestions)} of {len(samples)} sampled columns look personal; paste into")
    click.echo("# the manifest and adjust (`lockgate check` validates it):")
    click.echo(as_yaml(resource_name, suggestions), nl=False)


COMMANDS: list[click.Command] = [classify]
