"""SSH guardrails: may this principal run this command, open this file, forward this port?

Pure: requests are described by `SshRequest` (no bytes, no sockets). The manifest's
`ssh.rules` are tried in order and the first rule that matches the principal, the resource
and the request decides. Without a matching rule, commands, subsystems and file operations
are allowed and forwarding is refused.

Commands are split the way a POSIX shell would split them (`shlex` with shell punctuation):
`a; b && c | d` is four simple commands, each checked on its own; leading `VAR=x`
assignments and wrappers such as `sudo`, `env`, `nohup`, `timeout` are looked through, and
`sh -c '...'` and `$(...)` are parsed recursively. This is best effort: a shell can always
build a command at run time (`$x`, `eval`, scripts), which no gateway can see in advance.
"""

from __future__ import annotations

import posixpath
import re
import shlex
from dataclasses import dataclass
from fnmatch import fnmatchcase

from lockgate.config.model import Manifest
from lockgate.config.ssh import SshRule
from lockgate.model import Decision, DecisionKind, Principal

ALLOW = Decision(DecisionKind.ALLOW)
_KINDS = {"allow": DecisionKind.ALLOW, "deny": DecisionKind.DENY, "review": DecisionKind.REVIEW}

_OPERATORS = frozenset("();<>|&")
_REDIRECTIONS = frozenset({"<", ">", ">>", "<<", "<<<", "<>", ">|", "&>", "&>>", ">&", "<&"})
_SHELLS = frozenset({"sh", "bash", "dash", "zsh", "ksh", "ash", "busybox"})
# Programs that run their arguments as a command.
_WRAPPERS = frozenset(
    "sudo env nohup nice time exec command timeout doas setsid stdbuf ionice xargs builtin".split()
)
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
_SUBSTITUTION = re.compile(r"\$\(([^()]*)\)|`([^`]*)`")
_MAX_DEPTH = 4

Argv = tuple[str, ...]


class Unparsable(ValueError):
    """The command text is not valid shell syntax (e.g. an unbalanced quote)."""


@dataclass(frozen=True, slots=True)
class SshRequest:
    """Something an SSH client asks for, as policy sees it."""

    kind: str  # exec, shell, shell-line, subsystem, file, forward
    text: str = ""
    subsystem: str = ""
    path: str = ""
    direction: str = ""  # download, upload, modify, list
    forwarding: str = ""  # local, remote, agent, x11
    destination: str = ""  # HOST:PORT


def split_commands(text: str, depth: int = 0) -> list[Argv]:
    """The simple commands in a shell command line, wrappers looked through."""
    lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = ""
    try:
        tokens = list(lexer)
    except ValueError as exc:
        raise Unparsable(str(exc)) from None
    commands: list[Argv] = []
    current: list[str] = []
    skip_next = False
    for tok in tokens:
        if skip_next:
            skip_next = False
            continue
        if tok and set(tok) <= _OPERATORS:
            if tok in _REDIRECTIONS or tok.rstrip("&") in _REDIRECTIONS:
                skip_next = True  # the file name after a redirection is not an argument
                continue
            if current:
                commands.append(tuple(current))
            current = []
            continue
        current.append(tok)
    if current:
        commands.append(tuple(current))
    out: list[Argv] = []
    for argv in commands:
        out.extend(_unwrap(argv, depth))
    if depth < _MAX_DEPTH:
        for m in _SUBSTITUTION.finditer(text):
            inner = m.group(1) if m.group(1) is not None else m.group(2)
            out.extend(split_commands(inner, depth + 1))
    return out


def _unwrap(argv: Argv, depth: int) -> list[Argv]:
    args = list(argv)
    while args and _ASSIGNMENT.match(args[0]):
        args.pop(0)
    if not args:
        return []
    found: list[Argv] = [tuple(args)]
    prog = posixpath.basename(args[0])
    if prog in _WRAPPERS and len(args) > 1:
        rest = args[1:]
        # Skip the wrapper's options and assignments (and a value after -u/-n/-g/-C...).
        while rest and (rest[0].startswith("-") or _ASSIGNMENT.match(rest[0])):
            opt = rest.pop(0)
            if opt in ("-u", "-g", "-n", "-C", "-p", "-s", "-c", "-D", "-U", "-h") and rest:
                rest.pop(0)
        if prog == "timeout" and rest:
            rest.pop(0)  # the duration
        if rest:
            found.extend(_unwrap(tuple(rest), depth))
    elif prog in _SHELLS and depth < _MAX_DEPTH:
        for i, a in enumerate(args[1:-1], start=1):
            if a.startswith("-") and "c" in a[1:]:
                found.extend(split_commands(args[i + 1], depth + 1))
                break
    return found


