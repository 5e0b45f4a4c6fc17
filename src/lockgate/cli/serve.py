"""`lockgate serve`: run the gateway from a manifest."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click
from sqlalchemy.exc import SQLAlchemyError

from lockgate.cli.common import config_option, fail, load
from lockgate.config.model import Manifest
from lockgate.errors import LockgateError


@click.command()
@config_option
@click.option(
    "--workers",
    type=int,
    default=None,
    help="Worker processes (default: the manifest's; 0 = one per core).",
)
@click.option(
    "--log-level",
    default="info",
    type=click.Choice(["debug", "info", "warning", "error"]),
    show_default=True,
)
def serve(config_path: Path, workers: int | None, log_level: str) -> None:
    """Run the gateway until Ctrl-C (SIGINT) or SIGTERM."""
    from lockgate.proxy.server import run_gateway

    logging.basicConfig(
        level=getattr(logging, log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    manifest = load(config_path)
    _check_schema(manifest, config_path)
    try:
        code = run_gateway(manifest, workers)
    except OSError as exc:
        click.secho(f"error: cannot start the gateway: {exc}", fg="red", err=True)
        click.echo(
            "hint: is another process listening on that address? change `listeners[].address`",
            err=True,
        )
        sys.exit(1)
    sys.exit(code)


def _check_schema(manifest: Manifest, config_path: Path) -> None:
    """Refuse to serve on a store whose schema is out of date (`lockgate migrate` fixes it)."""
    from lockgate import schema
    from lockgate.store import load_tables, open_engine

    load_tables()
    engine = open_engine(manifest.state_url, create=False)
    try:
        schema.check(engine, str(config_path))
    except LockgateError as exc:
        fail(exc.message, exc.hint)
    except SQLAlchemyError as exc:
        fail(f"cannot read the state store: {type(exc).__name__}", "check state.url")
    finally:
        engine.dispose()


@click.command()
@config_option
def migrate(config_path: Path) -> None:
    """Upgrade the state store's schema to this Lockgate's (stop the gateways first)."""
    from lockgate import schema
    from lockgate.store import load_tables, open_engine

    manifest = load(config_path)
    load_tables()
    engine = open_engine(manifest.state_url, create=False)
    try:
        before, after = schema.migrate(engine)
    except SQLAlchemyError as exc:
        fail(
            f"the migration failed: {type(exc).__name__}: {str(exc).splitlines()[0]}",
            "nothing was changed if the store supports transactional DDL (PostgreSQL, SQLite)",
        )
    finally:
        engine.dispose()
    if before == after:
        click.echo(f"the state store is up to date (revision {after})")
    elif before is None:
        click.echo(f"the state store was created at revision {after}")
    else:
        click.echo(f"the state store was upgraded from revision {before} to {after}")


COMMANDS: list[click.Command] = [serve, migrate]
