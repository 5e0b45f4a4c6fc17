"""`lockgate serve`: run the gateway from a manifest."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from lockgate.cli.common import config_option, load


@click.command()
@config_option
@click.option("--workers", type=int, default=None, help="Worker processes (default: the manifest's; 0 = one per core).")
@click.option("--log-level", default="info", type=click.Choice(["debug", "info", "warning", "error"]), show_default=True)
def serve(config_path: Path, workers: int | None, log_level: str) -> None:
    """Run the gateway until Ctrl-C (SIGINT) or SIGTERM."""
    from lockgate.proxy.server import run_gateway

    logging.basicConfig(
        level=getattr(logging, log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    manifest = load(config_path)
    try:
        code = run_gateway(manifest, workers)
    except OSError as exc:
        click.secho(f"error: cannot start the gateway: {exc}", fg="red", err=True)
        click.echo("hint: is another process listening on that address? change `listeners[].address`", err=True)
        sys.exit(1)
    sys.exit(code)


COMMANDS: list[click.Command] = [serve]
