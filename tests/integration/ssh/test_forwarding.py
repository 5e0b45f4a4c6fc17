"""Forwarding: refused (and recorded) unless a rule allows it; allowed `-L`/`-R` channels are
relayed through the target with the real OpenSSH client, and recorded with their bytes."""

from __future__ import annotations

import os
import secrets
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
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


@dataclass
class _Agent:
    """A real ssh-agent holding one key the target does not know."""

    sock: Path
    fingerprint: str


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[_Agent]:
    sock = tmp_path / "agent.sock"
    key = tmp_path / "agent_key"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "agent-key", "-f", str(key)],
        check=True,
    )
    fingerprint = subprocess.run(
        ["ssh-keygen", "-lf", f"{key}.pub"], capture_output=True, text=True, check=True
    ).stdout.split()[1]
    proc = subprocess.Popen(
        ["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_for(sock.exists, "the ssh-agent socket")
        subprocess.run(
            ["ssh-add", str(key)],
            env={**os.environ, "SSH_AUTH_SOCK": str(sock)},
            check=True,
            capture_output=True,
        )
        yield _Agent(sock, fingerprint)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _ssh_with_agent(
    gw: SshGateway, token: str, agent: _Agent, command: str
) -> subprocess.CompletedProcess[bytes]:
    env = {**gw.client_env(token), "SSH_AUTH_SOCK": str(agent.sock)}
    return subprocess.run(
        ["ssh", *gw.ssh_options(), "-A", "-p", str(gw.port), gw.login(), command],
        env=env,
        capture_output=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
    )


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


def test_agent_request_is_refused_and_recorded(gateway: SshGateway, agent: _Agent) -> None:
    token = gateway.token("agent-recorded")
    r = _ssh_with_agent(gateway, token, agent, 'ssh-add -l; echo "rc=$?"')
    assert r.returncode == 0, r.stderr
    # No socket on the target: ssh-add cannot reach any agent (exit status 2).
    assert r.stdout == b"rc=2\n"
    assert agent.fingerprint.encode() not in r.stdout + r.stderr
    assert b"lockgate: agent forwarding (-A) is off on this gateway" in r.stderr
    session = ended_session(gateway, "agent-recorded", n_commands=2)
    refused = [c for c in session["commands"] if c["kind"] == "ssh.forward-agent"]
    assert len(refused) == 1
    assert (refused[0]["text"], refused[0]["decision"]) == ("forward agent", "deny")
    assert not [c for c in session["commands"] if c["kind"] == "ssh.forward-agent-connection"]


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
        {"name": "x11-ok", "action": "allow", "forwarding": ["x11"]},
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


def test_allowed_agent_forwarding_relays_the_targets_agent_channels_to_the_client(
    forwarding: SshGateway, agent: _Agent
) -> None:
    token = forwarding.token("agent-allowed")
    r = _ssh_with_agent(forwarding, token, agent, "ssh-add -l && ssh-add -l")
    assert r.returncode == 0, r.stderr
    # The key in the client's agent, listed on the target through the gateway (twice).
    assert r.stdout.count(agent.fingerprint.encode()) == 2, r.stdout
    session = ended_session(forwarding, "agent-allowed", n_commands=4)
    kinds = [c["kind"] for c in session["commands"]]
    assert kinds.count("ssh.forward-agent") == 1
    request = next(c for c in session["commands"] if c["kind"] == "ssh.forward-agent")
    assert (request["decision"], request["rule"], request["status"]) == (
        "allow",
        "agents-ok",
        "allowed",
    )
    channels = [c for c in session["commands"] if c["kind"] == "ssh.forward-agent-connection"]
    assert len(channels) == 2  # one per ssh-add run
    for chan in channels:
        assert (chan["text"], chan["decision"], chan["rule"]) == (
            "forward agent",
            "allow",
            "agents-ok",
        )
        assert chan["status"].startswith("closed; ")
        assert chan["bytes_out"] > 0  # ssh-add's request, to the client's agent


def test_the_gateway_logs_in_to_the_target_with_its_own_key_not_the_agent(
    forwarding: SshGateway, agent: _Agent
) -> None:
    # The agent holds a key the target does not accept: the login still works, with the
    # gateway's stored key, and the agent is asked for nothing before the command runs.
    token = forwarding.token("agent-own-key")
    r = _ssh_with_agent(forwarding, token, agent, "echo logged-in")
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"logged-in\n"
    session = ended_session(forwarding, "agent-own-key", n_commands=2)
    assert not [c for c in session["commands"] if c["kind"] == "ssh.forward-agent-connection"]


# -- X11 -------------------------------------------------------------------------------------

# Runs on the target: connects to $DISPLAY with the cookie sshd stored for it (or a wrong
# one), sends an X11 connection setup and prints what the X server answered.
_X11_CLIENT = r"""
import os, socket, struct, subprocess, sys
display = os.environ["DISPLAY"]
host, _, rest = display.rpartition(":")
number = int(rest.split(".")[0])
line = subprocess.run(["xauth", "list", display], capture_output=True, text=True).stdout
cookie = bytes.fromhex(line.split()[-1])
if sys.argv[1] == "wrong":
    cookie = bytes(len(cookie))
name = b"MIT-MAGIC-COOKIE-1"
setup = struct.pack("<BxHHHHxx", ord("l"), 11, 0, len(name), len(cookie))
setup += name + bytes(-len(name) % 4) + cookie + bytes(-len(cookie) % 4) + b"after-setup"
s = socket.create_connection((host or "127.0.0.1", 6000 + number), timeout=20)
s.sendall(setup)
got = b""
while chunk := s.recv(4096):
    got += chunk
print(f"display={display} cookie={cookie.hex()} answer={got.decode() or '-'}")
"""


class _FakeXServer:
    """A display :N on a UNIX socket (/tmp/.X11-unix/XN): records each connection's bytes."""

    def __init__(self) -> None:
        folder = Path("/tmp/.X11-unix")
        folder.mkdir(mode=0o1777, exist_ok=True)
        self.number = next(
            n for n in range(4000 + os.getpid() % 1000, 6000) if not (folder / f"X{n}").exists()
        )
        self.path = folder / f"X{self.number}"
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.bind(str(self.path))
        self.sock.listen()
        self.received: list[bytes] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(20)
                data = b""
                try:
                    while len(data) < 12 + 20 + 16 + 11:
                        chunk = conn.recv(4096)
                        if not chunk:
                            break
                        data += chunk
                    conn.sendall(b"X11-OK")
                except OSError:
                    pass
                self.received.append(data)

    def close(self) -> None:
        self.sock.close()
        self.path.unlink(missing_ok=True)


def _x11_env(
    gw: SshGateway, token: str, tmp_path: Path, display: int
) -> tuple[dict[str, str], bytes]:
    """The client's environment for display :N, with a cookie in its own XAUTHORITY file."""
    cookie = secrets.token_bytes(16)
    xauthority = tmp_path / "client-Xauthority"
    subprocess.run(
        ["xauth", "-f", str(xauthority), "add", f":{display}", "MIT-MAGIC-COOKIE-1", cookie.hex()],
        check=True,
        capture_output=True,
    )
    env = {**gw.client_env(token), "DISPLAY": f":{display}", "XAUTHORITY": str(xauthority)}
    return env, cookie


def test_allowed_x11_forwarding_relays_the_targets_x11_connections_to_the_clients_display(
    forwarding: SshGateway, tmp_path: Path
) -> None:
    server = _FakeXServer()
    try:
        token = forwarding.token("x11-allowed")
        env, cookie = _x11_env(forwarding, token, tmp_path, server.number)
        # The target is this machine: it runs the script from the test's folder.
        script = tmp_path / "x11_client.py"
        script.write_text(_X11_CLIENT)
        r = subprocess.run(
            ["ssh", *forwarding.ssh_options(), "-Y", "-p", str(forwarding.port),
             forwarding.login(), f"python3 {script} right && python3 {script} wrong"],
            env=env, stdin=subprocess.DEVNULL, capture_output=True, timeout=60,
        )  # fmt: skip
    finally:
        server.close()
    assert r.returncode == 0, r.stderr
    right, wrong = r.stdout.decode().splitlines()
    assert right.startswith("display=localhost:")
    assert right.endswith("answer=X11-OK")
    target_cookie = right.split("cookie=")[1].split()[0]
    # The target was given a stand-in; the display saw the client's own cookie, once.
    assert target_cookie != cookie.hex()
    (setup,) = server.received
    name = b"MIT-MAGIC-COOKIE-1"
    assert setup[:12] == struct.pack("<BxHHHHxx", ord("l"), 11, 0, len(name), len(cookie))
    assert setup[12 : 12 + len(name)] == name
    assert setup[32:48] == cookie
    assert setup[48:] == b"after-setup"
    # With any other cookie the gateway ends the connection before it reaches the display.
    assert wrong.endswith("answer=-")
    session = ended_session(forwarding, "x11-allowed", n_commands=4)
    request = next(c for c in session["commands"] if c["kind"] == "ssh.forward-x11")
    assert (request["decision"], request["rule"], request["status"]) == (
        "allow",
        "x11-ok",
        "allowed",
    )
    ok, refused = [c for c in session["commands"] if c["kind"] == "ssh.forward-x11-connection"]
    assert ok["text"].startswith("forward x11 from 127.0.0.1:")
    # The setup (59 bytes) went to the display, its 6-byte answer back to the target.
    assert (ok["status"], ok["bytes_out"]) == (
        "closed; 59 bytes to the destination, 6 bytes back",
        59,
    )
    assert refused["status"].startswith("refused; ")
    assert "did not present the forwarded cookie" in refused["error_message"]
