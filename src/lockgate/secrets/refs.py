"""Credential references: `env:NAME`, `file:PATH` and `store:NAME`, resolved to the secret.

The manifest never holds a secret, only where to find it. Errors name the reference and never
the value it resolves to.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from lockgate.errors import SecretError

if TYPE_CHECKING:
    from lockgate.config.model import Manifest
    from lockgate.secrets.store import SecretStore

RefKind = Literal["env", "file", "store"]
KINDS: tuple[RefKind, ...] = ("env", "file", "store")


@dataclass(frozen=True, slots=True)
class SecretRef:
    """A parsed credential reference."""

    kind: RefKind
    target: str

    def __str__(self) -> str:
        return f"{self.kind}:{self.target}"


def parse_ref(ref: str) -> SecretRef:
    """Split `kind:target`; raise SecretError (without echoing `ref`) if it is not a reference."""
    kind, sep, target = ref.partition(":")
    if not sep or kind not in KINDS:
        # `ref` may be a pasted password: never repeat it.
        raise SecretError(
            "not a credential reference (expected env:NAME, file:PATH or store:NAME)",
            hint="store the secret with `lockgate secret set NAME` and write store:NAME",
        )
    if not target.strip():
        what = {"env": "an environment variable", "file": "a file", "store": "a stored secret"}
        raise SecretError(f"{kind}: names no target (expected {kind}: followed by {what[kind]})")
    if target != target.strip():
        raise SecretError(
            f"{ref!r} has spaces around its target (expected {kind}:{target.strip()})"
        )
    return SecretRef(kind, target)


def resolve_secret(ref: str, manifest: Manifest, store: SecretStore | None) -> str:
    """Return the secret `ref` points to, or raise SecretError naming the reference."""
    parsed = parse_ref(ref)
    if parsed.kind == "env":
        return _from_env(parsed)
    if parsed.kind == "file":
        return _from_file(parsed, manifest)
    if store is None:
        raise SecretError(
            f"{parsed} needs the secret store, which is not open here",
            hint="open the store from the manifest's state directory (SecretStore.for_manifest)",
        )
    return store.get(parsed.target)


def _from_env(ref: SecretRef) -> str:
    value = os.environ.get(ref.target)
    if value is None:
        raise SecretError(
            f"{ref}: environment variable {ref.target} is not set",
            hint=f"export {ref.target} in the gateway's environment, or use store:NAME instead",
        )
    if value == "":
        raise SecretError(f"{ref}: environment variable {ref.target} is set but empty")
    return value


def _from_file(ref: SecretRef, manifest: Manifest) -> str:
    path = manifest.path(Path(ref.target).expanduser())
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise SecretError(
            f"{ref}: no such file {path}",
            hint="relative paths are resolved against the manifest's folder",
        ) from exc
    except IsADirectoryError as exc:
        raise SecretError(f"{ref}: {path} is a directory, not a file") from exc
    except PermissionError as exc:
        raise SecretError(
            f"{ref}: cannot read {path} (permission denied)",
            hint="make the file readable by the user the gateway runs as",
        ) from exc
    except OSError as exc:
        raise SecretError(
            f"{ref}: cannot read {path} ({exc.strerror or type(exc).__name__})"
        ) from exc
    except UnicodeDecodeError as exc:
        raise SecretError(f"{ref}: {path} is not UTF-8 text") from exc
    # Editors and `echo` add one trailing newline; the secret itself never ends with it.
    if text.endswith("\r\n"):
        text = text[:-2]
    elif text.endswith("\n"):
        text = text[:-1]
    if text == "":
        raise SecretError(f"{ref}: {path} is empty")
    return text
