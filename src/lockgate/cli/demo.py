"""`lockgate demo`: an embedded PostgreSQL, a manifest, a token and the gateway, in one go."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from lockgate.cli.common import fail
from lockgate.errors import LockgateError


@click.command()
@click.option(
    "--dir",
    "demo_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("lockgate-demo"),
    show_default=True,
    help="Where the demo keeps its PostgreSQL data, manifest and state (reused if present).",
)
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=6432,
    show_default=True,
    help="Gateway port on 127.0.0.1 (the next free one is used if it is taken).",
)
def demo(demo_dir: Path, port: int) -> None:
    """Run a self-contained demo: seeded PostgreSQL + gateway + token, until Ctrl-C."""
    from lockgate.demo import run_demo

    def echo(text: str) -> None:
        click.echo(text)
        sys.stdout.flush()

    try:
        run_demo(demo_dir, port, echo)
    except KeyboardInterrupt:
        click.echo("Interrupted; everything the demo started is stopped.", err=True)
        sys.exit(130)
    except LockgateError as exc:
        fail(exc.message, exc.hint)
    except ImportError as exc:
        fail(
            f"a part of Lockgate the demo needs is missing ({exc.name or exc})",
            "reinstall Lockgate with `bash scripts/setup`",
        )
    except OSError as exc:
        fail(f"the demo failed: {exc}", f"check that {demo_dir} is writable")


COMMANDS: list[click.Command] = [demo]
