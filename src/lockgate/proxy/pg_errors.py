"""Every Lockgate error as a PostgreSQL ErrorResponse: one table, one place."""

from __future__ import annotations

from lockgate import errors
from lockgate.protocols.postgres import sqlstate

_CODES: dict[type[errors.LockgateError], str] = {
    errors.AuthFailed: sqlstate.INVALID_PASSWORD,
    errors.AccessDenied: sqlstate.INSUFFICIENT_PRIVILEGE,
    errors.UnknownResource: sqlstate.INVALID_CATALOG_NAME,
    errors.CommandDenied: sqlstate.INSUFFICIENT_PRIVILEGE,
    errors.ApprovalRejected: sqlstate.INSUFFICIENT_PRIVILEGE,
    errors.ApprovalTimeout: sqlstate.QUERY_CANCELED,
    errors.AuditUnavailable: sqlstate.SYSTEM_ERROR,
    errors.UpstreamError: sqlstate.CONNECTION_FAILURE,
    errors.SecretError: sqlstate.CONNECTION_FAILURE,
    errors.ConfigError: sqlstate.INTERNAL_ERROR,
}


def error_for(exc: errors.LockgateError) -> tuple[str, str, str]:
    """(SQLSTATE, message, hint) for a Lockgate error; messages never carry secrets."""
    code = sqlstate.INTERNAL_ERROR
    for cls in type(exc).__mro__:
        if cls in _CODES:
            code = _CODES[cls]
            break
    # Upstream errors may carry a more precise code chosen where they were raised.
    if isinstance(exc, errors.UpstreamError) and len(exc.rule) == 5:
        code = exc.rule
    message = exc.message
    if isinstance(exc, errors.AccessDenied | errors.CommandDenied) and exc.rule:
        message = f"{message} (rule: {exc.rule})"
    return code, f"lockgate: {message}", exc.hint
