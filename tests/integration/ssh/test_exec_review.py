"""`action: review` on an exec command, a shell, or a line typed at a shell prompt: held
through the approvals broker, run on approval, refused on denial, with the user told what it
waits for and how to approve."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import free_port
from tests.integration.ssh.conftest import (
    SshGateway,
    Target,
    Terminal,
    ended_session,
    finish,
    ssh_manifest,
    start_ssh_gateway,
    wait_for,
)

pytestmark = pytest.mark.ssh


@pytest.fixture(scope="module")
def reviewed(tmp_path_factory: pytest.TempPathFactory, sshd: Target) -> Iterator[SshGateway]:
    rules = [
        {"name": "hold-deploys", "action": "review", "commands": ["printf deploy-*"]},
        {"name": "hold-unreviewed", "action": "review", "commands": ["printf nobody-*"]},
        {"name": "hold-briefly", "action": "review", "commands": ["printf brief-*"]},
        {"name": "no-reboot", "commands": ["reboot"]},
        {"name": "hold-shells", "action": "review", "shell": True, "groups": ["oncall"]},
    ]
    manifest = ssh_manifest(free_port(), sshd, rules=rules)
    manifest["approvals"] = {
        "poll_interval": 0.2,
        "rules": [
            {"name": "deploys", "guardrails": ["hold-deploys"], "reviewers": ["sre"]},
            {
                "name": "brief",
                "guardrails": ["hold-briefly"],
                "reviewers": ["sre"],
                "expires": "3s",
            },
            {"name": "shells", "guardrails": ["hold-shells"], "reviewers": ["sre"]},
        ],
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


def _typed_and_held(gw: SshGateway, user: str, line: str, rule: str) -> Terminal:
    """A shell where `line` was typed and is now held by `rule`."""
    term = Terminal(gw, gw.token(user))
    term.wait_first_output()
    term.type("echo ready-$((1+1))\r")
    term.expect(b"ready-2\r\n")
    term.type(line + "\r")
    term.expect(f"held for review (rule: {rule}); waiting for approval request ".encode())
    return term


def _held_at_the_prompt(gw: SshGateway, user: str, line: str) -> tuple[Terminal, dict[str, Any]]:
    """A shell where `line` was typed and is now held; and its approval request."""
    term = _typed_and_held(gw, user, line, "hold-deploys")
    req = _pending(gw, line)
    term.expect(f"lockgate reviews approve {req['id']} --reason TEXT".encode())
    term.expect(b"Ctrl-C withdraws it")
    return term, req


def _carries_on(term: Terminal) -> None:
    """The session goes on; keys typed while the line waited never reached the shell."""
    term.type("echo after-$((2+3))\r")
    term.expect(b"after-5\r\n")
    assert b"dropped-keys" not in term.seen.split(b"after-5")[-1]
    term.type("exit 0\r")
    assert term.finish() == 0


def _line_record(gw: SshGateway, user: str) -> dict[str, Any]:
    session = ended_session(gw, user, n_commands=2)
    (line,) = [c for c in session["commands"] if c["kind"] == "ssh.shell-line"]
    shell = next(c for c in session["commands"] if c["kind"] == "ssh.shell")
    assert shell["status"].startswith("exit 0; recording sha256:")
    return line


def test_a_reviewed_line_typed_at_the_prompt_waits_then_runs_on_approval(
    reviewed: SshGateway, tmp_path: Path
) -> None:
    marker = tmp_path / "deployed"
    line = f"printf deploy-typed > {marker}"
    term, req = _held_at_the_prompt(reviewed, "typist", line)
    assert req["requester"] == "typist"
    term.type("dropped-keys")
    time.sleep(0.5)  # let the keys reach the gateway before the approval
    assert not marker.exists()
    reviewed.cli(
        "reviews", "approve", req["id"], "--reason", "CHG-7", "--as", "root", "--group", "sre"
    )
    term.expect(b"lockgate: approved; the line runs now")
    wait_for(marker.exists, "the approved line to run")
    assert marker.read_text() == "deploy-typed"
    _carries_on(term)
    record = _line_record(reviewed, "typist")
    assert (record["text"], record["decision"], record["rule"]) == (line, "allow", "hold-deploys")
    assert record["status"] == "approved"
    assert f"approval request {req['id']} approved: approved by root: CHG-7" in record["reason"]


def test_a_denied_line_is_cleared_and_the_shell_goes_on(
    reviewed: SshGateway, tmp_path: Path
) -> None:
    marker = tmp_path / "deployed"
    line = f"printf deploy-refused > {marker}"
    term, req = _held_at_the_prompt(reviewed, "typist-denied", line)
    reviewed.cli(
        "reviews", "deny", req["id"], "--reason", "not now", "--as", "root", "--group", "sre"
    )
    term.expect(b"lockgate: not run: rule 'hold-deploys' holds for review")
    term.expect(b"denied by root: not now")
    term.expect(b"^C")  # the shell's terminal echoes the Ctrl-C that cleared the line
    _carries_on(term)
    assert not marker.exists()
    record = _line_record(reviewed, "typist-denied")
    assert (record["decision"], record["status"]) == ("deny", "review denied")


def test_ctrl_c_withdraws_a_held_line(reviewed: SshGateway, tmp_path: Path) -> None:
    marker = tmp_path / "deployed"
    line = f"printf deploy-withdrawn > {marker}"
    term, req = _held_at_the_prompt(reviewed, "typist-quits", line)
    term.type("dropped-keys\x03")
    term.expect(b"withdrawn at the prompt with Ctrl-C")
    term.expect(b"^C")
    _carries_on(term)
    assert not marker.exists()
    rows = json.loads(reviewed.cli("reviews", "list", "--all", "--json").stdout)
    assert next(r["status"] for r in rows if r["id"] == req["id"]) == "withdrawn"
    record = _line_record(reviewed, "typist-quits")
    assert (record["decision"], record["status"]) == ("deny", "review withdrawn")


def test_a_held_line_nobody_decides_expires_and_is_cleared(
    reviewed: SshGateway, tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    line = f"printf brief-moment > {marker}"
    term = _typed_and_held(reviewed, "typist-waits", line, "hold-briefly")
    term.expect(b"lockgate: not run: rule 'hold-briefly' holds for review", timeout=60)
    term.expect(b" expired")
    term.expect(b"^C")
    _carries_on(term)
    assert not marker.exists()
    record = _line_record(reviewed, "typist-waits")
    assert (record["decision"], record["status"]) == ("deny", "review expired")


def test_a_held_shell_opens_once_a_reviewer_approves(reviewed: SshGateway) -> None:
    """`shell: true` with `action: review`: just-in-time shell access."""
    token = reviewed.token("oncaller", groups=("ops", "oncall"))
    proc = subprocess.Popen(
        ["ssh", *reviewed.ssh_options(), "-p", str(reviewed.port), reviewed.login()],
        env=reviewed.client_env(token),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdin is not None
    # Typed before the shell exists: it waits with the held channel, then runs.
    proc.stdin.write(b"echo shell-opened\nexit\n")
    proc.stdin.flush()  # (finish closes it)
    req = _pending(reviewed, "shell")
    assert (req["requester"], req["guardrail"]) == ("oncaller", "hold-shells")
    assert proc.poll() is None  # still waiting
    reviewed.cli(
        "reviews", "approve", req["id"], "--reason", "INC-7", "--as", "root", "--group", "sre"
    )
    code, out, err = finish(proc)
    assert (code, out) == (0, b"shell-opened\n"), err
    assert b"this shell is held for review (rule: hold-shells)" in err
    (shell,) = ended_session(reviewed, "oncaller")["commands"]
    assert (shell["kind"], shell["decision"]) == ("ssh.shell", "allow")
    assert req["id"] in shell["reason"]
