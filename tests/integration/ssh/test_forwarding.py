"""Port forwarding through the gateway is refused (and recorded) unless a rule allows it."""

from __future__ import annotations

import pytest
from tests.integration.ssh.conftest import SshGateway, ended_session

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
