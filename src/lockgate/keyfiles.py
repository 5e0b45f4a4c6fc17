"""Private key files in the state folder: created once, owner-only, never overwritten.

Several processes (workers, the CLI) may reach for the same key at the same moment; the
first to create the file wins (O_EXCL) and everyone else reads theirs, so two processes
never end up signing with different keys.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from lockgate.errors import LockgateError

T = TypeVar("T")


def new_ed25519() -> tuple[Ed25519PrivateKey, bytes]:
    """A fresh Ed25519 key and its unencrypted PKCS#8 PEM (the file is what protects it)."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return key, pem


def create_private_file(path: Path, make: Callable[[], tuple[T, bytes]]) -> T | None:
    """Create `path` (mode 0600) with the bytes of `make()` and return its value.

    None when the file already exists: `make` (a key generation) then never runs.
    """
    if path.exists():
        return None
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    # Made before the file exists, so a reader never finds it empty for long.
    value, data = make()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return None
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return value


def check_owner_only(path: Path, what: str, error: type[LockgateError] = LockgateError) -> None:
    """Refuse a key file that users other than its owner may read or write."""
    if os.name != "posix":
        return
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise error(
            f"{what} {path} is accessible by other users (mode {mode:04o})",
            hint=f"restrict it with `chmod 600 {path}`, then retry",
        )
