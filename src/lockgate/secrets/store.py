"""The secret store: upstream credentials encrypted at rest with AES-256-GCM.

Each value is encrypted with a fresh random 12-byte nonce and the secret's name as associated
data, so a ciphertext moved to another name does not decrypt. The 32-byte key comes from
$LOCKGATE_SECRET_KEY (base64) when set, otherwise from a key file in the state directory,
created on first use with mode 0600. A key file that group or others may access is refused.
The key is read only when a value is encrypted or decrypted; listing and deleting need none.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import stat
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import delete, insert, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from lockgate.errors import SecretError
from lockgate.secrets.tables import secrets

if TYPE_CHECKING:
    from lockgate.config.model import Manifest

KEY_ENV = "LOCKGATE_SECRET_KEY"
KEY_FILE_NAME = "secret-store.key"
KEY_BYTES = 32
NONCE_BYTES = 12

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@/-]{0,127}$")
_KEY_HINT = (
    'generate one with: python -c "import base64, os; '
    'print(base64.b64encode(os.urandom(32)).decode())"'
)


def check_name(name: str) -> str:
    """Return `name` if it is a valid secret name, else raise SecretError."""
    if not _NAME.match(name):
        raise SecretError(
            f"{name!r} is not a valid secret name "
            "(expected letters, digits, '_', '.', '-', '@', '/', at most 128 characters)"
        )
    return name


class SecretStore:
    """Encrypted name -> value storage in the state store's `secrets` table."""

    def __init__(self, engine: Engine, key_path: Path) -> None:
        self._engine = engine
        self.key_path = key_path
        self._aead: AESGCM | None = None
        self.key_created = False

    @classmethod
    def for_manifest(cls, manifest: Manifest, engine: Engine) -> SecretStore:
        """The store for `manifest`, keyed by `<state dir>/secret-store.key` (or the env key)."""
        return cls(engine, manifest.state_dir / KEY_FILE_NAME)

    @property
    def key_source(self) -> str:
        """Where the key comes from, for humans: the variable's name or the file's path."""
        return f"${KEY_ENV}" if os.environ.get(KEY_ENV) else str(self.key_path)

    # -- key handling -----------------------------------------------------------------------

    def _cipher(self) -> AESGCM:
        if self._aead is None:
            self._aead = AESGCM(self._load_key())
        return self._aead

    def _load_key(self) -> bytes:
        env = os.environ.get(KEY_ENV)
        if env:
            return _decode_key(env.strip(), f"${KEY_ENV}")
        return self._key_from_file()

    def _key_from_file(self) -> bytes:
        path = self.key_path
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return self._create_key_file()
        except OSError as exc:
            raise SecretError(
                f"cannot open the secret-store key file {path} ({exc.strerror})",
                hint=f"check its permissions, or set ${KEY_ENV}",
            ) from exc
        with os.fdopen(fd, "rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            if not stat.S_ISREG(mode):
                raise SecretError(f"the secret-store key file {path} is not a regular file")
            if mode & 0o077:
                raise SecretError(
                    f"the secret-store key file {path} is accessible by group or others "
                    f"(mode {stat.S_IMODE(mode):04o}); refusing to use it",
                    hint=f"run: chmod 600 {path}",
                )
            raw = f.read()
        return _decode_key(raw.decode("ascii", errors="replace").strip(), str(path))

    def _create_key_file(self) -> bytes:
        path = self.key_path
        key = os.urandom(KEY_BYTES)
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Write a complete temporary file, then link it into place: another process racing to
        # create the key either wins (and we read its key) or loses; nobody sees a half file.
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                os.fchmod(f.fileno(), 0o600)
                f.write(base64.b64encode(key) + b"\n")
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, path)
            except FileExistsError:
                return self._key_from_file()
        finally:
            tmp.unlink(missing_ok=True)
        self.key_created = True
        return key

    # -- values -----------------------------------------------------------------------------

    def set(self, name: str, value: str) -> None:
        """Encrypt and store `value` under `name`, replacing any earlier value."""
        check_name(name)
        if value == "":
            raise SecretError(f"refusing to store an empty value for secret {name!r}")
        nonce = os.urandom(NONCE_BYTES)
        ciphertext = self._cipher().encrypt(nonce, value.encode("utf-8"), name.encode("utf-8"))
        now = datetime.now(UTC)
        row = {"nonce": nonce, "ciphertext": ciphertext, "updated_at": now}
        for _attempt in range(2):
            try:
                with self._engine.begin() as conn:
                    done = conn.execute(
                        update(secrets).where(secrets.c.name == name).values(**row)
                    ).rowcount
                    if not done:
                        conn.execute(insert(secrets).values(name=name, created_at=now, **row))
                return
            except IntegrityError:
                # Another writer inserted the same name between our UPDATE and INSERT.
                continue
        raise SecretError(f"could not store secret {name!r}: concurrent writers; try again")

    def get(self, name: str) -> str:
        """Decrypt and return the value stored under `name`."""
        with self._engine.connect() as conn:
            row = conn.execute(
                select(secrets.c.nonce, secrets.c.ciphertext).where(secrets.c.name == name)
            ).first()
        if row is None:
            raise SecretError(
                f"no stored secret named {name!r}",
                hint=f"store it with `lockgate secret set {name}`; "
                "`lockgate secret list` shows what is stored",
            )
        try:
            plain = self._cipher().decrypt(
                bytes(row.nonce), bytes(row.ciphertext), name.encode("utf-8")
            )
        except (InvalidTag, ValueError) as exc:
            raise SecretError(
                f"stored secret {name!r} cannot be decrypted with this key",
                hint=f"it was stored with another key (key now from {self.key_source}); "
                f"restore that key or store the secret again",
            ) from exc
        return plain.decode("utf-8")

    def delete(self, name: str) -> bool:
        """Remove `name`; True if it existed."""
        with self._engine.begin() as conn:
            return bool(conn.execute(delete(secrets).where(secrets.c.name == name)).rowcount)

    def names(self) -> list[tuple[str, datetime]]:
        """Every stored name with its last update time (UTC), sorted by name. Never values."""
        with self._engine.connect() as conn:
            rows = conn.execute(
                select(secrets.c.name, secrets.c.updated_at).order_by(secrets.c.name)
            ).all()
        return [(r.name, _utc(r.updated_at)) for r in rows]


def _decode_key(text: str, source: str) -> bytes:
    try:
        key = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SecretError(
            f"the secret-store key in {source} is not valid base64", hint=_KEY_HINT
        ) from exc
    if len(key) != KEY_BYTES:
        raise SecretError(
            f"the secret-store key in {source} is {len(key)} bytes; expected {KEY_BYTES} "
            "(base64-encoded)",
            hint=_KEY_HINT,
        )
    return key


def _utc(value: datetime) -> datetime:
    # SQLite hands back naive datetimes; they were stored as UTC.
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
