"""What every `lockgate` command shares: the -c option, manifest loading, friendly failure."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from lockgate.config.model import Manifest
from lockgate.errors import LockgateError

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_CONFIG = "lockgate.yaml"


def config_option(f: F) -> F:
    """Add `-c/--config PATH` (default: $LOCKGATE_CONFIG or ./lockgate.yaml)."""
    return click.option(
        "-c",
        "--config",
        "config_path",
        type=click.Path(dir_okay=False, path_type=Path),
        default=lambda: os.environ.get("LOCKGATE_CONFIG", DEFAULT_CONFIG),
        show_default="$LOCKGATE_CONFIG or ./lockgate.yaml",
        help="The manifest to act on.",
    )(f)


def fail(message: str, hint: str = "") -> NoReturn:
    """Print an error (and what to do next) to stderr and exit 1."""
    click.secho(f"error: {message}", fg="red", err=True)
    if hint:
        click.echo(f"hint: {hint}", err=True)
    sys.exit(1)


def load(config_path: Path) -> Manifest:
    """Load and validate the manifest or exit with its validation errors."""
    from lockgate.config.loader import load_manifest

    if not config_path.exists():
        fail(
            f"no manifest at {config_path}",
            "pass one with -c PATH, or run `lockgate demo` to create lockgate-demo/lockgate.yaml",
        )
    try:
        return load_manifest(config_path)
    except LockgateError as exc:
        fail(exc.message, exc.hint)


def print_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, default=str, sort_keys=False))
