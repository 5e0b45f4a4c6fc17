"""Interactive shells through a pty: relayed, recorded as asciicast v2, lines governed."""

from __future__ import annotations

import os
import select
import subprocess
import time
from pathlib import Path

import pytest
from tests.integration.ssh.conftest import SshGateway, ended_session

from lockgate.proxy.ssh_recording import read_cast

pytestmark = pytest.mark.ssh


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
