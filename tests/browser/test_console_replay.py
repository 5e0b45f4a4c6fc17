"""Replaying an SSH session in the console: the asciinema player, its seek and speed controls.

The recording is a real one: OpenSSH's `ssh -tt` through a real `lockgate serve` to the
test sshd (the SSH integration tests' own fixtures, imported here), typed into like a
person at a keyboard. An admin then signs in with a gateway token and plays it back.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import pytest
from tests.browser.conftest import assert_accessible, screenshot, sign_in_with_token, wait_http
from tests.conftest import free_port
from tests.integration.ssh.conftest import (
    SshGateway,
    ended_session,
    ssh_manifest,
    sshd,  # noqa: F401  (the session's test sshd, shared with the SSH tests)
    start_ssh_gateway,
)
from tests.integration.ssh.test_shell_sessions import Terminal

pytestmark = [pytest.mark.browser, pytest.mark.ssh]


@pytest.fixture(scope="module")
def replay_gateway(
    tmp_path_factory: pytest.TempPathFactory,
    sshd: Any,  # noqa: F811
) -> Iterator[tuple[SshGateway, str]]:
    admin_port = free_port()
    manifest = ssh_manifest(free_port(), sshd)
    manifest["admin"] = {
        "listen": f"127.0.0.1:{admin_port}",
        "roles": {"admin": ["secops"]},
        "events_interval": 0.2,
    }
    # A longer start: this gateway also imports the admin web stack, and the module may run
    # first in the suite, on a loaded machine.
    gw = start_ssh_gateway(tmp_path_factory.mktemp("console-ssh"), manifest, sshd, timeout=90)
    url = f"https://127.0.0.1:{admin_port}"
    try:
        wait_http(f"{url}/api/auth/config")
        yield gw, url
    finally:
        gw.stop()


@pytest.fixture(scope="module")
def recorded(replay_gateway: tuple[SshGateway, str]) -> tuple[dict[str, Any], str]:
    """A shell session typed through the gateway; returns its audit record and a marker."""
    gw, _ = replay_gateway
    marker = f"replay-{secrets.token_hex(3)}"
    term = Terminal(gw, gw.token("shell-user"))
    term.wait_first_output()
    term.type(f"echo {marker}-$((6*7))\r")
    term.expect(f"{marker}-42".encode())
    term.type("exit 0\r")
    assert term.finish() == 0
    return ended_session(gw, "shell-user"), marker


def test_replay_an_ssh_recording(
    page: Any, replay_gateway: tuple[SshGateway, str], recorded: tuple[dict[str, Any], str]
) -> None:
    gw, url = replay_gateway
    session, marker = recorded
    sign_in_with_token(page, url, gw.token("sam", ("secops",)))
    assert "admin" in page.locator(".whoami").inner_text()

    page.get_by_role("navigation", name="Main").get_by_role("link", name="Sessions").click()
    page.get_by_label("Protocol").select_option("ssh")
    page.get_by_label("Identity").fill("shell-user")
    page.get_by_role("button", name="Search").click()
    row = page.locator("table.sessions tbody tr", has_text="shell-user")
    row.wait_for()
    assert "recorded" in row.inner_text()
    row.get_by_role("link").click()
    page.wait_for_url(f"{url}/sessions/{session['id']}")
    page.get_by_role("heading", name="Terminal replay").wait_for()
    # The timeline lists the shell as the session's one command.
    assert "shell (pty xterm" in page.get_by_test_id("timeline-entry").first.inner_text()

    controls = page.get_by_role("group", name="Replay controls")
    position = controls.get_by_label("Position")
    page.wait_for_function(
        "el => !el.disabled && Number(el.max) > 0", arg=position.element_handle()
    )  # the recording loaded and has a duration
    terminal = page.get_by_test_id("asciinema")

    # Faster playback, then play it through: the typed command and its output appear.
    controls.get_by_label("Speed").select_option("4")
    controls.get_by_role("button", name="Play").click()
    terminal.get_by_text(f"{marker}-42").first.wait_for(timeout=30_000)
    screenshot(page, "console-ssh-replay-playing")

    # Once it has played to the end, seek back to the start: the output is gone from the
    # screen; seek to the end: it is back.
    controls.get_by_role("button", name="Play").wait_for(timeout=60_000)
    position.fill("0")
    page.wait_for_function(
        "([el, m]) => !el.innerText.includes(m + '-42')",
        arg=[terminal.element_handle(), marker],
    )
    end = position.get_attribute("max")
    assert end is not None and float(end) > 0
    position.fill(end)
    terminal.get_by_text(f"{marker}-42").first.wait_for()
    assert_accessible(page, "the SSH replay page")
    screenshot(page, "console-ssh-replay")
