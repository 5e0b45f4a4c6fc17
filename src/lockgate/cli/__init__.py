"""The `lockgate` command line. Each command group lives in its own module."""

from __future__ import annotations

import importlib

import click

from lockgate import __version__

_COMMAND_MODULES = (
    "serve",
    "check",
    "token",
    "secret",
    "audit",
    "demo",
    "ssh",
    "classify",
    "policy",
    "login",
    "reviews",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="lockgate")
def main() -> None:
    """Lockgate: an identity-aware gateway for PostgreSQL and more."""


for _name in _COMMAND_MODULES:
    _module = importlib.import_module(f"lockgate.cli.{_name}")
    for _command in _module.COMMANDS:
        main.add_command(_command)
