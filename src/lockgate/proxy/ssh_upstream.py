"""The gateway's own SSH login to a target: stored credential, pinned host key, no agent.

Nothing from the client's environment is used: no ~/.ssh/config, no default keys, no agent,
no known_hosts file. The target must present the host key the manifest pins (a `SHA256:`
fingerprint or the public key itself) before any credential is sent.
"""

from __future__ import annotations

import logging

import asyncssh

from lockgate.config.model import Manifest
from lockgate.config.ssh import SshResource
from lockgate.errors import SecretError, UpstreamError
from lockgate.proxy.ssh_transport import MAX_PACKET, WINDOW, tune_connection
from lockgate.secrets.refs import resolve_secret
from lockgate.secrets.store import SecretStore

log = logging.getLogger("lockgate.ssh")


class _PinnedHostKey(asyncssh.SSHClient):
    """Accepts exactly the host key whose fingerprint the manifest pins."""

    def __init__(self, fingerprint: str) -> None:
        self.fingerprint = fingerprint
        self.seen: str | None = None

    def connection_made(self, conn: asyncssh.SSHClientConnection) -> None:
        tune_connection(conn)

    def validate_host_public_key(
        self, host: str, addr: str, port: int, key: asyncssh.SSHKey
    ) -> bool:
        self.seen = key.get_fingerprint("sha256")
        return self.seen == self.fingerprint


_CIPHERS = (
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "chacha20-poly1305@openssh.com",
    "aes128-ctr",
    "aes256-ctr",
)


def fingerprint(public_key_line: str) -> str:
    """`SHA256:...` of an OpenSSH public key line."""
    return str(asyncssh.import_public_key(public_key_line).get_fingerprint("sha256"))


def load_credentials(
    resource: SshResource, manifest: Manifest, store: SecretStore | None
) -> tuple[asyncssh.SSHKey | None, str | None]:
    """The target's private key and/or password from their references; raises SecretError."""
    up = resource.upstream
    key = None
    if up.private_key is not None:
        text = resolve_secret(up.private_key, manifest, store)
        passphrase = (
            resolve_secret(up.passphrase, manifest, store) if up.passphrase is not None else None
        )
        try:
            key = asyncssh.import_private_key(text, passphrase)
        except (asyncssh.KeyImportError, ValueError):
            # The message of a failed import could quote key material: never show it.
            raise SecretError(
                f"{up.private_key} does not hold a usable private key "
                "(OpenSSH or PEM text; is a passphrase missing or wrong?)"
            ) from None
    password = resolve_secret(up.password, manifest, store) if up.password is not None else None
    return key, password


async def connect_target(
    resource: SshResource, key: asyncssh.SSHKey | None, password: str | None
) -> asyncssh.SSHClientConnection:
    """Log in to the target; raises UpstreamError with a message safe to show the client."""
    up = resource.upstream
    pinned = up.host_key
    trusted: list[asyncssh.SSHKey] = []
    algs: list[str] | tuple[()] = ()
    if not pinned.startswith("SHA256:"):
        pub = asyncssh.import_public_key(pinned)
        trusted.append(pub)
        algs = [pub.get_algorithm()]
        pinned = pub.get_fingerprint("sha256")
    client = _PinnedHostKey(pinned)
    methods = ",".join(
        m for m, have in (("publickey", key), ("password", password)) if have is not None
    )
    try:
        return await asyncssh.connect(
            up.host,
            up.port,
            username=up.user,
            client_factory=lambda: client,
            known_hosts=(trusted, [], []),
            server_host_key_algs=algs,
            client_keys=[key] if key is not None else None,
            password=password,
            preferred_auth=methods,
            agent_path=None,
            agent_forwarding=False,
            x11_forwarding=False,
            config=None,
            ignore_encrypted=True,
            connect_timeout=up.connect_timeout,
            # AES-GCM runs in OpenSSL (AES-NI); asyncssh's first choice, ChaCha20-Poly1305,
            # costs the relay about a third of its scp throughput.
            encryption_algs=_CIPHERS,
            keepalive_interval=30,
            encoding=None,
            window=WINDOW,
            max_pktsize=MAX_PACKET,
        )
    except asyncssh.HostKeyNotVerifiable:
        log.error(
            "target %s of resource %s presented host key %s, expected %s",
            up.host,
            resource.name,
            client.seen,
            pinned,
        )
        raise UpstreamError(
            f"the host key of resource '{resource.name}' does not match the pinned one",
            hint="tell an administrator: the target's key changed, or this is not the target",
            detail=f"presented {client.seen}, pinned {pinned}",
        ) from None
    except asyncssh.PermissionDenied:
        raise UpstreamError(
            f"the target of resource '{resource.name}' refused the gateway's credential",
            hint="tell an administrator: the stored key or password is not accepted",
        ) from None
    except (OSError, TimeoutError, asyncssh.Error) as exc:
        what = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise UpstreamError(
            f"cannot reach the target of resource '{resource.name}' ({what})",
            hint="retry in a moment; if it persists, tell an administrator",
        ) from None
