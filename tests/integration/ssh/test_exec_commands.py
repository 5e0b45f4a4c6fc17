"""`ssh GATEWAY 'cmd'` through Lockgate with the real OpenSSH client and a real sshd."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from tests.integration.ssh.conftest import SshGateway, ended_session, refusals, wait_for

pytestmark = pytest.mark.ssh


def test_exec_relays_stdout_stderr_and_exit_status(gateway: SshGateway) -> None:
    token = gateway.token("exec-ok")
    r = gateway.ssh(token, "echo hello-$((6*7)); echo err >&2; exit 3")
    assert r.stdout == b"hello-42\n"
    assert r.stderr == b"err\n"
    assert r.returncode == 3


def test_exec_relays_binary_stdin_and_records_it_with_checksums(gateway: SshGateway) -> None:
    token = gateway.token("exec-stdin")
    data = bytes(range(256)) * 64
    r = gateway.ssh(token, "cat", input=data)
    assert r.returncode == 0, r.stderr
    assert r.stdout == data

    session = ended_session(gateway, "exec-stdin")
    assert session["protocol"] == "ssh"
    assert session["resource"] == "target"
    assert session["user_name"] == "alice#target"
    (cmd,) = session["commands"]
    assert (cmd["kind"], cmd["text"], cmd["decision"]) == ("ssh.exec", "cat", "allow")
    assert cmd["status"].startswith("exit 0; recording sha256:")
    assert cmd["bytes_out"] == len(data)

    folder = gateway.dir / "state" / "recordings" / session["id"]
    summary_bytes = (folder / f"{cmd['seq']}.json").read_bytes()
    assert cmd["status"].endswith(hashlib.sha256(summary_bytes).hexdigest())
    summary = json.loads(summary_bytes)
    assert summary["stdin"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert summary["stdout"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert (folder / f"{cmd['seq']}.in").read_bytes() == data
    assert (folder / f"{cmd['seq']}.out").read_bytes() == data


def test_denied_command_never_reaches_the_target(gateway: SshGateway, tmp_path: Path) -> None:
    marker = tmp_path / "keep-me"
    marker.mkdir()
    token = gateway.token("exec-denied")
    r = gateway.ssh(token, f"rm -rf {marker}")
    assert r.returncode == 126
    assert b"lockgate: refused: rule 'no-shutdown' denies" in r.stderr
    assert marker.exists()

    # Hidden in a compound command or behind sudo/sh -c: still found.
    for cmd in (f"true && rm -r {marker}", f"sh -c 'echo x; rm -rf {marker}'", "sudo reboot"):
        r = gateway.ssh(token, cmd)
        assert r.returncode == 126, cmd
    assert marker.exists()

    session = ended_session(gateway, "exec-denied")
    (cmd,) = session["commands"]
    assert cmd["decision"] == "deny"
    assert cmd["rule"] == "no-shutdown"
    assert cmd["status"] == "denied"


def test_wrong_token_is_refused_clearly_and_recorded(gateway: SshGateway) -> None:
    r = gateway.ssh("not-a-token", "true")
    assert r.returncode == 255
    assert b"lockgate:" in r.stderr
    assert b"not-a-token" not in r.stderr
    found = wait_for(
        lambda: [x for x in refusals(gateway) if x["code"] == "auth_failed"], "the refusal"
    )
    assert found[0]["resource"] == "target"


def test_unknown_resource_and_bad_login_form(gateway: SshGateway) -> None:
    token = gateway.token("exec-unknown")
    r = gateway.ssh(token, "true", resource="nowhere")
    assert r.returncode == 255
    assert b"resource 'nowhere'" in r.stderr
    wait_for(
        lambda: [x for x in refusals(gateway) if x["subject"] == "exec-unknown"],
        "the refusal of exec-unknown",
    )


def test_access_rule_denies_other_groups(gateway: SshGateway) -> None:
    token = gateway.token("stranger", groups=("nobody",))
    r = gateway.ssh(token, "true")
    assert r.returncode == 255
    assert b"not allowed on resource 'target'" in r.stderr
    found = wait_for(
        lambda: [x for x in refusals(gateway) if x["subject"] == "stranger"], "the refusal"
    )
    assert found[0]["code"] == "access_denied"


def test_gateway_host_key_is_stable_and_printed(gateway: SshGateway) -> None:
    first = gateway.cli("ssh-known-hosts").stdout
    assert first == gateway.known_hosts.read_text()
    assert first.startswith(f"[127.0.0.1]:{gateway.port} ssh-ed25519 ")
    fingerprint = gateway.cli("ssh-known-hosts", "--fingerprint").stdout.split()[1]
    assert fingerprint.startswith("SHA256:")
    assert fingerprint in gateway.log()
    assert os.stat(gateway.dir / "state" / "ssh-host-key-ssh").st_mode & 0o077 == 0
