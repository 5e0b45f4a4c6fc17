"""Encrypted credential store and credential references (env:, file:, store:)."""

from __future__ import annotations

from lockgate.secrets.refs import SecretRef, parse_ref, resolve_secret
from lockgate.secrets.store import KEY_ENV, SecretStore

__all__ = ["KEY_ENV", "SecretRef", "SecretStore", "parse_ref", "resolve_secret"]
