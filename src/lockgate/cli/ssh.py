"""`lockgate ssh-known-hosts` and `lockgate ssh-replay`: the SSH gateway's key and recordings."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from lockgate.cli.common import config_option, fail, load
from lockgate.config.model import Manifest
from lockgate.config.ssh import SshListener
from lockgate.errors import LockgateError


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


COMMANDS: list[click.Command] = [ssh_known_hosts, ssh_replay]
