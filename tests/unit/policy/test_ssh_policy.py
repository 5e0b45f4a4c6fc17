"""SSH guardrails: shell-aware command splitting and first-match rules."""

from __future__ import annotations

from typing import Any

import pytest

from lockgate.config.model import Manifest
from lockgate.model import DecisionKind, Principal
from lockgate.policy.ssh import (
    SshPolicy,
    SshRequest,
    Unparsable,
    runs_sftp_server,
    split_commands,
)


def _policy(*rules: dict[str, Any]) -> SshPolicy:
    manifest = Manifest.model_validate({"ssh": {"rules": list(rules)}})
    return SshPolicy(manifest)


ALICE = Principal("alice", frozenset({"ops"}))
BOB = Principal("bob", frozenset({"contractors"}))


def test_split_commands_sees_every_simple_command() -> None:
    assert split_commands("ls -l /tmp") == [("ls", "-l", "/tmp")]
    assert split_commands("a; b && c | d || e & f") == [
        ("a",),
        ("b",),
        ("c",),
        ("d",),
        ("e",),
        ("f",),
    ]
    assert split_commands("echo 'a; rm -rf /'") == [("echo", "a; rm -rf /")]
    # File names after redirections are not arguments ("2>err" leaves a stray "2").
    assert split_commands("cat < in > out") == [("cat",)]


def test_split_commands_looks_through_wrappers_and_nested_shells() -> None:
    found = split_commands("FOO=1 sudo -u root env X=2 nohup rm -rf /x")
    assert ("rm", "-rf", "/x") in found
    assert ("rm", "-r", "/y") in split_commands("bash -c 'cd /; rm -r /y'")
    assert ("reboot",) in split_commands("echo $(reboot)")
    assert ("reboot",) in split_commands("echo `reboot`")
    assert ("halt",) in split_commands("timeout 5 halt")


def test_split_commands_refuses_unbalanced_quotes() -> None:
    with pytest.raises(Unparsable):
        split_commands("echo 'oops")


def test_command_rules_first_match_wins_and_default_allows() -> None:
    policy = _policy(
        {"name": "ok-rm-tmp", "action": "allow", "commands": ["rm /tmp/*"]},
        {"name": "no-rm", "commands": ["rm"]},
        {"name": "no-rf", "commands": ["* -rf"]},
    )

    def decide(text: str) -> DecisionKind:
        return policy.decide(ALICE, "web", SshRequest("exec", text=text)).kind

    assert decide("ls") is DecisionKind.ALLOW
    assert decide("rm /tmp/x") is DecisionKind.ALLOW
    assert decide("/bin/rm /etc/x") is DecisionKind.DENY
    assert decide("ls; rm /etc/x") is DecisionKind.DENY
    assert decide("chown -rf x") is DecisionKind.DENY
    d = policy.decide(ALICE, "web", SshRequest("exec", text="echo 'unbalanced"))
    assert d.kind is DecisionKind.DENY and "not valid shell syntax" in d.reason
    # A half-typed shell line is not a command yet.
    line = SshRequest("shell-line", text="echo 'unbalanced")
    assert policy.decide(ALICE, "web", line).allowed


def test_rules_select_principals_and_resources() -> None:
    policy = _policy(
        {"name": "c", "groups": ["contractors"], "resources": ["db1"], "commands": ["*"]}
    )
    req = SshRequest("exec", text="ls")
    assert not policy.decide(BOB, "db1", req).allowed
    assert policy.decide(BOB, "db2", req).allowed
    assert policy.decide(ALICE, "db1", req).allowed
    assert policy.has_command_rules(BOB, "db1")
    assert not policy.has_command_rules(ALICE, "db1")


def test_file_rules_by_path_and_direction() -> None:
    policy = _policy(
        {"name": "etc", "paths": ["/etc/*"], "directions": ["download"]},
        {"name": "ro", "groups": ["contractors"], "directions": ["upload", "modify"]},
    )

    def decide(who: Principal, path: str, direction: str) -> bool:
        req = SshRequest("file", path=path, direction=direction)
        return policy.decide(who, "web", req).allowed

    assert not decide(ALICE, "/etc/shadow", "download")
    assert not decide(ALICE, "/etc/../etc/shadow", "download")
    assert decide(ALICE, "/etc/motd", "upload")
    assert decide(ALICE, "/home/a", "download")
    assert not decide(BOB, "/home/b", "upload")
    assert decide(BOB, "/home/b", "download")


