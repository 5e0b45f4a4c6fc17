"""`lockgate check`: validate a manifest and point out what deserves a human's attention."""

from __future__ import annotations

import ipaddress
import os
import sys
from pathlib import Path

import click

from lockgate.cli.common import config_option
from lockgate.config.loader import load_manifest
from lockgate.config.model import Listener, Manifest, Resource
from lockgate.errors import ConfigError, SecretError
from lockgate.secrets.refs import parse_ref


@click.command()
@config_option
@click.option("--strict", is_flag=True, help="Exit 1 when there are warnings, too (for CI).")
def check(config_path: Path, strict: bool) -> None:
    """Validate a manifest: schema, cross-references, and risky settings."""
    if not config_path.exists():
        click.secho(f"✗ no manifest at {config_path}", fg="red", err=True)
        click.echo(
            "hint: pass one with -c PATH; examples/lockgate.yaml is a complete example", err=True
        )
        sys.exit(1)
    try:
        manifest = load_manifest(config_path)
    except ConfigError as exc:
        count = exc.message.count("\n") + 1
        noun = "problem" if count == 1 else "problems"
        click.secho(f"✗ {config_path} has {count} {noun}:", fg="red", err=True)
        for line in exc.message.splitlines():
            click.echo(f"  {line}", err=True)
        if exc.hint:
            click.echo(f"hint: {exc.hint}", err=True)
        sys.exit(1)

    click.secho(f"✓ {config_path} is valid: {summary(manifest)}", fg="green")
    found = warnings(manifest)
    for text in found:
        click.secho(f"warning: {text}", fg="yellow")
    if strict and found:
        sys.exit(1)


def summary(manifest: Manifest) -> str:
    """`1 listener, 2 resources, 3 access rules`."""
    return ", ".join(
        _count(n, what)
        for n, what in (
            (len(manifest.listeners), "listener"),
            (len(manifest.resources), "resource"),
            (len(manifest.access), "access rule"),
        )
    )


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def warnings(manifest: Manifest) -> list[str]:
    """Valid but risky or surprising settings, each with what to do about it."""
    out: list[str] = []
    if not manifest.listeners:
        out.append("no listeners: clients have nowhere to connect; add one under listeners:")
    if not manifest.resources:
        out.append("no resources: there is nothing to reach; add one under resources:")
    for i, lst in enumerate(manifest.listeners):
        where = f"listeners[{i}] ({lst.name}, {lst.address})"
        if not isinstance(lst, Listener):
            continue  # SSH listeners need no TLS: SSH encrypts and has its own host key
        if not lst.tls.enabled:
            exposure = "" if _is_loopback(lst.host) else " over the network"
            out.append(
                f"{where}: TLS is disabled, so clients' tokens travel in clear text{exposure}; "
                "set tls.enabled: true"
            )
        elif lst.tls.cert is None:
            out.append(
                f"{where}: no tls.cert given, so a self-signed certificate will be generated; "
                "clients can encrypt but not verify the gateway (sslmode=require, not verify-full)"
            )
        for key in ("cert", "key"):
            p = getattr(lst.tls, key)
            if lst.tls.enabled and p is not None and not manifest.path(p).is_file():
                out.append(f"{where}: tls.{key} file not found: {manifest.path(p)}")

    for i, res in enumerate(manifest.resources):
        where = f"resources[{i}] ({res.name})"
        if not isinstance(res, Resource):
            if not _reachable(manifest, res.name):
                out.append(
                    f"{where}: no access rule lets anyone reach it; add one under access: "
                    f"with resources: [{res.name}] and subjects or groups"
                )
            continue
        up = res.upstream
        mode = up.tls.mode
        if mode in ("disable", "prefer", "require") and not _is_loopback(up.host):
            what = {
                "disable": "is not encrypted",
                "prefer": "may fall back to no encryption and the server is not verified",
                "require": "is encrypted but the server's identity is not verified",
            }[mode]
            out.append(
                f"{where}: upstream.tls.mode is {mode!r}: the connection to {up.host} {what}; "
                "use verify-full with a ca"
            )
        if up.tls.ca is not None and not manifest.path(up.tls.ca).is_file():
            out.append(f"{where}: upstream.tls.ca file not found: {manifest.path(up.tls.ca)}")
        if up.password is not None:
            out.extend(f"{where}: {w}" for w in _reference_warnings(up.password, manifest))
        if not _reachable(manifest, res.name):
            out.append(
                f"{where}: no access rule lets anyone reach it; add one under access: "
                f"with resources: [{res.name}] and subjects or groups"
            )

    for i, rule in enumerate(manifest.access):
        if not rule.subjects and not rule.groups:
            out.append(
                f"access[{i}] ({rule.name}): names no subjects and no groups, so it matches nobody"
            )
    return out


def _reachable(manifest: Manifest, resource: str) -> bool:
    return any(
        (rule.subjects or rule.groups) and ("*" in rule.resources or resource in rule.resources)
        for rule in manifest.access
    )


def _reference_warnings(ref: str, manifest: Manifest) -> list[str]:
    try:
        parsed = parse_ref(ref)
    except SecretError:
        return []  # the loader already refused it
    if parsed.kind == "env" and parsed.target not in os.environ:
        return [
            f"upstream.password: {parsed} is not set in this shell "
            "(fine if it is set where the gateway runs)"
        ]
    if parsed.kind == "file":
        path = manifest.path(Path(parsed.target).expanduser())
        if not path.is_file():
            return [f"upstream.password: {parsed}: file not found: {path}"]
    return []


def _is_loopback(host: str) -> bool:
    if host == "localhost" or host.startswith("/"):  # a Unix socket directory
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


COMMANDS: list[click.Command] = [check]