def _argv_matches(pattern: Argv, argv: Argv) -> bool:
    prog = argv[0]
    if not (fnmatchcase(posixpath.basename(prog), pattern[0]) or fnmatchcase(prog, pattern[0])):
        return False
    return all(any(fnmatchcase(a, p) for a in argv[1:]) for p in pattern[1:])


@dataclass(frozen=True, slots=True)
class _Rule:
    rule: SshRule
    resources: frozenset[str]
    subjects: frozenset[str]
    groups: frozenset[str]
    commands: tuple[Argv, ...]

    def applies(self, principal: Principal, resource: str) -> bool:
        if "*" not in self.resources and resource not in self.resources:
            return False
        if not self.subjects and not self.groups:
            return True
        return (
            "*" in self.subjects
            or principal.subject in self.subjects
            or not self.groups.isdisjoint(principal.groups)
        )

    def decision(self, what: str) -> Decision:
        kind = _KINDS[self.rule.action]
        verb = {"allow": "allows", "deny": "denies", "review": "holds for review"}
        reason = self.rule.message or f"rule '{self.rule.name}' {verb[self.rule.action]} {what}"
        return Decision(kind, rule=self.rule.name, reason=reason)


def _compile(rule: SshRule) -> _Rule:
    patterns = []
    for text in rule.commands:
        words = tuple(shlex.split(text))
        if words:
            patterns.append(words)
    return _Rule(
        rule=rule,
        resources=frozenset(rule.resources),
        subjects=frozenset(rule.subjects),
        groups=frozenset(rule.groups),
        commands=tuple(patterns),
    )


# SFTP servers a client can run as a plain command (`sftp -s /usr/lib/openssh/sftp-server`).
SFTP_SERVERS = frozenset({"sftp-server"})


def runs_sftp_server(text: str) -> bool:
    """Whether an exec command line runs an SFTP server: its channel is SFTP, not bytes."""
    try:
        simple = split_commands(text)
    except Unparsable:
        return False
    return any(posixpath.basename(argv[0]) in SFTP_SERVERS for argv in simple if argv)


def _scp_transfer(argv: tuple[str, ...]) -> tuple[str, str, list[str]] | None:
    """`scp -f/-t PATH...` (the target's end of `scp -O`): direction and paths."""
    if posixpath.basename(argv[0]) != "scp":
        return None
    flags = "".join(a[1:] for a in argv[1:] if a.startswith("-") and a != "--")
    direction = "download" if "f" in flags else "upload" if "t" in flags else ""
    if not direction:
        return None
    paths = [a for a in argv[1:] if not a.startswith("-")]
    if "--" in argv:
        paths = list(argv[argv.index("--") + 1 :])
    return "scp -O", direction, paths


def _rsync_transfer(argv: tuple[str, ...]) -> tuple[str, str, list[str] | None] | None:
    """`rsync --server [--sender] OPTIONS . PATH...` (the target's end of `rsync -e ssh`).

    Direction and paths; paths None when they travel inside rsync's protocol (`-s`).
    """
    if posixpath.basename(argv[0]) != "rsync" or "--server" not in argv:
        return None
    direction = "download" if "--sender" in argv else "upload"
    args = list(argv[1:])
    rest = args[args.index("--") + 1 :] if "--" in args else [a for a in args if a[:1] != "-"]
    # rsync puts a "." before the paths; with --protect-args (-s) nothing follows it.
    if rest[:1] == ["."]:
        rest = rest[1:]
    # Short options, without the capability letters rsync appends after "e." (`-logDtpre.iLsfxC`).
    short = "".join(a[1:].split("e.")[0] for a in args if a[:1] == "-" and a[:2] != "--")
    protected = "s" in short or "--protect-args" in args or "--secluded-args" in args
    if protected and not rest:
        return "rsync -s", direction, None
    return "rsync", direction, rest