def test_forwarding_is_refused_unless_a_rule_allows_it() -> None:
    policy = _policy(
        {"name": "pg", "action": "allow", "forwarding": ["local"],
         "destinations": ["db:5432"]},
    )  # fmt: skip
    fwd = SshRequest("forward", forwarding="local", destination="db:5432")
    assert policy.decide(ALICE, "web", fwd).allowed
    other = SshRequest("forward", forwarding="local", destination="db:22")
    d = policy.decide(ALICE, "web", other)
    assert not d.allowed and "port forwarding (-L) is off" in d.reason
    agent = SshRequest("forward", forwarding="agent")
    assert not policy.decide(ALICE, "web", agent).allowed


def test_subsystem_rules() -> None:
    policy = _policy({"name": "no-sftp", "subsystems": ["sftp"]})
    assert not policy.decide(ALICE, "w", SshRequest("subsystem", subsystem="sftp")).allowed
    assert policy.decide(ALICE, "w", SshRequest("subsystem", subsystem="other")).allowed


def test_review_holds_exec_commands_and_typed_lines() -> None:
    policy = _policy(
        {"name": "hold-deploys", "action": "review", "commands": ["deploy *"]},
    )
    held = policy.decide(ALICE, "web", SshRequest("exec", text="cd /srv && deploy prod"))
    assert (held.kind, held.rule) == (DecisionKind.REVIEW, "hold-deploys")
    assert "holds for review 'deploy prod'" in held.reason
    typed = policy.decide(ALICE, "web", SshRequest("shell-line", text="deploy prod"))
    assert (typed.kind, typed.rule) == (DecisionKind.REVIEW, "hold-deploys")
    # Review rules turn on line checking in shells, so a shell is no way around the hold.
    assert policy.has_command_rules(ALICE, "web")
    assert policy.decide(ALICE, "web", SshRequest("exec", text="ls")).allowed


def test_remote_forwarding_destinations_name_where_the_target_listens() -> None:
    policy = _policy(
        {"name": "r", "action": "allow", "forwarding": ["remote"], "destinations": ["127.0.0.1:*"]}
    )
    ok = SshRequest("forward", forwarding="remote", destination="127.0.0.1:8080")
    assert policy.decide(ALICE, "web", ok).allowed
    wide = SshRequest("forward", forwarding="remote", destination="0.0.0.0:8080")
    assert not policy.decide(ALICE, "web", wide).allowed


def test_legacy_scp_paths_meet_the_sftp_path_rules() -> None:
    policy = _policy(
        {"name": "no-etc-download", "paths": ["/etc/*"], "directions": ["download"]},
        {"name": "no-uploads", "groups": ["contractors"], "directions": ["upload"]},
    )
    fetch = policy.decide(ALICE, "web", SshRequest("exec", text="scp -f /etc/shadow"))
    assert (fetch.kind, fetch.rule) == (DecisionKind.DENY, "no-etc-download")
    assert fetch.reason.endswith("(scp -O)")
    tree = policy.decide(ALICE, "web", SshRequest("exec", text="scp -r -f -- /etc"))
    assert tree.rule == "no-etc-download"
    assert policy.decide(ALICE, "web", SshRequest("exec", text="scp -f /srv/a")).allowed
    assert policy.decide(ALICE, "web", SshRequest("exec", text="scp -t /srv/")).allowed
    upload = policy.decide(BOB, "web", SshRequest("exec", text="scp -v -t /srv/"))
    assert upload.rule == "no-uploads"


