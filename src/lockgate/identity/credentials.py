"""A person's stored logins: `$XDG_CONFIG_HOME/lockgate/credentials.json` (or `~/.config`).

The file holds, per issuer, the ID token, the refresh token, the ID token's expiry, the
token endpoint and the client (its id and, if any, the *reference* to its secret, never
the secret). The folder is 0700 and the file 0600, written whole to a temporary file and
renamed over the old one, so a crash never leaves half a file and no other user can read
it even for a moment. `current_token` refreshes an expired ID token with the refresh token
and stores the result before handing it out.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from lockgate.identity.login import EXPIRY_MARGIN, Client, LoginFailed, TokenSet, refresh

FILE_NAME = "credentials.json"


def config_dir() -> Path:
    """The user's Lockgate config folder (XDG base directory rules)."""
    base = os.environ.get("XDG_CONFIG_HOME", "")
    root = Path(base) if base and Path(base).is_absolute() else Path.home() / ".config"
    return root / "lockgate"


def credentials_path() -> Path:
    """Where `lockgate login` keeps tokens."""
    return config_dir() / FILE_NAME


@dataclass(frozen=True, slots=True)
class StoredLogin:
    """One issuer's login as kept on disk."""

    issuer: str
    client_id: str
    token_endpoint: str
    id_token: str
    refresh_token: str | None
    expires_at: int
    client_secret_ref: str | None = None
    scopes: tuple[str, ...] = ()

    def expired(self, now: float) -> bool:
        """Expired, or about to be (within `EXPIRY_MARGIN` seconds)."""
        return self.expires_at - EXPIRY_MARGIN <= now

    def with_tokens(self, tokens: TokenSet) -> StoredLogin:
        return replace(
            self,
            id_token=tokens.id_token,
            refresh_token=tokens.refresh_token,
            expires_at=tokens.expires_at,
        )


@dataclass
class Credentials:
    """Every stored login, and which issuer `env` and `psql` use by default."""

    logins: dict[str, StoredLogin]
    default: str | None = None

    def pick(self, issuer: str | None) -> StoredLogin:
        """The login for `issuer` (default: the latest); `LoginFailed` if there is none."""
        key = issuer or self.default
        if key is None or key not in self.logins:
            where = f" for {issuer}" if issuer else ""
            raise LoginFailed(
                f"you are not logged in{where}",
                hint="run `lockgate login` first" + (f" --issuer {issuer}" if issuer else ""),
            )
        return self.logins[key]


def _secure_dir(folder: Path) -> None:
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    if stat.S_IMODE(folder.stat().st_mode) != 0o700:
        folder.chmod(0o700)


def load(path: Path | None = None) -> Credentials:
    """Read the stored logins (none when the file does not exist)."""
    path = path or credentials_path()
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return Credentials({})
    except (OSError, ValueError):
        raise LoginFailed(
            f"{path} is unreadable or not JSON",
            hint=f"remove it with `lockgate logout --all` (or delete {path}) and log in again",
        ) from None
    logins: dict[str, StoredLogin] = {}
    try:
        for item in raw.get("logins", []):
            item["scopes"] = tuple(item.get("scopes", ()))
            login = StoredLogin(**item)
            logins[login.issuer] = login
    except (TypeError, AttributeError):
        raise LoginFailed(
            f"{path} is not a credentials file of this Lockgate version",
            hint="run `lockgate logout --all` and log in again",
        ) from None
    default = raw.get("default")
    return Credentials(logins, default if isinstance(default, str) else None)


def save(credentials: Credentials, path: Path | None = None) -> Path:
    """Write the logins atomically: folder 0700, file 0600 from its first byte."""
    path = path or credentials_path()
    _secure_dir(path.parent)
    body = {
        "default": credentials.default,
        "logins": [{**asdict(v), "scopes": list(v.scopes)} for v in credentials.logins.values()],
    }
    data = json.dumps(body, indent=2).encode()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return path


def remember(login: StoredLogin, path: Path | None = None) -> Path:
    """Store `login` (replacing the issuer's previous one) and make it the default."""
    credentials = load(path)
    credentials.logins[login.issuer] = login
    credentials.default = login.issuer
    return save(credentials, path)


def forget(issuer: str | None, *, everything: bool = False, path: Path | None = None) -> list[str]:
    """Remove one issuer's login (default: the current one), or all; the issuers removed."""
    path = path or credentials_path()
    credentials = load(path)
    if everything:
        removed = list(credentials.logins)
        if path.exists():
            path.unlink()
        return removed
    key = issuer or credentials.default
    if key is None or key not in credentials.logins:
        return []
    del credentials.logins[key]
    if credentials.default == key:
        credentials.default = next(iter(credentials.logins), None)
    if credentials.logins:
        save(credentials, path)
    else:
        path.unlink()
    return [key]


SecretResolver = Callable[[str], str]


def current_token(
    issuer: str | None = None,
    *,
    resolve_secret: SecretResolver | None = None,
    path: Path | None = None,
    now: Callable[[], float] = time.time,
) -> tuple[StoredLogin, str]:
    """The stored login and a valid ID token for it, refreshed (and stored) if expired."""
    credentials = load(path)
    login = credentials.pick(issuer)
    if not login.expired(now()):
        return login, login.id_token
    if login.refresh_token is None:
        raise LoginFailed(
            "your login has expired (the provider gave no refresh token)",
            hint="run `lockgate login` again",
        )
    secret = None
    if login.client_secret_ref is not None:
        if resolve_secret is None:
            raise LoginFailed("the client secret reference cannot be resolved here")
        secret = resolve_secret(login.client_secret_ref)
    client = Client(login.client_id, secret, login.scopes)
    tokens = refresh(login.token_endpoint, login.issuer, client, login.refresh_token)
    login = login.with_tokens(tokens)
    credentials.logins[login.issuer] = login
    save(credentials, path)
    return login, login.id_token


def as_dict(login: StoredLogin) -> dict[str, Any]:
    """What `lockgate login --status` may show: no token, no secret."""
    return {
        "issuer": login.issuer,
        "client_id": login.client_id,
        "expires_at": login.expires_at,
        "refreshable": login.refresh_token is not None,
    }
