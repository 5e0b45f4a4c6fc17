"""A real sshd (its own config, host key and port on loopback) behind a real `lockgate serve`.

The target sshd runs as root with `UsePAM no` and key authentication for root only (the key
the gateway holds); it is started by the fixture and stopped by its pid. Clients are the real
OpenSSH `ssh`, `scp` and `sftp`, given the Lockgate token through SSH_ASKPASS. Everything
is skipped cleanly when sshd or the clients are missing or we are not root.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.conftest import free_port, issue_token, run_cli

SSHD = "/usr/sbin/sshd"
LOCKGATE = [sys.executable, "-m", "lockgate.cli"]
GATEWAY_GROUP = "ops"


def _missing() -> str | None:
    if not os.path.exists(SSHD):
        return "openssh-server (sshd) is not installed; scripts/setup installs it"
    for tool in ("ssh", "scp", "sftp", "ssh-keygen"):
        if shutil.which(tool) is None:
            return f"the OpenSSH client tool {tool} is missing"
    if os.geteuid() != 0:
        return "the sshd fixture runs sshd as root"
    return None


def _wait_port(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited early:\n{log.read_text(errors='replace')}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(
        f"port {port} did not open in {timeout}s:\n{log.read_text(errors='replace')}"
    )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@dataclass
class Target:
    """The sshd the gateway logs in to."""

    dir: Path
    port: int
    host_fingerprint: str
    client_key: Path  # the private key the gateway holds
    proc: subprocess.Popen[bytes]


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    why = _missing()
    if why:
        pytest.skip(why)
    d = tmp_path_factory.mktemp("sshd")
    os.chmod(d, 0o700)
    host_key = d / "ssh_host_ed25519_key"
    client_key = d / "gateway_key"
    for key in (host_key, client_key):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", key.name, "-f", str(key)],
            check=True,
        )
    (d / "authorized_keys").write_text((d / "gateway_key.pub").read_text())
    (d / "Xauthority").touch(mode=0o600)
    fingerprint = subprocess.run(
        ["ssh-keygen", "-lf", f"{host_key}.pub"], capture_output=True, text=True, check=True
    ).stdout.split()[1]
    port = free_port()
    config = d / "sshd_config"
    config.write_text(
        "\n".join(
            [
                f"Port {port}",
                "ListenAddress 127.0.0.1",
                f"HostKey {host_key}",
                f"PidFile {d / 'sshd.pid'}",
                f"AuthorizedKeysFile {d / 'authorized_keys'}",
                "PermitRootLogin prohibit-password",
                "PubkeyAuthentication yes",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "UsePAM no",
                "StrictModes no",
                "AllowTcpForwarding yes",
                "AllowAgentForwarding yes",
                # X11: sshd stores each session's cookie with xauth, in the fixture's own
                # file rather than root's ~/.Xauthority.
                "X11Forwarding yes",
                "X11UseLocalhost yes",
                "XAuthLocation /usr/bin/xauth",
                f"SetEnv XAUTHORITY={d / 'Xauthority'}",
                "PrintMotd no",
                "PrintLastLog no",
                "AcceptEnv LANG LC_*",
                "Subsystem sftp internal-sftp",
                "LogLevel VERBOSE",
                "",
            ]
        )
    )
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation dir
    log = d / "sshd.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdout=out, stderr=out)
    try:
        _wait_port(port, proc, log)
        yield Target(d, port, fingerprint, client_key, proc)
    finally:
        _stop(proc)


@dataclass
class SshGateway:
    """`lockgate serve` with one SSH listener in front of the test sshd."""

    dir: Path
    manifest_path: Path
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path
    target: Target
    known_hosts: Path = field(init=False)

    def __post_init__(self) -> None:
        self.known_hosts = self.dir / "known_hosts"

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run_cli([*args, "-c", str(self.manifest_path)], check=check)

    def token(self, subject: str = "alice", groups: tuple[str, ...] = (GATEWAY_GROUP,)) -> str:
        return issue_token(self.manifest_path, subject, groups)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def client_env(self, token: str) -> dict[str, str]:
        """Environment that makes ssh/scp/sftp answer the password prompt with `token`."""
        askpass = self.dir / f"askpass-{abs(hash(token)) % 10**8}"
        secret = self.dir / f"{askpass.name}.token"
        secret.write_text(token)
        secret.chmod(0o600)
        askpass.write_text(f"#!/bin/sh\ncat {secret}\n")
        askpass.chmod(0o700)
        env = {k: v for k, v in os.environ.items() if not k.startswith("SSH_")}
        env.update(SSH_ASKPASS=str(askpass), SSH_ASKPASS_REQUIRE="force", DISPLAY=":0")
        return env

    def ssh_options(self, log_level: str = "ERROR") -> list[str]:
        return [
            "-F", "/dev/null",
            "-o", f"UserKnownHostsFile={self.known_hosts}",
            "-o", "StrictHostKeyChecking=yes",
            "-o", "PubkeyAuthentication=no",
            "-o", "PreferredAuthentications=keyboard-interactive,password",
            "-o", "NumberOfPasswordPrompts=1",
            "-o", f"LogLevel={log_level}",
            "-o", "ConnectTimeout=10",
        ]  # fmt: skip

    def login(self, resource: str = "target", name: str = "alice") -> str:
        return f"{name}#{resource}@127.0.0.1"

    def ssh(
        self,
        token: str,
        *args: str,
        resource: str = "target",
        timeout: float = 60,
        input: bytes | None = None,
        log_level: str = "ERROR",
    ) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [
                "ssh",
                *self.ssh_options(log_level),
                "-p",
                str(self.port),
                self.login(resource),
                *args,
            ],
            env=self.client_env(token),
            capture_output=True,
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            timeout=timeout,
        )

    def ssh_popen(
        self, token: str, *args: str, resource: str = "target", name: str = "alice"
    ) -> subprocess.Popen[bytes]:
        """A background `ssh` (stdin closed, output captured); end it with `finish`."""
        return subprocess.Popen(
            ["ssh", *self.ssh_options(), "-p", str(self.port), self.login(resource, name), *args],
            env=self.client_env(token),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )

    def stop(self) -> None:
        _stop(self.proc)


class Terminal:
    """The real `ssh -tt` on a pseudo-terminal, driven like a person at a keyboard."""

    def __init__(self, gw: SshGateway, token: str) -> None:
        self.master, slave = os.openpty()
        self.proc = subprocess.Popen(
            ["ssh", "-tt", "-q", *gw.ssh_options(), "-p", str(gw.port), gw.login()],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env={**gw.client_env(token), "TERM": "xterm"},
            start_new_session=True,
        )
        os.close(slave)
        self.seen = b""

    def wait_first_output(self, timeout: float = 20) -> None:
        """Wait for the remote prompt: typing earlier would be echoed by the local terminal."""
        deadline = time.monotonic() + timeout
        while not self.seen:
            left = deadline - time.monotonic()
            if left <= 0 or not self._read(left):
                raise AssertionError("the shell printed nothing")

    def type(self, text: str) -> None:
        os.write(self.master, text.encode())

    def expect(self, needle: bytes, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while needle not in self.seen:
            left = deadline - time.monotonic()
            if left <= 0 or not self._read(left):
                raise AssertionError(f"{needle!r} not seen; got {self.seen[-500:]!r}")

    def _read(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.master], [], [], timeout)
        if not ready:
            return False
        try:
            data = os.read(self.master, 65536)
        except OSError:  # EIO: ssh exited and closed the terminal
            return False
        self.seen += data
        return bool(data)

    def finish(self, timeout: float = 20) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self._read(max(deadline - time.monotonic(), 0)):
            pass
        code = self.proc.wait(timeout=max(deadline - time.monotonic(), 1))
        os.close(self.master)
        return code


def finish(proc: subprocess.Popen[bytes], timeout: float = 30) -> tuple[int, bytes, bytes]:
    """Wait (bounded) for a background ssh; kill it if it outlives `timeout`."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate(timeout=10)
        raise AssertionError(f"ssh did not end in {timeout}s: {err!r}") from None
    return proc.returncode, out, err


def live_session(gw: SshGateway, subject: str) -> dict[str, Any]:
    """The newest session of `subject` once it is recorded (it may still be open)."""
    from lockgate.audit.query import list_sessions

    engine = audit_engine(gw)
    try:
        return dict(
            wait_for(
                lambda: next(iter(list_sessions(engine, subject=subject, limit=1)), None),
                f"a session of {subject}",
            )
        )
    finally:
        engine.dispose()


def ssh_manifest(
    port: int, target: Target, *, rules: list[dict[str, Any]] | None = None, **ssh: Any
) -> dict[str, Any]:
    return {
        "version": 1,
        "state": {"url": "sqlite:///state/lockgate.db", "dir": "state"},
        "listeners": [{"name": "ssh", "protocol": "ssh", "address": f"127.0.0.1:{port}"}],
        "resources": [
            {
                "name": "target",
                "type": "ssh",
                "upstream": {
                    "host": "127.0.0.1",
                    "port": target.port,
                    "user": "root",
                    "private_key": f"file:{target.client_key}",
                    "host_key": target.host_fingerprint,
                },
            }
        ],
        "access": [{"name": "ops", "resources": ["target"], "groups": [GATEWAY_GROUP]}],
        "ssh": {"rules": rules or [], **ssh},
    }


def start_ssh_gateway(
    directory: Path, manifest: dict[str, Any], target: Target, *, timeout: float = 30.0
) -> SshGateway:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "lockgate.yaml"
    path.write_text(yaml.safe_dump(manifest, sort_keys=False))
    port = int(manifest["listeners"][0]["address"].rpartition(":")[2])
    log_path = directory / "gateway.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            [*LOCKGATE, "serve", "-c", str(path)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=directory,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    gw = SshGateway(directory, path, port, proc, log_path, target)
    deadline = time.monotonic() + timeout
    while "listening on" not in gw.log():
        if proc.poll() is not None or time.monotonic() > deadline:
            gw.stop()
            raise RuntimeError(f"gateway did not start in {timeout}s:\n{gw.log()}")
        time.sleep(0.05)
    gw.known_hosts.write_text(gw.cli("ssh-known-hosts").stdout)
    return gw


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, sshd: Target) -> Iterator[SshGateway]:
    rules = [
        {"name": "no-shutdown", "commands": ["shutdown", "reboot", "rm -r*"]},
        {"name": "no-etc-download", "paths": ["/etc/*"], "directions": ["download"]},
        {
            "name": "contractors-read-only",
            "groups": ["contractors"],
            "directions": ["upload", "modify"],
            "message": "contractors may not change files",
        },
        {"name": "no-shells-for-auditors", "groups": ["auditors"], "shell": True},
    ]
    manifest = ssh_manifest(free_port(), sshd, rules=rules)
    gw = start_ssh_gateway(tmp_path_factory.mktemp("ssh-gateway"), manifest, sshd)
    yield gw
    gw.stop()


def wait_for(fetch: Any, what: str, timeout: float = 20.0) -> Any:
    """Poll `fetch()` until it returns something truthy (bounded); the audit is ingested async."""
    deadline = time.monotonic() + timeout
    while True:
        got = fetch()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def audit_engine(gw: SshGateway) -> Any:
    from lockgate.store import open_engine

    return open_engine(f"sqlite:///{gw.dir / 'state' / 'lockgate.db'}")


def ended_session(gw: SshGateway, subject: str, n_commands: int = 1) -> dict[str, Any]:
    """The newest ended session of `subject`, with its commands, once ingested."""
    from lockgate.audit.query import get_session, list_sessions

    engine = audit_engine(gw)

    def fetch() -> dict[str, Any] | None:
        for s in list_sessions(engine, subject=subject, limit=1):
            full = get_session(engine, s["id"])
            if (
                full is not None
                and full["ended_at"] is not None
                and len(full["commands"]) >= n_commands
                and all(c["finished_at"] is not None for c in full["commands"])
            ):
                return full
        return None

    try:
        return dict(wait_for(fetch, f"an ended session of {subject}"))
    finally:
        engine.dispose()


def refusals(gw: SshGateway, subject_or_none: str | None = None) -> list[dict[str, Any]]:
    from lockgate.audit.query import list_refusals

    engine = audit_engine(gw)
    try:
        rows = list_refusals(engine, limit=200)
    finally:
        engine.dispose()
    return [r for r in rows if r["protocol"] == "ssh"]
