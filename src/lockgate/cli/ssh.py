"""`lockgate ssh-known-hosts`, `ssh-cert` and `ssh-replay`: keys, certificates, recordings."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import click
from sqlalchemy.exc import SQLAlchemyError

from lockgate.cli.common import config_option, fail, load, print_json
from lockgate.config.model import Manifest, parse_duration
from lockgate.config.ssh import SshListener, SshResource
from lockgate.errors import LockgateError
from lockgate.model import Principal

if TYPE_CHECKING:
    import asyncssh
    from sqlalchemy.engine import Engine


@click.command("ssh-known-hosts")
@config_option
@click.option("--fingerprint", is_flag=True, help="Print the SHA256 fingerprints instead.")
def ssh_known_hosts(config_path: Path, fingerprint: bool) -> None:
    """Print the gateway's SSH host keys as known_hosts lines.

    Append them to ~/.ssh/known_hosts (or pass -o UserKnownHostsFile=FILE) so that ssh,
    scp and sftp can verify the gateway. The key is generated on first use and kept in the
    state folder, so it stays the same across restarts.
    """
    from lockgate.proxy.ssh import ensure_host_key

    manifest = load(config_path)
    listeners = [lst for lst in manifest.listeners if isinstance(lst, SshListener)]
    if not listeners:
        fail(
            "the manifest has no SSH listener",
            "add one under listeners: with protocol: ssh and an address",
        )
    for lst in listeners:
        try:
            key = ensure_host_key(lst, manifest)
        except LockgateError as exc:
            fail(exc.message, exc.hint)
        if fingerprint:
            click.echo(f"{lst.address} {key.get_fingerprint('sha256')}")
            continue
        host = lst.host if lst.host not in ("0.0.0.0", "::", "") else "GATEWAY-HOST"
        where = host if lst.port == 22 else f"[{host}]:{lst.port}"
        public = key.export_public_key("openssh").decode().strip()
        click.echo(f"{where} {public}")


def _recordings(manifest: Manifest, session_id: str) -> tuple[str, Path]:
    from lockgate.audit.query import get_session
    from lockgate.proxy.ssh_recording import session_dir
    from lockgate.store import open_engine

    folder = session_dir(manifest.state_dir, session_id)
    if folder.is_dir():
        return session_id, folder
    try:
        found = get_session(open_engine(manifest.state_url), session_id)
    except LockgateError as exc:
        fail(exc.message, exc.hint)
    if found is None:
        fail(
            f"no session {session_id!r}",
            "list sessions with `lockgate audit sessions` and pass one id (or a unique prefix)",
        )
    sid = str(found["id"])
    folder = session_dir(manifest.state_dir, sid)
    if not folder.is_dir():
        fail(f"session {sid} has no SSH recordings", "only SSH sessions are recorded as files")
    return sid, folder


@click.command("ssh-replay")
@config_option
@click.argument("session")
@click.option("--seq", type=int, default=None, help="Which shell of the session (default: all).")
@click.option("--speed", type=float, default=1.0, show_default=True, help="Playback speed.")
@click.option(
    "--max-wait", type=float, default=2.0, show_default=True, help="Longest pause, in seconds."
)
@click.option("--no-wait", is_flag=True, help="Print the output at once, without timing.")
@click.option("--list", "list_only", is_flag=True, help="List the session's recordings.")
def ssh_replay(
    config_path: Path,
    session: str,
    seq: int | None,
    speed: float,
    max_wait: float,
    no_wait: bool,
    list_only: bool,
) -> None:
    """Play the interactive shells of an SSH session in this terminal.

    Recordings are asciicast v2 files (gzip) under STATE/recordings/SESSION/; any asciinema
    player plays them too. Exec and SFTP channels are raw byte logs: `--list` shows them.
    """
    from lockgate.proxy.ssh_recording import read_cast

    manifest = load(config_path)
    sid, folder = _recordings(manifest, session)
    if list_only:
        for summary in sorted(folder.glob("*.json"), key=lambda p: int(p.stem)):
            info = json.loads(summary.read_text())
            click.echo(f"{summary.stem}\t{info.get('kind', '?')}\t{info.get('status', '')}")
        return
    casts = sorted(folder.glob("*.cast.gz"), key=lambda p: int(p.name.split(".")[0]))
    if seq is not None:
        casts = [c for c in casts if c.name.split(".")[0] == str(seq)]
    if not casts:
        fail(
            f"session {sid} has no recorded shell" + (f" with seq {seq}" if seq else ""),
            "see what it recorded with `lockgate ssh-replay SESSION --list`",
        )
    out = sys.stdout
    for cast in casts:
        _header, events = read_cast(cast)
        last = 0.0
        for event in events:
            at, code, data = float(event[0]), event[1], event[2]
            if code != "o":
                continue
            if not no_wait and speed > 0:
                time.sleep(min(max(at - last, 0.0), max_wait) / speed)
            last = at
            out.write(data)
            out.flush()


def _verified_principal(manifest: Manifest, token: str) -> tuple[Principal, Engine]:
    """The principal of a valid, unrevoked token of the gateway or of a trusted OIDC issuer."""
    from lockgate.identity.oidc import OIDCVerifier
    from lockgate.identity.tokens import GatewayTokenAuthority
    from lockgate.identity.verifier import (
        GatewayTokenVerifier,
        IdentityVerifier,
        TokenVerifier,
    )
    from lockgate.store import open_engine

    try:
        engine = open_engine(manifest.state_url)
        verifiers: list[TokenVerifier] = [
            GatewayTokenVerifier(GatewayTokenAuthority(manifest, engine))
        ]
        verifiers += [OIDCVerifier(issuer, engine) for issuer in manifest.identity.oidc]
        return asyncio.run(IdentityVerifier(verifiers).verify(token.strip())), engine
    except LockgateError as exc:
        fail(exc.message, exc.hint)


def _stored_login_token(manifest: Manifest, issuer: str | None) -> str:
    """The ID token `lockgate login` keeps (refreshed if it expired)."""
    from lockgate.identity import credentials
    from lockgate.secrets.refs import resolve_secret

    try:
        _, token = credentials.current_token(
            issuer, resolve_secret=lambda ref: resolve_secret(ref, manifest, None)
        )
    except LockgateError as exc:
        fail(
            f"no token given, and no usable login: {exc.message}",
            "pass --token TOKEN, set LOCKGATE_TOKEN, or run `lockgate login` first",
        )
    return token


def _user_key(
    output: Path | None, public_key: Path | None, resource: str
) -> tuple[asyncssh.SSHKey, Path]:
    """The key to certify and where its certificate goes; generates a pair when asked to."""
    import asyncssh

    if public_key is not None:
        try:
            key = asyncssh.read_public_key(str(public_key))
        except (OSError, asyncssh.KeyImportError):
            fail(
                f"{public_key} is not an OpenSSH public key",
                "pass the .pub file of your key pair, e.g. --public-key ~/.ssh/id_ed25519.pub",
            )
        base = str(public_key).removesuffix(".pub")
        return key, output or Path(f"{base}-cert.pub")
    path = output or Path(f"lockgate-{resource}")
    if path.exists() and not Path(f"{path}-cert.pub").exists():
        # Only a key pair this command wrote (a certificate next to it) is replaced.
        fail(
            f"{path} exists and is not a key pair from `lockgate ssh-cert`",
            f"certify it with --public-key {path}.pub, or pick another -o FILE",
        )
    key = asyncssh.generate_private_key("ssh-ed25519", comment=f"lockgate {resource}")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key.export_private_key("openssh"))
        key.write_public_key(f"{path}.pub")
    except OSError as exc:
        fail(f"cannot write the key pair to {path} ({exc.strerror})", "pick another -o FILE")
    return key, Path(f"{path}-cert.pub")


@click.command("ssh-cert")
@config_option
@click.argument("resource")
@click.option(
    "--token",
    envvar="LOCKGATE_TOKEN",
    help="The token that vouches for you: a Lockgate token or an identity provider's "
    "(default: $LOCKGATE_TOKEN, else the login kept by `lockgate login`).",
)
@click.option("--issuer", help="With a kept login: use this issuer's (default: the latest).")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Private key to write (default ./lockgate-RESOURCE; the certificate goes to "
    "FILE-cert.pub); with --public-key, the certificate file.",
)
@click.option(
    "--public-key",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Certify this existing public key instead of generating a key pair.",
)
@click.option("--ttl", default="15m", show_default=True, help="Lifetime, capped by the token's.")
@click.option(
    "--no-pty", is_flag=True, help="Leave out permit-pty (the gateway then refuses a terminal)."
)
@click.option("--json", "as_json", is_flag=True, help="Print the files and validity as JSON.")
def ssh_cert(
    config_path: Path,
    resource: str,
    token: str | None,
    issuer: str | None,
    output: Path | None,
    public_key: Path | None,
    ttl: str,
    no_pty: bool,
    as_json: bool,
) -> None:
    """Write a short-lived SSH certificate for RESOURCE, signed by the gateway's SSH CA.

    The certificate names the token's subject and expires with the token or after --ttl,
    whichever comes first. Log in with it without any prompt (BatchMode works):

    ssh -i lockgate-web -o CertificateFile=lockgate-web-cert.pub -p PORT web@GATEWAY cmd
    """
    from lockgate.identity.ssh_ca import (
        issue_user_certificate,
        load_or_create_ca,
        record_outside_certificate,
    )
    from lockgate.policy.access import AccessPolicy

    try:
        lifetime = timedelta(seconds=parse_duration(ttl))
    except ValueError as exc:
        fail(f"--ttl: {exc}")
    manifest = load(config_path)
    if not isinstance(manifest.target(resource), SshResource):
        fail(
            f"resource '{resource}' is not an SSH resource on this gateway",
            "name a resource with type: ssh from the manifest",
        )
    principal, engine = _verified_principal(
        manifest, token or _stored_login_token(manifest, issuer)
    )
    decision = AccessPolicy(manifest).check(principal, resource)
    if not decision.allowed:
        fail(
            decision.reason or f"identity '{principal.subject}' may not reach '{resource}'",
            "ask an administrator for an access rule, or for a grant",
        )
    try:
        ca = load_or_create_ca(manifest)
    except LockgateError as exc:
        fail(exc.message, exc.hint)
    until = datetime.now(UTC) + lifetime
    if principal.expires_at is not None:
        until = min(until, principal.expires_at)
    if principal.issuer != manifest.identity.gateway_tokens.issuer:
        # An identity provider's token has no issue record to re-check at login: keep one.
        try:
            principal = record_outside_certificate(engine, principal, until)
        except SQLAlchemyError:
            fail("the gateway's state store is unavailable", "try again shortly")
    key, cert_path = _user_key(output, public_key, resource)
    cert = issue_user_certificate(ca, key, principal, lifetime, permit_pty=not no_pty)
    try:
        cert.write_certificate(str(cert_path))
    except OSError as exc:
        fail(f"cannot write the certificate to {cert_path} ({exc.strerror})", "pick another -o")
    key_file = None if public_key is not None else str(cert_path).removesuffix("-cert.pub")
    if as_json:
        print_json(
            {
                "certificate": str(cert_path),
                "private_key": key_file,
                "subject": principal.subject,
                "valid_before": until.replace(microsecond=0).isoformat(),
                "permit_pty": not no_pty,
            }
        )
        return
    click.echo(f"Wrote {cert_path} for '{principal.subject}', valid until {until:%H:%M:%S} UTC.")
    key_arg = key_file or "YOUR_PRIVATE_KEY"
    click.echo(
        f"  ssh -i {key_arg} -o CertificateFile={cert_path} -p PORT {resource}@GATEWAY",
        err=True,
    )


COMMANDS: list[click.Command] = [ssh_known_hosts, ssh_cert, ssh_replay]
