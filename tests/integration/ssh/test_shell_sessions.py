"""Interactive shells through a pty: relayed, recorded as asciicast v2, lines governed."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.integration.ssh.conftest import GATEWAY_GROUP, SshGateway, Terminal, ended_session

from lockgate.proxy.ssh_recording import read_cast

pytestmark = pytest.mark.ssh


def _cast_output(gw: SshGateway, session: dict[str, object], seq: int) -> tuple[dict, str]:
    path = gw.dir / "state" / "recordings" / str(session["id"]) / f"{seq}.cast.gz"
    header, events = read_cast(path)
    return header, "".join(e[2] for e in events if e[1] == "o")


def test_shell_output_is_recorded_as_printed(gateway: SshGateway) -> None:
    term = Terminal(gateway, gateway.token("shell-user"))
    term.wait_first_output()
    term.type("echo shell-$((40+2))\r")
    term.expect(b"shell-42\r\n")
    term.type("exit 0\r")
    assert term.finish() == 0

    session = ended_session(gateway, "shell-user")
    (cmd,) = session["commands"]
    assert cmd["kind"] == "ssh.shell"
    assert cmd["text"].startswith("shell (pty xterm ")
    assert cmd["status"].startswith("exit 0; recording sha256:")
    header, output = _cast_output(gateway, session, cmd["seq"])
    assert header["version"] == 2 and header["width"] > 0 and header["height"] > 0
    assert "shell-42" in output
    # Everything the user's terminal showed is in the recording, in order.
    assert output == term.seen.decode("utf-8", "replace")

    replay = gateway.cli("ssh-replay", str(session["id"])[:8], "--no-wait")
    # (text mode: universal newlines turn \r\n and \r into \n)
    assert replay.stdout == output.replace("\r\n", "\n").replace("\r", "\n")
    # The audit's replay lists the session's commands and points at the shell player.
    trail = gateway.cli("replay", str(session["id"]))
    assert f"play its shells with: lockgate ssh-replay {session['id']}" in trail.stdout


def test_typed_line_matching_a_deny_rule_ends_the_session(
    gateway: SshGateway, tmp_path: Path
) -> None:
    marker = tmp_path / "still-here"
    marker.mkdir()
    term = Terminal(gateway, gateway.token("shell-denied"))
    term.wait_first_output()
    term.type("echo ready-$((1+1))\r")
    term.expect(b"ready-2\r\n")
    term.type(f"rm -rf {marker}\r")
    term.expect(b"lockgate: session ended: rule 'no-shutdown' denies")
    assert term.finish() == 126
    assert marker.exists()

    session = ended_session(gateway, "shell-denied", n_commands=2)
    by_kind = {c["kind"]: c for c in session["commands"]}
    assert by_kind["ssh.shell-line"]["text"] == f"rm -rf {marker}"
    assert by_kind["ssh.shell-line"]["decision"] == "deny"
    assert by_kind["ssh.shell"]["status"].startswith("ended by rule")


def test_a_shell_rule_refuses_the_shell_but_not_commands(gateway: SshGateway) -> None:
    token = gateway.token("auditor", groups=(GATEWAY_GROUP, "auditors"))
    r = gateway.ssh(token, input=b"echo should-not-run\n")
    assert r.returncode != 0
    assert b"should-not-run" not in r.stdout
    assert b"rule 'no-shells-for-auditors' denies an interactive shell" in r.stderr
    (shell,) = ended_session(gateway, "auditor", n_commands=1)["commands"]
    assert (shell["kind"], shell["decision"], shell["rule"]) == (
        "ssh.shell",
        "deny",
        "no-shells-for-auditors",
    )
    r = gateway.ssh(token, "echo", "commands-run")
    assert r.returncode == 0 and r.stdout == b"commands-run\n", r.stderr
