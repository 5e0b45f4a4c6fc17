"""Port, agent and X11 forwarding are refused (and recorded) unless a rule allows them."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from tests.integration.ssh.conftest import SshGateway, ended_session, wait_for

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
    session = ended_session(gateway, "agent-recorded", n_commands=2)
    refused = [c for c in session["commands"] if c["kind"] == "ssh.forward-agent"]
    assert len(refused) == 1
    assert refused[0]["decision"] == "deny"


def test_x11_forwarding_is_refused_and_recorded(gateway: SshGateway) -> None:
    token = gateway.token("x11-user")
    r = gateway.ssh(token, "-X", "-o", "ForwardX11Trusted=yes", 'echo "display=$DISPLAY"')
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"display=\n"
    session = ended_session(gateway, "x11-user", n_commands=2)
    x11 = [c for c in session["commands"] if c["kind"] == "ssh.forward-x11"]
    assert len(x11) == 1
    assert x11[0]["decision"] == "deny"