def test_rsync_over_ssh_paths_meet_the_sftp_path_rules() -> None:
    policy = _policy(
        {"name": "no-etc-download", "paths": ["/etc/*"], "directions": ["download"]},
        {"name": "no-uploads", "groups": ["contractors"], "directions": ["upload"]},
    )

    def decide(who: Principal, text: str) -> tuple[DecisionKind, str, str]:
        d = policy.decide(who, "web", SshRequest("exec", text=text))
        return d.kind, d.rule, d.reason

    # What `rsync -a HOST:/etc/shadow .` and `rsync -a src/ HOST:/srv/` run on the target.
    fetch = decide(ALICE, "rsync --server --sender -logDtpre.iLsfxCIvu . /etc/shadow")
    assert fetch[:2] == (DecisionKind.DENY, "no-etc-download") and fetch[2].endswith("(rsync)")
    many = "rsync --server --sender -logDtpre.iLsfxCIvu . /srv/a /etc/passwd"
    assert decide(ALICE, many)[1] == "no-etc-download"
    ok = DecisionKind.ALLOW
    assert decide(ALICE, "rsync --server --sender -logDtpre.iLsfxCIvu . /srv/a")[0] is ok
    assert decide(ALICE, "rsync --server -logDtpre.iLsfxCIvu . /srv/")[0] is ok
    assert decide(BOB, "rsync --server -logDtpre.iLsfxCIvu . /srv/")[1] == "no-uploads"
    # -s (--protect-args): the names travel inside rsync's protocol. A direction rule still
    # applies; a path rule that could apply cannot be checked, so it refuses.
    assert decide(BOB, "rsync --server -slogDtpre.iLsfxCIvu")[1] == "no-uploads"
    blind = decide(ALICE, "rsync --server --sender -slogDtpre.iLsfxCIvu")
    assert blind[:2] == (DecisionKind.DENY, "no-etc-download")
    assert "--protect-args" in blind[2]
    assert decide(ALICE, "rsync --server -slogDtpre.iLsfxCIvu")[0] is ok  # upload
    # The capability letters after "e." are not options ("s" there is not -s).
    assert decide(ALICE, "rsync --server --sender -le.iLsfxC . /srv/x")[0] is ok
    # Not rsync's server end: a plain command naming rsync is left to command rules.
    assert decide(ALICE, "rsync --version")[0] is ok


def test_an_sftp_server_run_as_a_command_meets_the_sftp_subsystem_rules() -> None:
    policy = _policy({"name": "no-sftp", "groups": ["contractors"], "subsystems": ["sftp"]})
    server = SshRequest("exec", text="/usr/lib/openssh/sftp-server -l INFO")
    refused = policy.decide(BOB, "web", server)
    assert (refused.kind, refused.rule) == (DecisionKind.DENY, "no-sftp")
    wrapped = SshRequest("exec", text="sh -c 'exec /usr/libexec/sftp-server'")
    assert policy.decide(BOB, "web", wrapped).rule == "no-sftp"
    assert policy.decide(ALICE, "web", server).allowed
    assert policy.decide(BOB, "web", SshRequest("exec", text="ls /srv")).allowed
    assert runs_sftp_server("/usr/lib/openssh/sftp-server")
    assert not runs_sftp_server("echo sftp-server")
    assert not runs_sftp_server("cat 'unbalanced")


def test_shell_rules_govern_opening_an_interactive_shell() -> None:
    policy = _policy(
        {"name": "ops-shells", "action": "allow", "groups": ["ops"], "shell": True},
        {"name": "shells-reviewed", "action": "review", "shell": True, "commands": ["sudo"]},
    )
    shell = SshRequest("shell", text="shell (pty xterm 80x24)")
    assert policy.decide(ALICE, "web", shell).allowed  # ops: the allow rule comes first
    held = policy.decide(BOB, "web", shell)
    assert (held.kind, held.rule) == (DecisionKind.REVIEW, "shells-reviewed")
    assert "an interactive shell" in held.reason
    # A shell rule says nothing about exec commands; its commands do.
    assert policy.decide(BOB, "web", SshRequest("exec", text="ls")).allowed
    assert policy.decide(BOB, "web", SshRequest("exec", text="sudo ls")).kind is DecisionKind.REVIEW
    # No shell rule: shells are allowed (command rules still check typed lines).
    assert _policy({"name": "x", "commands": ["rm"]}).decide(BOB, "web", shell).allowed


def test_a_shell_rule_is_a_rule_and_review_takes_shells() -> None:
    _policy({"name": "no-shells", "shell": True})
    _policy({"name": "held-shells", "action": "review", "shell": True})
    with pytest.raises(ValueError, match="review holds exec commands and shells only"):
        _policy({"name": "bad", "action": "review", "shell": True, "subsystems": ["sftp"]})
    with pytest.raises(ValueError, match="commands, shell, subsystems"):
        _policy({"name": "empty"})
