"""`lockgate login`, `logout`, `env` and `psql`: people log in once, then just connect."""

from __future__ import annotations

import os
import shlex
import shutil
import sys
import webbrowser
from datetime import UTC, datetime
from pathlib import Path

import click

from lockgate.cli.common import config_option, fail, load
from lockgate.config.model import Listener, Manifest, OIDCIssuer
from lockgate.errors import LockgateError
from lockgate.identity import credentials as store
from lockgate.identity.login import (
    DEFAULT_SCOPES,
    AuthRequest,
    CallbackListener,
    Client,
    Provider,
    TokenSet,
    authorization_url,
    code_from_callback,
    discover,
    exchange_code,
    id_token_claims,
    poll_device,
    start_device,
)


def _manifest(ctx: click.Context, config_path: Path) -> Manifest | None:
    """The manifest when there is one; only an explicitly named missing one is an error."""
    source = ctx.get_parameter_source("config_path")
    if not config_path.exists() and source is click.core.ParameterSource.DEFAULT:
        return None
    return load(config_path)


def _secret_resolver(manifest: Manifest | None) -> store.SecretResolver:
    from lockgate.secrets.refs import resolve_secret

    def resolve(ref: str) -> str:
        return resolve_secret(ref, manifest or Manifest(), None)

    return resolve


def _issuer_entry(manifest: Manifest | None, issuer: str | None) -> OIDCIssuer | None:
    if manifest is None:
        return None
    entries = [i for i in manifest.identity.oidc if issuer is None or i.issuer == issuer]
    if issuer is None:
        entries = [i for i in entries if i.client_id is not None]
        if len(entries) > 1:
            fail(
                "the manifest trusts several issuers people can log in with",
                "name one with --issuer: " + ", ".join(i.issuer for i in entries),
            )
    return entries[0] if entries else None


