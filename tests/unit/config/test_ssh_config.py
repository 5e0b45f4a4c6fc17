"""The manifest's SSH parts: listeners and resources discriminated by protocol/type."""

from __future__ import annotations

import pytest

from lockgate.config.loader import load_manifest_text
from lockgate.config.model import Listener, Resource
from lockgate.config.ssh import SshListener, SshResource
from lockgate.errors import ConfigError

FP = "SHA256:" + "A" * 43

VALID = f"""\
listeners:
  - name: pg
    address: 127.0.0.1:6432
  - name: ssh
    protocol: ssh
    address: 127.0.0.1:2222
resources:
  - name: db
    upstream: {{database: app, user: app}}
  - name: web
    type: ssh
    upstream:
      host: 10.0.0.5
      user: deploy
      private_key: store:web-key
      host_key: {FP}
access:
  - name: ops
    resources: [db, web]
    groups: [ops]
ssh:
  record_input: true
  rules:
    - name: no-reboot
      commands: [reboot]
"""


def errors_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        load_manifest_text(text, "m.yaml")
    return exc.value.message.splitlines()


def test_postgres_and_ssh_side_by_side() -> None:
    m = load_manifest_text(VALID)
    assert [type(x) for x in m.listeners] == [Listener, SshListener]
    assert [type(r) for r in m.resources] == [Resource, SshResource]
    assert m.resource("db") is m.resources[0]
    assert m.resource("web") is None  # PostgreSQL only
    assert m.target("web") is m.resources[1]
    assert m.ssh.record_input and m.ssh.rules[0].name == "no-reboot"


def test_errors_inside_an_ssh_resource_name_key_and_line() -> None:
    text = VALID.replace(f"      host_key: {FP}\n", "      host_key: nope\n")
    (line,) = errors_of(text)
    assert line.startswith("m.yaml:16: resources[1].upstream.host_key: expected the target's")


def test_secrets_must_be_references_and_are_not_echoed() -> None:
    text = VALID.replace("private_key: store:web-key", "password: hunter2")
    (line,) = errors_of(text)
    assert "resources[1].upstream.password: must be a credential reference" in line
    assert "hunter2" not in line


def test_unknown_keys_list_the_ssh_models_keys() -> None:
    text = VALID.replace("    protocol: ssh\n", "    protocol: ssh\n    tls: {}\n")
    (line,) = errors_of(text)
    assert "listeners[1].tls: unknown key" in line and "host_key" in line


def test_unknown_protocol_and_rules_that_match_nothing() -> None:
    assert any(
        "listeners[1].protocol: expected one of: postgres, ssh" in e
        for e in errors_of(VALID.replace("protocol: ssh", "protocol: telnet"))
    )
    text = VALID.replace("      commands: [reboot]\n", "      message: hi\n")
    assert any("ssh.rules[0]: a rule must name what it governs" in e for e in errors_of(text))


def test_review_rules_govern_commands_and_shells_only() -> None:
    text = VALID.replace(
        "      commands: [reboot]\n", "      action: review\n      paths: [/etc/*]\n"
    )
    assert any("action: review holds exec commands and shells only" in e for e in errors_of(text))
    ok = VALID.replace("      commands: [reboot]\n", "      action: review\n      commands: [x]\n")
    assert load_manifest_text(ok).ssh.rules[0].action == "review"
    held = "      action: review\n      shell: true\n"
    shells = VALID.replace("      commands: [reboot]\n", held)
    assert load_manifest_text(shells).ssh.rules[0].shell
