"""Live SSH sessions end when their token is revoked or expires, their grant ends, or they
run past max_session: the user reads why on stderr, the audit records the end reason.

A revocation (of a token or a grant) by another process wakes the live-session check at
once (wakeups.py): with a 30 s check interval, a session ended within 10 s was woken."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import free_port
from tests.integration.ssh.conftest import (
    SshGateway,
    Target,
    ended_session,
    finish,
    live_session,
    ssh_manifest,
    start_ssh_gateway,
)

pytestmark = pytest.mark.ssh


def _manifest(target: Target, **sessions: str) -> dict[str, Any]:
    manifest = ssh_manifest(free_port(), target)
    jit = json.loads(json.dumps(manifest["resources"][0]))
    jit["name"] = "jit-target"
    manifest["resources"].append(jit)
    manifest["access"].append(
        {"name": "jit", "resources": ["jit-target"], "groups": ["ops"], "requires_grant": True}
    )
    manifest["identity"] = {"sessions": {"check_interval": "1s", **sessions}}
    manifest["approvals"] = {
        "poll_interval": 0.2,
        "rules": [
            {
                "name": "jit",
                "requests": ["grant"],
                "resources": ["jit-target"],
                "reviewers": ["sre"],
            }
        ],
    }
    return manifest


def _start(tmp: Path, target: Target, **sessions: str) -> Iterator[SshGateway]:
    gw = start_ssh_gateway(tmp, _manifest(target, **sessions), target)
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, sshd: Target) -> Iterator[SshGateway]:
    yield from _start(tmp_path_factory.mktemp("ssh-live"), sshd)


def test_revoking_the_token_ends_a_running_command(live: SshGateway) -> None:
    token = live.token("revoked-rob")
    proc = live.ssh_popen(token, "echo started; sleep 60")
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"started\n"
    live.cli("token", "revoke", "--subject", "revoked-rob", "--reason", "left the team")
    code, _, err = finish(proc)
    assert code != 0
    assert b"lockgate: session ended: " in err
    assert b"lockgate: session ended: its token was revoked" in err
    session = ended_session(live, "revoked-rob")
    assert session["end_reason"] == "revoked"
    assert "revoked" in session["error"]
    (cmd,) = session["commands"]
    assert cmd["status"].startswith("ended: revoked")


def test_an_expiring_token_ends_an_interactive_shell(live: SshGateway) -> None:
    token = live.cli(
        "token", "issue", "--subject", "short-sue", "--group", "ops", "--ttl", "4s"
    ).stdout.strip()
    proc = live.ssh_popen(token, "-tt", "sleep 60")
    code, out, err = finish(proc)
    assert code != 0
    # With a terminal (-tt) the channel's stderr is merged into the output by sshd's side.
    said = out + err
    assert b"lockgate: session ended: the session's token expired at" in said
    session = ended_session(live, "short-sue")
    assert session["end_reason"] == "token_expired"


@pytest.fixture(scope="module")
def woken(tmp_path_factory: pytest.TempPathFactory, sshd: Target) -> Iterator[SshGateway]:
    yield from _start(tmp_path_factory.mktemp("ssh-woken"), sshd, check_interval="30s")


def test_a_revocation_wakes_the_check_at_once(woken: SshGateway) -> None:
    token = woken.token("woken-wes")
    proc = woken.ssh_popen(token, "echo started; sleep 60")
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"started\n"
    woken.cli("token", "revoke", "--subject", "woken-wes", "--reason", "left the team")
    code, _, err = finish(proc, timeout=10)
    assert code != 0 and b"lockgate: session ended: its token was revoked" in err


@pytest.mark.parametrize("gw", ["live", "woken"])
def test_a_revoked_grant_ends_the_session_it_admitted(
    gw: str, request: pytest.FixtureRequest
) -> None:
    live: SshGateway = request.getfixturevalue(gw)
    subject = f"gina-{gw}"
    gina = live.token(subject)
    refused = live.ssh(gina, "true", resource="jit-target")
    assert refused.returncode == 255
    rid = live.cli(
        "request", "jit-target", "--for", "1h", "--reason", "INC-7", "--token", gina
    ).stdout.strip()
    live.cli("reviews", "approve", rid, "--reason", "go", "--as", "root", "--group", "sre")
    grant = next(
        g for g in json.loads(live.cli("grants", "list", "--json").stdout) if g["request_id"] == rid
    )
    proc = live.ssh_popen(gina, "echo in; sleep 60", resource="jit-target")
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"in\n"
    assert live_session(live, subject)["ended_at"] is None
    live.cli("grants", "revoke", grant["id"], "--reason", "done", "--as", "root")
    code, _, err = finish(proc, timeout=10)
    assert code != 0
    assert f"lockgate: session ended: its access grant {grant['id']} was revoked".encode() in err
    assert b"lockgate request RESOURCE" in err
    assert ended_session(live, subject)["end_reason"] == "grant_ended"


@pytest.fixture(scope="module")
def short(tmp_path_factory: pytest.TempPathFactory, sshd: Target) -> Iterator[SshGateway]:
    yield from _start(tmp_path_factory.mktemp("ssh-short"), sshd, max_session="3s")


def test_max_session_ends_a_long_command(short: SshGateway) -> None:
    token = short.token("long-lou")
    proc = short.ssh_popen(token, "sleep 60")
    code, _, err = finish(proc)
    assert code != 0
    assert b"lockgate: session ended: the session reached its maximum length of 3s" in err
    assert ended_session(short, "long-lou")["end_reason"] == "max_session"
