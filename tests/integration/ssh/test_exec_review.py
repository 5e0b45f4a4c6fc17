"""`action: review` on an exec command: held through the approvals broker, run on approval,
refused on denial, with the user told on stderr what it waits for and how to approve."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from tests.conftest import free_port
from tests.integration.ssh.conftest import (
    SshGateway,
    Target,
    ended_session,
    finish,
    ssh_manifest,
    start_ssh_gateway,
)

pytestmark = pytest.mark.ssh


@pytest.fixture(scope="module")
def reviewed(tmp_path_factory: pytest.TempPathFactory, sshd: Target) -> Iterator[SshGateway]:
    rules = [
        {"name": "hold-deploys", "action": "review", "commands": ["printf deploy-*"]},
        {"name": "hold-unreviewed", "action": "review", "commands": ["printf nobody-*"]},
        {"name": "no-reboot", "commands": ["reboot"]},
    ]
    manifest = ssh_manifest(free_port(), sshd, rules=rules)
    manifest["approvals"] = {
        "poll_interval": 0.2,
        "rules": [{"name": "deploys", "guardrails": ["hold-deploys"], "reviewers": ["sre"]}],
    }
    gw = start_ssh_gateway(tmp_path_factory.mktemp("ssh-review"), manifest, sshd)
    yield gw
    gw.stop()


def _pending(gw: SshGateway, statement: str) -> dict[str, Any]:
    """The pending request holding `statement` (bounded polling: the gateway writes it)."""
    rows: list[dict[str, Any]] = []
    for _ in range(200):
        rows = json.loads(gw.cli("reviews", "list", "--json").stdout)
        for row in rows:
            if row.get("statement") == statement:
                return row
        time.sleep(0.1)
    raise AssertionError(f"no pending request for {statement!r}; latest: {rows[:5]!r}")


def test_an_approved_command_runs_once_after_the_wait(reviewed: SshGateway) -> None:
    token = reviewed.token("deployer")
    proc = reviewed.ssh_popen(token, "printf deploy-ok", name="deployer")
    req = _pending(reviewed, "printf deploy-ok")
    assert req["requester"] == "deployer"
    assert proc.poll() is None  # still waiting
    reviewed.cli(
        "reviews", "approve", req["id"], "--reason", "CHG-12", "--as", "root", "--group", "sre"
    )
    code, out, err = finish(proc)
    assert (code, out) == (0, b"deploy-ok")
    text = err.decode()
    assert f"held for review (rule: hold-deploys); waiting for approval request {req['id']}" in text
    assert f"lockgate reviews approve {req['id']} --reason TEXT" in text
    (cmd,) = ended_session(reviewed, "deployer")["commands"]
    assert (cmd["kind"], cmd["decision"], cmd["rule"]) == ("ssh.exec", "allow", "hold-deploys")
    assert f"approval request {req['id']} approved: approved by root: CHG-12" in cmd["reason"]
    assert cmd["status"].startswith("exit 0; recording sha256:")


def test_a_denied_command_is_refused_with_the_reason(reviewed: SshGateway) -> None:
    token = reviewed.token("denied-dan")
    proc = reviewed.ssh_popen(token, "printf deploy-no", name="denied-dan")
    req = _pending(reviewed, "printf deploy-no")
    reviewed.cli(
        "reviews", "deny", req["id"], "--reason", "not today", "--as", "root", "--group", "sre"
    )
    code, out, err = finish(proc)
    assert (code, out) == (126, b"")
    assert f"approval request {req['id']} denied: denied by root: not today".encode() in err
    (cmd,) = ended_session(reviewed, "denied-dan")["commands"]
    assert (cmd["decision"], cmd["status"]) == ("deny", "review denied")


def test_a_hold_no_approval_rule_covers_is_refused_at_once(reviewed: SshGateway) -> None:
    r = reviewed.ssh(reviewed.token("orphan"), "printf nobody-here")
    assert r.returncode == 126
    assert b"no approval rule reviews rule 'hold-unreviewed'" in r.stderr


def test_closing_the_client_withdraws_the_request(reviewed: SshGateway) -> None:
    token = reviewed.token("quitter")
    proc = reviewed.ssh_popen(token, "printf deploy-later", name="quitter")
    req = _pending(reviewed, "printf deploy-later")
    proc.terminate()
    finish(proc)
    for _ in range(200):
        rows = json.loads(reviewed.cli("reviews", "list", "--all", "--json").stdout)
        status = next(r["status"] for r in rows if r["id"] == req["id"])
        if status != "pending":
            break
        time.sleep(0.1)
    assert status == "withdrawn"
    (cmd,) = ended_session(reviewed, "quitter")["commands"]
    assert (cmd["decision"], cmd["status"]) == ("deny", "review withdrawn")


def test_a_reviewed_command_typed_in_a_shell_ends_it(reviewed: SshGateway) -> None:
    r = reviewed.ssh(reviewed.token("typist"), "-tt", input=b"printf deploy-x\n", timeout=60)
    assert b"cannot run in an interactive shell" in r.stdout + r.stderr