class SshPolicy:
    """Decides on SSH requests from the manifest's `ssh.rules`."""

    def __init__(self, manifest: Manifest) -> None:
        self._rules = tuple(_compile(r) for r in manifest.ssh.rules)

    def decide(self, principal: Principal, resource: str, request: SshRequest) -> Decision:
        rules = [r for r in self._rules if r.applies(principal, resource)]
        if request.kind == "exec":
            decision = self._command(rules, request)
            if decision.allowed and runs_sftp_server(request.text):
                # The SFTP subsystem by another door: its rules apply (and its guard runs).
                decision = self.decide(
                    principal, resource, SshRequest("subsystem", subsystem="sftp")
                )
            if decision.allowed:
                return self._transfer_commands(rules, request.text) or decision
            return decision
        if request.kind == "shell-line":
            # A `review` decision holds the typed line at the prompt (ssh_channel).
            return self._command(rules, request)
        if request.kind == "shell":
            for r in rules:
                if r.rule.shell:
                    return r.decision("an interactive shell")
            return ALLOW
        if request.kind == "subsystem":
            for r in rules:
                if any(fnmatchcase(request.subsystem, p) for p in r.rule.subsystems):
                    return r.decision(f"subsystem '{request.subsystem}'")
            return ALLOW
        if request.kind == "file":
            return self._file(rules, request)
        if request.kind == "forward":
            return self._forward(rules, request)
        return ALLOW

    def has_command_rules(self, principal: Principal, resource: str) -> bool:
        """Whether typed shell lines need checking at all for this session."""
        return any(
            r.commands and r.rule.action != "allow"
            for r in self._rules
            if r.applies(principal, resource)
        )

    def _command(self, rules: list[_Rule], request: SshRequest) -> Decision:
        with_commands = [r for r in rules if r.commands]
        if not with_commands:
            return ALLOW
        try:
            simple = split_commands(request.text)
        except Unparsable:
            if request.kind == "shell-line":
                return ALLOW  # best effort: a half-typed line is no command yet
            deny = next((r for r in with_commands if r.rule.action != "allow"), None)
            if deny is None:
                return ALLOW
            return Decision(
                DecisionKind.DENY,
                rule=deny.rule.name,
                reason="the command is not valid shell syntax (unbalanced quotes?), so rule "
                f"'{deny.rule.name}' cannot be checked; it is refused",
            )
        for argv in simple:
            for r in with_commands:
                if any(_argv_matches(p, argv) for p in r.commands):
                    d = r.decision(f"'{shlex.join(argv)[:200]}'")
                    if not d.allowed:
                        return d
                    break
        return ALLOW

    def _transfer_commands(self, rules: list[_Rule], text: str) -> Decision | None:
        """Path rules for file transfers that run as a command on the target.

        The original scp protocol (`scp -O`: `scp -f/-t PATH`) and rsync over ssh (`rsync
        --server [--sender] ... . PATH...`): their file data is not parsed (it is recorded
        as the exec's raw streams), but the paths they name are checked like SFTP requests,
        so neither is a way around a path or direction rule. rsync with `--protect-args`
        (`-s`) sends the names inside its own protocol: checked by direction only, and
        refused when a path rule could apply.
        """
        if not any(r.rule.paths or r.rule.directions for r in rules):
            return None
        try:
            simple = split_commands(text)
        except Unparsable:
            return None
        for argv in simple:
            found = _scp_transfer(argv) or _rsync_transfer(argv)
            if found is None:
                continue
            tool, direction, paths = found
            if paths is None:  # rsync -s: which files, only rsync itself knows
                d = self._file(rules, SshRequest("file", path="", direction=direction))
                if not d.allowed:
                    return Decision(d.kind, d.rule, f"{d.reason} ({tool})")
                blind = next(
                    (
                        r
                        for r in rules
                        if r.rule.paths
                        and r.rule.action != "allow"
                        and (not r.rule.directions or direction in r.rule.directions)
                    ),
                    None,
                )
                if blind is not None:
                    return Decision(
                        DecisionKind.DENY,
                        rule=blind.rule.name,
                        reason="rsync with --protect-args (-s) sends file names inside its "
                        f"own protocol, so rule '{blind.rule.name}' cannot check them; run it "
                        "without -s, or use scp or sftp",
                    )
                continue
            for path in paths or ["."]:
                d = self._file(rules, SshRequest("file", path=path, direction=direction))
                if not d.allowed:
                    return Decision(d.kind, d.rule, f"{d.reason} ({tool})")
        return None

    def _file(self, rules: list[_Rule], request: SshRequest) -> Decision:
        path = request.path
        normal = posixpath.normpath(path) if path else path
        for r in rules:
            rule = r.rule
            if not (rule.paths or rule.directions):
                continue
            if rule.directions and request.direction not in rule.directions:
                continue
            if rule.paths and not any(
                fnmatchcase(path, p) or fnmatchcase(normal, p) or fnmatchcase(normal + "/", p)
                for p in rule.paths
            ):
                continue
            return r.decision(f"{request.direction} of '{path}'")
        return ALLOW

    def _forward(self, rules: list[_Rule], request: SshRequest) -> Decision:
        for r in rules:
            rule = r.rule
            if request.forwarding not in rule.forwarding:
                continue
            if rule.destinations and not any(
                fnmatchcase(request.destination, d) for d in rule.destinations
            ):
                continue
            return r.decision(f"{request.forwarding} forwarding")
        what = {
            "local": "port forwarding (-L)",
            "remote": "remote forwarding (-R)",
            "agent": "agent forwarding (-A)",
            "x11": "X11 forwarding (-X)",
        }
        return Decision(
            DecisionKind.DENY,
            rule="",
            reason=f"{what.get(request.forwarding, 'forwarding')} is off on this gateway; "
            "ask an administrator for an ssh rule that allows it",
        )
