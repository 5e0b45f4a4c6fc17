"""`lockgate secret`: store, list and delete upstream credentials in the encrypted store.

Values are read from stdin or a hidden prompt, never from the command line (where they would
land in shell history and the process list), and are never printed.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from lockgate.cli.common import config_option, fail, load, print_json
from lockgate.config.model import Manifest
from lockgate.errors import SecretError
from lockgate.secrets.refs import parse_ref
from lockgate.secrets.store import SecretStore, check_name
from lockgate.store import open_engine


@click.group()
def secret() -> None:
    """Manage upstream credentials in the encrypted secret store (referenced as store:NAME)."""


def _open(config_path: Path) -> tuple[Manifest, SecretStore]:
    manifest = load(config_path)
    engine = open_engine(manifest.state_url)
    return manifest, SecretStore.for_manifest(manifest, engine)


def _referenced_by(manifest: Manifest, name: str) -> list[str]:
    """Names of resources whose password is `store:NAME`."""
    out = []
    for res in manifest.resources:
        ref = res.upstream.password
        if ref is None:
            continue
        try:
            parsed = parse_ref(ref)
        except SecretError:
            continue
        if parsed.kind == "store" and parsed.target == name:
            out.append(res.name)
    return out


def _read_value(name: str) -> str:
    if not sys.stdin.isatty():
        value = sys.stdin.read()
        # `echo pw | lockgate secret set` adds one newline that is not part of the secret.
        if value.endswith("\r\n"):
            value = value[:-2]
        elif value.endswith("\n"):
            value = value[:-1]
        return value
    value = click.prompt(
        f"Value for {name}",
        hide_input=True,
        confirmation_prompt="Repeat the value",
        prompt_suffix=": ",
    )
    return str(value)


@secret.command("set", context_settings={"allow_extra_args": True})
@click.argument("name")
@config_option
@click.pass_context
def set_secret(ctx: click.Context, name: str, config_path: Path) -> None:
    """Store NAME's value, read from stdin or a hidden prompt (never an argument).

    \b
    Examples:
      lockgate secret set orders-pw -c lockgate.yaml          (prompts, hidden)
      printf %s "$PW" | lockgate secret set orders-pw -c lockgate.yaml
    """
    if ctx.args:
        # Deliberately not echoed: the extra argument is probably the secret itself.
        fail(
            "secret values are never taken as arguments (they would stay in shell history "
            "and the process list); nothing stored",
            f"run `lockgate secret set {name}` to be prompted, or pipe the value in on stdin",
        )
    try:
        check_name(name)
    except SecretError as exc:
        fail(exc.message)
    manifest, store = _open(config_path)
    value = _read_value(name)
    if value == "":
        fail("the value is empty; nothing stored", "pipe the value in, or type it at the prompt")
    try:
        store.set(name, value)
    except SecretError as exc:
        fail(exc.message, exc.hint)
    click.secho(
        f"✓ stored secret {name!r} (encrypted with the key in {store.key_source})", fg="green"
    )
    if store.key_created:
        click.echo(
            f"A new key was created at {store.key_path}. Back it up: without it the stored "
            "secrets cannot be read."
        )
    users = _referenced_by(manifest, name)
    if users:
        click.echo(f"Used by: {', '.join(users)}")
    else:
        click.echo(f"Reference it in the manifest as:  password: store:{name}")


@secret.command("list")
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
def list_secrets(config_path: Path, as_json: bool) -> None:
    """List stored secret names and when each was last set (never the values)."""
    manifest, store = _open(config_path)
    entries = store.names()
    if as_json:
        print_json(
            [
                {
                    "name": name,
                    "updated_at": updated.isoformat(),
                    "used_by": _referenced_by(manifest, name),
                }
                for name, updated in entries
            ]
        )
        return
    if not entries:
        click.echo("No secrets stored yet. Add one with: lockgate secret set NAME -c FILE")
        return
    width = max(len("NAME"), *(len(name) for name, _ in entries))
    click.echo(f"{'NAME':<{width}}  {'UPDATED (UTC)':<19}  USED BY")
    for name, updated in entries:
        users = ", ".join(_referenced_by(manifest, name)) or "-"
        click.echo(f"{name:<{width}}  {updated:%Y-%m-%d %H:%M:%S}  {users}")


@secret.command("delete")
@click.argument("name")
@config_option
@click.option("--force", is_flag=True, help="Delete even if a resource still references it.")
def delete_secret(name: str, config_path: Path, force: bool) -> None:
    """Delete the stored secret NAME."""
    manifest, store = _open(config_path)
    users = _referenced_by(manifest, name)
    if users and not force:
        fail(
            f"secret {name!r} is still used by {', '.join(users)}",
            "change those resources' password first, or pass --force",
        )
    if not store.delete(name):
        fail(f"no stored secret named {name!r}", "`lockgate secret list` shows what is stored")
    click.secho(f"✓ deleted secret {name!r}", fg="green")


COMMANDS: list[click.Command] = [secret]
