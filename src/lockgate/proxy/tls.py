"""TLS contexts: the gateway's own listeners and its connections to upstream targets."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from lockgate.config.common import TLSListener
from lockgate.config.model import Listener, Manifest, UpstreamTLS


def ensure_self_signed(cert_path: Path, key_path: Path, hosts: list[str]) -> None:
    """Create a self-signed certificate for `hosts` unless one already exists."""
    if cert_path.exists() and key_path.exists():
        return
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Lockgate gateway (self-signed)")])
    alt: list[x509.GeneralName] = []
    for h in dict.fromkeys([*hosts, "localhost", "127.0.0.1", "::1"]):
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            alt.append(x509.DNSName(h))
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=825))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def listener_context(listener: Listener, manifest: Manifest) -> ssl.SSLContext | None:
    """The server-side TLS context for a listener, or None when TLS is disabled."""
    return server_context(listener.tls, manifest, listener.name, listener.host)


def server_context(
    tls: TLSListener, manifest: Manifest, name: str, host: str
) -> ssl.SSLContext | None:
    """A server-side TLS context (self-signed `STATE/tls/NAME.*` when no cert/key is given)."""
    if not tls.enabled:
        return None
    if tls.cert and tls.key:
        cert, key = manifest.path(tls.cert), manifest.path(tls.key)
    else:
        folder = manifest.state_dir / "tls"
        cert, key = folder / f"{name}.crt", folder / f"{name}.key"
        ensure_self_signed(cert, key, [host])
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(cert), str(key))
    return ctx


def upstream_context(tls: UpstreamTLS, manifest: Manifest) -> ssl.SSLContext | None:
    """The client-side TLS context for an upstream, following libpq's sslmode meanings."""
    if tls.mode == "disable":
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if tls.mode in ("verify-ca", "verify-full"):
        if tls.ca:
            ctx.load_verify_locations(cafile=str(manifest.path(tls.ca)))
        else:
            ctx.load_default_certs()
        ctx.check_hostname = tls.mode == "verify-full"
        ctx.verify_mode = ssl.CERT_REQUIRED
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx
