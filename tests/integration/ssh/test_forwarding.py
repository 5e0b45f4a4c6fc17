"""Forwarding: refused (and recorded) unless a rule allows it; allowed `-L`/`-R` channels are
relayed through the target with the real OpenSSH client, and recorded with their bytes."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.conftest import free_port
from tests.integration.ssh.conftest import (
    SshGateway,
    Target,
    ended_session,
    finish,
    ssh_manifest,
    start_ssh_gateway,
    wait_for,
)

pytestmark = pytest.mark.ssh


def test_local_forwarding_is_refused_with_a_reason(gateway: SshGateway) -> None:
    token = gateway.token("forwarder")
    # -W opens a direct-tcpip channel at once, as -L does for each local connection.
    r = gateway.ssh(token, "-W", f"127.0.0.1:{gateway.target.port}", log_level="INFO")
    assert r.returncode == 255
    assert b"administratively prohibited" in r.stderr
    assert b"lockgate: port forwarding (-L) is off on this gateway" in r.stderr
    session = ended_session(gateway, "forwarder")
    (cmd,) = session["commands"]
    assert cmd["kind"] == "ssh.forward-local"
    assert cmd["text"] == f"forward local 127.0.0.1:{gateway.target.port}"
    assert cmd["decision"] == "deny"


def test_remote_forwarding_is_refused(gateway: SshGateway) -> None:
    token = gateway.token("remote-forwarder")
    r = gateway.ssh(
        token, "-o", "ExitOnForwardFailure=yes", "-R", "127.0.0.1:0:127.0.0.1:9", "true"
    )
    assert r.returncode == 255
    assert b"remote port forwarding failed" in r.stderr
    session = ended_session(gateway, "remote-forwarder")
    assert [c["kind"] for c in session["commands"]] == ["ssh.forward-remote"]


def test_agent_forwarding_never_reaches_the_target(gateway: SshGateway) -> None:
    token = gateway.token("agent-user")
    env_check = 'test -z "$SSH_AUTH_SOCK" && echo no-agent'
    r = gateway.ssh(token, "-A", env_check)
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"no-agent\n"


def test_agent_request_is_refused_and_recorded(gateway: SshGateway, tmp_path: Path) -> None:
    # ssh asks for agent forwarding only when it can reach an agent: give it an empty one.
    sock = tmp_path / "agent.sock"
    agent = subprocess.Popen(
        ["ssh-agent", "-D", "-a", str(sock)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(sock.exists, "the ssh-agent socket")
        token = gateway.token("agent-recorded")
        env = {**gateway.client_env(token), "SSH_AUTH_SOCK": str(sock)}
        r = subprocess.run(
            ["ssh", *gateway.ssh_options(), "-A", "-p", str(gateway.port), gateway.login(),
             'test -z "$SSH_AUTH_SOCK" && echo no-agent'],
            env=env,
            capture_output=True,
            stdin=subprocess.DEVNULL,
            timeout=60,
        )  # fmt: skip
    finally:
        agent.terminate()
        agent.wait(timeout=10)
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"no-agent\n"
    assert b"lockgate: agent forwarding (-A) is off on this gateway" in r.stderr
    session = ended_session(gateway, "agent-recorded", n_commands=2)
    refused = [c for c in session["commands"] if c["kind"] == "ssh.forward-agent"]
    assert len(refused) == 1
    assert refused[0]["decision"] == "deny"


def test_x11_forwarding_is_refused_and_recorded(gateway: SshGateway) -> None:
    token = gateway.token("x11-user")
    r = gateway.ssh(token, "-X", "-o", "ForwardX11Trusted=yes", 'echo "display=$DISPLAY"')
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"display=\n"
    assert b"lockgate: X11 forwarding (-X) is off on this gateway" in r.stderr
    session = ended_session(gateway, "x11-user", n_commands=2)
    x11 = [c for c in session["commands"] if c["kind"] == "ssh.forward-x11"]
    assert len(x11) == 1
    assert x11[0]["decision"] == "deny"


class _EchoServer:
    """A TCP echo server on loopback: the destination the target forwards to."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.peers: list[str] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, peer = self.sock.accept()
            except OSError:
                return
            self.peers.append(f"{peer[0]}:{peer[1]}")
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        with conn:
            conn.settimeout(30)
            try:
                while data := conn.recv(65536):
                    conn.sendall(data)
            except OSError:
                pass

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def echo() -> Iterator[_EchoServer]:
    server = _EchoServer()
    yield server
    server.close()


@pytest.fixture(scope="module")
def forwarding(
    tmp_path_factory: pytest.TempPathFactory, sshd: Target, echo: _EchoServer
) -> Iterator[SshGateway]:
    rules = [
        {
            "name": "echo-only",
            "action": "allow",
            "forwarding": ["local"],
            "destinations": [f"127.0.0.1:{echo.port}", "localhost:*"],
        },
        {
            "name": "remote-loopback",
            "action": "allow",
            "forwarding": ["remote"],
            "destinations": ["127.0.0.1:*"],
        },
        {"name": "agents-ok", "action": "allow", "forwarding": ["agent"]},
    ]
    manifest = ssh_manifest(free_port(), sshd, rules=rules)
    gw = start_ssh_gateway(tmp_path_factory.mktemp("ssh-forwarding"), manifest, sshd)
    yield gw
    gw.stop()


def _exchange(port: int, payload: bytes) -> bytes:
    """Connect (retrying while the forward comes up), send, read the echo back."""
    deadline = time.monotonic() + 20
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                s.sendall(payload)
                s.shutdown(socket.SHUT_WR)
                got = b""
                while chunk := s.recv(65536):
                    got += chunk
                if got or time.monotonic() > deadline:
                    return got
        except OSError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.1)


def test_local_forwarding_to_an_allowed_destination_is_relayed_via_the_target(
    forwarding: SshGateway, echo: _EchoServer
) -> None:
    token = forwarding.token("tunneler")
    local = free_port()
    proc = forwarding.ssh_popen(
        token, "-N", "-o", "ExitOnForwardFailure=yes", "-L", f"{local}:127.0.0.1:{echo.port}",
        name="tunneler",
    )  # fmt: skip
    try:
        payload = bytes(range(256)) * 512  # 128 KiB, past one channel packet
        assert _exchange(local, payload) == payload
    finally:
        proc.terminate()
        finish(proc)
    session = ended_session(forwarding, "tunneler")
    (cmd,) = session["commands"]
    assert cmd["kind"] == "ssh.forward-local"
    assert cmd["text"] == f"forward local 127.0.0.1:{echo.port}"
    assert (cmd["decision"], cmd["rule"]) == ("allow", "echo-only")
    n = len(payload)
    assert cmd["status"] == f"closed; {n} bytes to the destination, {n} bytes back"
    assert cmd["bytes_out"] == n
    assert cmd["duration_ms"] > 0


def test_local_forwarding_elsewhere_is_refused_by_the_rule_list(
    forwarding: SshGateway, sshd: Target
) -> None:
    token = forwarding.token("wanderer")
    r = forwarding.ssh(token, "-W", f"127.0.0.1:{sshd.port}", log_level="INFO")
    assert r.returncode == 255
    assert b"lockgate: port forwarding (-L) is off on this gateway" in r.stderr
    (cmd,) = ended_session(forwarding, "wanderer")["commands"]
    assert (cmd["kind"], cmd["decision"], cmd["status"]) == ("ssh.forward-local", "deny", "denied")


def test_a_destination_the_target_cannot_reach_fails_with_a_reason(forwarding: SshGateway) -> None:
    closed = free_port()
    token = forwarding.token("unlucky")
    r = forwarding.ssh(token, "-W", f"localhost:{closed}", log_level="INFO")
    assert r.returncode == 255
    assert f"lockgate: the target could not connect to localhost:{closed}".encode() in r.stderr
    (cmd,) = ended_session(forwarding, "unlucky")["commands"]
    assert (cmd["decision"], cmd["status"]) == ("allow", "error")


def test_remote_forwarding_listens_on_the_target_and_relays_to_the_client(
    forwarding: SshGateway, echo: _EchoServer
) -> None:
    token = forwarding.token("reverser")
    remote = free_port()
    proc = forwarding.ssh_popen(
        token, "-N", "-o", "ExitOnForwardFailure=yes",
        "-R", f"127.0.0.1:{remote}:127.0.0.1:{echo.port}", name="reverser",
    )  # fmt: skip
    try:
        # The target's sshd listens on `remote`; the connection comes back to this ssh.
        assert _exchange(remote, b"through the target and back") == b"through the target and back"
    finally:
        proc.terminate()
        finish(proc)
    session = ended_session(forwarding, "reverser", n_commands=2)
    listen, conn = session["commands"][:2]
    assert (listen["kind"], listen["decision"]) == ("ssh.forward-remote", "allow")
    assert listen["status"] == f"listening on 127.0.0.1:{remote}"
    assert conn["kind"] == "ssh.forward-remote-connection"
    assert conn["text"].startswith(f"forward remote 127.0.0.1:{remote} from 127.0.0.1:")
    assert conn["status"] == "closed; 27 bytes to the destination, 27 bytes back"


def test_allowed_agent_forwarding_is_still_refused_with_the_reason_on_stderr(
    forwarding: SshGateway, tmp_path: Path
) -> None:
    sock = tmp_path / "agent.sock"
    agent = subprocess.Popen(
        ["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_for(sock.exists, "the ssh-agent socket")
        token = forwarding.token("agent-allowed")
        env = {**forwarding.client_env(token), "SSH_AUTH_SOCK": str(sock)}
        r = subprocess.run(
            ["ssh", *forwarding.ssh_options(), "-A", "-p", str(forwarding.port),
             forwarding.login(), 'test -z "$SSH_AUTH_SOCK" && echo no-agent'],
            env=env, capture_output=True, stdin=subprocess.DEVNULL, timeout=60,
        )  # fmt: skip
    finally:
        agent.terminate()
        agent.wait(timeout=10)
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"no-agent\n"
    assert b"lockgate: agent forwarding is allowed by rule 'agents-ok', but the gateway" in r.stderr
