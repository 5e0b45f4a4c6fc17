"""Protocol-neutral errors. Each protocol maps these to its native error in one table."""

from __future__ import annotations


class LockgateError(Exception):
    """Base class: `message` is safe to show to the client (no secrets, no internals)."""

    def __init__(self, message: str, *, hint: str = "", rule: str = "", detail: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.rule = rule
        # More than the client is told, for the audit record and the log (never a secret).
        self.detail = detail


class AuthFailed(LockgateError):
    """The caller's credential is missing, malformed, expired, revoked or not trusted."""


class AccessDenied(LockgateError):
    """The principal may not reach this resource (now)."""


class UnknownResource(LockgateError):
    """No resource by that name is configured."""


class CommandDenied(LockgateError):
    """A guardrail refused a command."""


class ApprovalRejected(LockgateError):
    """A reviewer denied a held command."""


class ApprovalTimeout(LockgateError):
    """Nobody decided on a held command in time."""


class AuditUnavailable(LockgateError):
    """The audit store cannot take records; the gateway fails closed."""


class UpstreamError(LockgateError):
    """The target system is unreachable or refused the gateway's credential."""


class ConfigError(LockgateError):
    """The manifest is invalid; `message` names the file, line and key."""


class SecretError(LockgateError):
    """A credential reference cannot be resolved (the message never includes the value)."""