def _when(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@click.command()
@config_option
@click.option("--issuer", help="The OpenID provider (default: the manifest's, or the only one).")
@click.option("--client-id", help="The CLI's client id at the provider (default: manifest).")
@click.option(
    "--client-secret",
    "client_secret_ref",
    help="A reference to the client secret, env:NAME or file:PATH (only if the client has one).",
)
@click.option("--scope", "scopes", multiple=True, help="Scopes to ask for (default: manifest).")
@click.option("--no-browser", is_flag=True, help="Print the login URL instead of opening it.")
@click.option("--device", is_flag=True, help="Use the device flow (log in on another device).")
@click.option("--timeout", default=300.0, show_default=True, help="Seconds to wait for you.")
@click.pass_context
def login(
    ctx: click.Context,
    config_path: Path,
    issuer: str | None,
    client_id: str | None,
    client_secret_ref: str | None,
    scopes: tuple[str, ...],
    no_browser: bool,
    device: bool,
    timeout: float,
) -> None:
    """Log in at your identity provider; the token is kept for `lockgate env` and `psql`."""
    manifest = _manifest(ctx, config_path)
    entry = _issuer_entry(manifest, issuer)
    issuer = issuer or (entry.issuer if entry else None)
    client_id = client_id or (entry.client_id if entry else None)
    if issuer is None or client_id is None:
        fail(
            "which identity provider? no issuer with a client_id is known here",
            "pass --issuer URL --client-id ID, or -c a manifest whose identity.oidc entry "
            "has client_id",
        )
    if client_secret_ref is None and entry is not None:
        client_secret_ref = entry.client_secret
    if client_secret_ref is not None and client_secret_ref.startswith("file:"):
        # Stored for later refreshes, which run from any folder: make the path absolute.
        where = Path(client_secret_ref[len("file:") :]).expanduser()
        base = manifest.base_dir if manifest is not None else Path.cwd()
        client_secret_ref = f"file:{(base / where).resolve()}"
    if entry is not None and client_id not in entry.audiences:
        click.secho(
            f"warning: the manifest's audiences for {issuer} do not include {client_id!r}; "
            "the gateway will refuse these ID tokens (their audience is the client id)",
            fg="yellow",
            err=True,
        )
    if not scopes:
        scopes = tuple(entry.scopes) if entry else DEFAULT_SCOPES
    try:
        secret = _secret_resolver(manifest)(client_secret_ref) if client_secret_ref else None
        client = Client(client_id, secret, tuple(scopes))
        provider = discover(issuer, timeout=entry.http_timeout if entry else 10.0)
        if device:
            tokens = _device_login(provider, client, timeout, no_browser)
        else:
            tokens = _browser_login(provider, client, timeout, no_browser)
        saved = store.remember(
            store.StoredLogin(
                issuer=issuer,
                client_id=client_id,
                token_endpoint=provider.token_endpoint,
                id_token=tokens.id_token,
                refresh_token=tokens.refresh_token,
                expires_at=tokens.expires_at,
                client_secret_ref=client_secret_ref,
                scopes=tuple(scopes),
            )
        )
    except LockgateError as exc:
        fail(exc.message, exc.hint)
    claims = id_token_claims(tokens.id_token)
    who = claims.get("email") or claims.get("preferred_username") or claims.get("sub")
    renew = "renewed automatically" if tokens.refresh_token else "log in again after that"
    click.echo(f"Logged in to {issuer} as {who}.")
    click.echo(f"The token is valid until {_when(tokens.expires_at)} ({renew}); kept in {saved}.")
    click.echo('Next: `lockgate psql RESOURCE` or `eval "$(lockgate env RESOURCE)"`.')


def _browser_login(
    provider: Provider, client: Client, timeout: float, no_browser: bool
) -> TokenSet:
    listener = CallbackListener()
    request = AuthRequest.new(listener.redirect_uri)
    url = authorization_url(provider, client, request)
    opened = False
    if not no_browser:
        opened = webbrowser.open(url)
    if opened:
        click.echo(
            "Your browser has been opened to log in. If it did not, open this URL:", err=True
        )
    else:
        click.echo("Open this URL in a browser on this machine to log in:", err=True)
    click.echo(url, err=True)
    target = listener.wait(timeout)
    code = code_from_callback(target, request)
    return exchange_code(provider, client, code, request)


def _device_login(provider: Provider, client: Client, timeout: float, no_browser: bool) -> TokenSet:
    grant = start_device(provider, client)
    click.echo(
        f"To log in, open {grant.verification_uri} on any device and enter the code "
        f"{grant.user_code}",
        err=True,
    )
    if grant.verification_uri_complete and not no_browser:
        webbrowser.open(grant.verification_uri_complete)
    return poll_device(provider, client, grant, timeout=timeout)


@click.command()
@click.option("--issuer", help="Log out of this issuer (default: the latest login).")
@click.option("--all", "everything", is_flag=True, help="Remove every stored login.")
def logout(issuer: str | None, everything: bool) -> None:
    """Remove stored tokens from this machine."""
    try:
        removed = store.forget(issuer, everything=everything)
    except LockgateError as exc:
        fail(exc.message, exc.hint)
    if not removed:
        click.echo("Not logged in; nothing to remove.")
        return
    for name in removed:
        click.echo(f"Logged out of {name} (stored tokens removed).")


def _gateway_address(manifest: Manifest | None, gateway: str | None) -> tuple[str, int]:
    if gateway is not None:
        host, sep, port = gateway.rpartition(":")
        if not sep or not host or not port.isdigit():
            fail(
                f"--gateway expects HOST:PORT, got {gateway!r}",
                "e.g. --gateway db.example.com:6432",
            )
        return host.strip("[]"), int(port)
    listeners = [x for x in manifest.listeners if isinstance(x, Listener)] if manifest else []
    if not listeners:
        fail(
            "where is the gateway? no manifest with a PostgreSQL listener here",
            "pass --gateway HOST:PORT, or -c the gateway's manifest",
        )
    listener = listeners[0]
    host = listener.host
    if host in ("0.0.0.0", "::", ""):
        host = "localhost"
    return host, listener.port


def connection_env(
    ctx: click.Context,
    resource: str,
    config_path: Path,
    gateway: str | None,
    issuer: str | None,
    user: str | None,
) -> dict[str, str]:
    """The libpq variables that reach `resource` through the gateway with the stored login."""
    manifest = _manifest(ctx, config_path)
    if manifest is not None and manifest.resource(resource) is None:
        known = ", ".join(r.name for r in manifest.resources) or "none"
        fail(f"no PostgreSQL resource '{resource}' in {config_path}", f"resources: {known}")
    host, port = _gateway_address(manifest, gateway)
    try:
        _, token = store.current_token(issuer, resolve_secret=_secret_resolver(manifest))
    except LockgateError as exc:
        fail(exc.message, exc.hint)
    if user is None:
        claims = id_token_claims(token)
        found = claims.get("preferred_username") or claims.get("email") or claims.get("sub")
        user = str(found or "lockgate")
    return {
        "PGHOST": host,
        "PGPORT": str(port),
        "PGDATABASE": resource,
        "PGUSER": user,
        "PGPASSWORD": token,
        "PGSSLMODE": "require",
    }


def _connection_options(f: click.decorators.FC) -> click.decorators.FC:
    f = click.option("--user", help="PGUSER (default: your name from the token).")(f)
    f = click.option("--issuer", help="Use this issuer's login (default: the latest).")(f)
    f = click.option("--gateway", help="The gateway as HOST:PORT (default: the manifest's).")(f)
    return config_option(f)


@click.command("env")
@click.argument("resource")
@_connection_options
@click.pass_context
def env_command(
    ctx: click.Context,
    resource: str,
    config_path: Path,
    gateway: str | None,
    issuer: str | None,
    user: str | None,
) -> None:
    """Print `export PG...` lines for RESOURCE: `eval "$(lockgate env RESOURCE)"`."""
    variables = connection_env(ctx, resource, config_path, gateway, issuer, user)
    click.echo("export " + " ".join(f"{k}={shlex.quote(v)}" for k, v in variables.items()))


@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("resource")
@click.argument("psql_args", nargs=-1, type=click.UNPROCESSED)
@_connection_options
@click.pass_context
def psql(
    ctx: click.Context,
    resource: str,
    psql_args: tuple[str, ...],
    config_path: Path,
    gateway: str | None,
    issuer: str | None,
    user: str | None,
) -> None:
    """Run psql on RESOURCE through the gateway (`lockgate psql db -- -c 'SELECT 1'`)."""
    variables = connection_env(ctx, resource, config_path, gateway, issuer, user)
    program = shutil.which("psql")
    if program is None:
        fail("psql is not installed here", "install the PostgreSQL client (e.g. postgresql-client)")
    sys.stdout.flush()
    # The token goes in the environment, never on the command line (visible in `ps`).
    os.execve(program, ["psql", *psql_args], {**os.environ, **variables})


COMMANDS: list[click.Command] = [login, logout, env_command, psql]
