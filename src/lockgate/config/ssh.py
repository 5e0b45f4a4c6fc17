"""The manifest's SSH parts: listeners, targets and the `ssh:` guardrails section.

Kept apart from `model.py` (which imports it) so the PostgreSQL schema stays readable. An SSH
listener says `protocol: ssh`; an SSH resource says `type: ssh`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from lockgate.config.common import (
    NAME,
    ListenerBase,
    Strict,
    credential_reference,
)

_FINGERPRINT = re.compile(r"^SHA256:[A-Za-z0-9+/]{43}=?$")
_PUBLIC_KEY = re.compile(
    r"^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)) [A-Za-z0-9+/]+=*( .*)?$"
)


class SshListener(ListenerBase):
    """An SSH listener: `ssh -p PORT NAME#RESOURCE@HOST` with a token as the password."""

    name: str = "ssh"
    protocol: Literal["ssh"]
    address: str = "127.0.0.1:2222"
    # The gateway's host key (OpenSSH private key file). None: an Ed25519 key is generated
    # once and kept in the state folder, so clients see a stable key.
    host_key: Path | None = None


class SshUpstream(Strict):
    """How the gateway logs in to the target: its own credential, the target's pinned key."""

    host: str = "127.0.0.1"
    port: int = Field(default=22, ge=1, le=65535)
    user: str
    # Credential references (env:NAME, file:PATH, store:NAME): a private key (OpenSSH or
    # PEM text), its passphrase if any, and/or a password.
    private_key: str | None = None
    passphrase: str | None = None
    password: str | None = None
    # The target's host key: `SHA256:...` as `ssh-keygen -lf` prints it, or the public key
    # line itself (`ssh-ed25519 AAAA...`), which also fixes the key type to negotiate.
    host_key: str
    connect_timeout: float = Field(default=10.0, gt=0)

    @field_validator("private_key", "passphrase", "password")
    @classmethod
    def _refs(cls, v: str | None) -> str | None:
        return credential_reference(v)

    @field_validator("host_key")
    @classmethod
    def _host_key(cls, v: str) -> str:
        v = v.strip()
        if _FINGERPRINT.match(v) or _PUBLIC_KEY.match(v):
            return v
        raise ValueError(
            "expected the target's host key fingerprint (SHA256:..., as printed by "
            "`ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub`) or its public key line"
        )

    @model_validator(mode="after")
    def _some_credential(self) -> SshUpstream:
        if self.private_key is None and self.password is None:
            raise ValueError("name a credential: private_key (recommended) or password")
        return self


class SshResource(Strict):
    """A host reached over SSH through the gateway."""

    name: str
    type: Literal["ssh"]
    description: str = ""
    upstream: SshUpstream

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME.match(v):
            raise ValueError("letters, digits, '_', '.', '-' only, at most 63 characters")
        return v


Direction = Literal["download", "upload", "modify"]
Forwarding = Literal["local", "remote", "agent", "x11"]


class SshRule(Strict):
    """One SSH guardrail; the first rule matching a request decides (`deny` or `allow`).

    A rule matches a principal like an access rule does (no subjects and no groups: everyone)
    and a request by one of its lists: `commands` (exec commands and shell lines, as argv
    patterns), `shell` (opening an interactive shell), `subsystems`, `paths`/`directions`
    (SFTP) or `forwarding`.
    """

    name: str
    # `review` (commands and shells only): an exec command, or the opening of a shell,
    # waits for an approval rule's reviewers.
    action: Literal["deny", "allow", "review"] = "deny"
    resources: list[str] = ["*"]
    subjects: list[str] = []
    groups: list[str] = []
    # Shell-style argv patterns: the first word matches the program (its base name or full
    # path), every further word must match some argument. `rm -r*`, `shutdown`, `*`.
    commands: list[str] = []
    # The rule governs opening an interactive shell (a session with no command).
    shell: bool = False
    subsystems: list[str] = []
    # SFTP paths (shell-style; `/etc/*` covers everything below /etc) and directions.
    paths: list[str] = []
    directions: list[Direction] = []
    forwarding: list[Forwarding] = []
    # For `forwarding: [local]`: the HOST:PORT patterns (as the target resolves them) a
    # client may forward to; for `[remote]`: the HOST:PORT the target may listen on.
    destinations: list[str] = []
    # Shown to the user when the rule refuses something.
    message: str = ""

    @model_validator(mode="after")
    def _matches_something(self) -> SshRule:
        if not (
            self.commands
            or self.shell
            or self.subsystems
            or self.paths
            or self.directions
            or self.forwarding
        ):
            raise ValueError(
                "a rule must name what it governs: commands, shell, subsystems, paths, "
                "directions or forwarding"
            )
        if self.destinations and not {"local", "remote"} & set(self.forwarding):
            raise ValueError("destinations apply to forwarding: [local] and [remote] only")
        if self.action == "review" and (
            self.subsystems or self.paths or self.directions or self.forwarding
        ):
            raise ValueError(
                "action: review holds exec commands and shells only: give it commands and/or "
                "shell: true, and nothing else"
            )
        return self


class SshSettings(Strict):
    """Recording and guardrails for every SSH session."""

    # Record what users type in interactive shells (it may include passwords typed at
    # prompts); output and window sizes are always recorded.
    record_input: bool = False
    # Bytes of each exec/subsystem stream (per direction) kept in its raw log; the
    # checksum always covers the whole stream.
    log_cap_bytes: int = Field(default=1 << 20, ge=0)
    # File bytes a session may transfer over SFTP in total (None: no cap).
    max_transfer_bytes: int | None = Field(default=None, ge=0)
    rules: list[SshRule] = []
