"""SSH sessions through the admin API: the shell recording, and an admin ending a live shell."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from tests.conftest import free_port
from tests.integration.admin.conftest import console_url, wait_for
from tests.integration.ssh.conftest import (
    SshGateway,
    Target,
    finish,
    ssh_manifest,
    sshd,  # noqa: F401  (the fixture)
    start_ssh_gateway,
)
from tests.integration.ssh.test_shell_sessions import Terminal

pytestmark = pytest.mark.ssh


@pytest.fixture(scope="module")
def ssh_admin(
    tmp_path_factory: pytest.TempPathFactory,
    sshd: Target,  # noqa: F811
) -> Iterator[tuple[SshGateway, str]]:
    manifest: dict[str, Any] = ssh_manifest(free_port(), sshd)
    manifest["identity"] = {"sessions": {"check_interval": "1s"}}
    manifest["admin"] = {"listen": f"127.0.0.1:{free_port()}", "roles": {"admin": ["secops"]}}
    gw = start_ssh_gateway(tmp_path_factory.mktemp("ssh-admin"), manifest, sshd)
    try:
        yield gw, console_url(gw)  # type: ignore[arg-type]
    finally:
        gw.stop()


def _client(url: str, token: str) -> httpx.Client:
    return httpx.Client(
        base_url=url, verify=False, timeout=30, headers={"Authorization": f"Bearer {token}"}
    )


def _session_of(c: httpx.Client, subject: str, **params: str) -> dict[str, Any] | None:
    items = c.get("/api/sessions", params={"subject": subject, **params}).json()["items"]
    return items[0] if items else None


def test_shell_recording_downloads_as_asciicast(ssh_admin: tuple[SshGateway, str]) -> None:
    gw, url = ssh_admin
    term = Terminal(gw, gw.token("rec-user"))
    term.wait_first_output()
    term.type("echo admin-$((6*7))\r")
    term.expect(b"admin-42\r\n")
    term.type("exit 0\r")
    assert term.finish() == 0
    with _client(url, gw.token("boss", ("secops",))) as c:
        session = wait_for(
            "the ended shell session",
            lambda: (s := _session_of(c, "rec-user")) and not s["live"] and s,
        )
        assert session["protocol"] == "ssh" and session["has_recording"] is True
        got = c.get(f"/api/sessions/{session['id']}/recording")
        assert got.status_code == 200
        assert got.headers["content-type"] == "application/x-asciicast"
        header, *events = got.text.splitlines()
        assert json.loads(header)["version"] == 2
        output = "".join(json.loads(e)[2] for e in events if json.loads(e)[1] == "o")
        assert "admin-42" in output
    with _client(url, gw.token("rec-user")) as own:
        assert own.get(f"/api/sessions/{session['id']}/recording").status_code == 200
    with _client(url, gw.token("nosy")) as other:
        assert other.get(f"/api/sessions/{session['id']}/recording").status_code == 404


def test_admin_ends_a_live_ssh_session(ssh_admin: tuple[SshGateway, str]) -> None:
    gw, url = ssh_admin
    proc = gw.ssh_popen(gw.token("live-user"), "echo started; sleep 60")
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"started\n"
    with _client(url, gw.token("boss", ("secops",))) as c:
        session = wait_for("the live session", lambda: _session_of(c, "live-user", live="true"))
        ended = c.post(f"/api/sessions/{session['id']}/end", json={"reason": "INC-SSH"})
        assert ended.status_code == 202, ended.text
        code, _, err = finish(proc)
        assert code != 0
        assert b"lockgate: session ended: ended by administrator boss: INC-SSH" in err
        final = wait_for(
            "the end in the audit",
            lambda: (
                (s := _session_of(c, "live-user")) and s["end_reason"] == "ended_by_admin" and s
            ),
        )
        assert final["live"] is False
