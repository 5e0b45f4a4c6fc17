"""A throwaway PostgreSQL cluster for upstream-authentication tests.

`initdb` in a temporary folder owned by the `postgres` OS user, on a free port, with TLS
(a test CA and a server certificate for 127.0.0.1/localhost generated here) and
`pg_hba.conf` rules that force SCRAM-SHA-256 for one role and md5 for another. The
`throwaway_cluster` fixture starts it once per test module and always stops it.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from tests.conftest import free_port

PG_BIN = Path("/usr/lib/postgresql/15/bin")
OS_USER = "postgres"
SCRAM_ROLE = "lg_scram_role"
MD5_ROLE = "lg_md5_role"
DATABASE = "lg_updb"


@dataclass
class Cluster:
    dir: Path
    port: int
    ca: Path  # the CA that signed the server certificate
    other_ca: Path  # a CA that did not
    scram_password: str
    md5_password: str

    def connect(self) -> psycopg.Connection[tuple[object, ...]]:
        """A superuser connection over the cluster's unix socket (trust)."""
        return psycopg.connect(
            host=str(self.dir), port=self.port, user=OS_USER, dbname=DATABASE, autocommit=True
        )


def _bin(name: str) -> str:
    path = PG_BIN / name
    return str(path) if path.exists() else (shutil.which(name) or name)


def _as_postgres(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    cmd = list(args) if os.geteuid() != 0 else ["runuser", "-u", OS_USER, "--", *args]
    return subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=timeout)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _ca(cn: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _server_cert(
    ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def start_cluster(certs_dir: Path) -> Cluster:
    """initdb, configure TLS and authentication, start, create the roles; caller stops it."""
    base = Path(tempfile.mkdtemp(prefix="lockgate-upstream-"))
    data = base / "data"
    pw_scram = "UPW-scram-" + secrets.token_urlsafe(12)
    pw_md5 = "UPW-md5-" + secrets.token_urlsafe(12)
    port = free_port()
    if os.geteuid() == 0:
        shutil.chown(base, OS_USER, OS_USER)
    base.chmod(0o700)
    cluster = Cluster(
        base, port, certs_dir / "ca.pem", certs_dir / "other-ca.pem", pw_scram, pw_md5
    )
    try:
        _as_postgres(_bin("initdb"), "-D", str(data), "-U", OS_USER, "-A", "trust", "--no-sync")
        ca_key, ca_cert = _ca("Lockgate test CA")
        _, other_cert = _ca("Some other CA")
        srv_key, srv_cert = _server_cert(ca_key, ca_cert)
        certs_dir.mkdir(parents=True, exist_ok=True)
        cluster.ca.write_bytes(_pem(ca_cert))
        cluster.other_ca.write_bytes(_pem(other_cert))
        (data / "server.crt").write_bytes(_pem(srv_cert))
        (data / "server.key").write_bytes(_key_pem(srv_key))
        (data / "server.key").chmod(0o600)
        if os.geteuid() == 0:
            for f in ("server.crt", "server.key"):
                shutil.chown(data / f, OS_USER, OS_USER)
        with (data / "postgresql.conf").open("a") as conf:
            conf.write(
                f"\nport = {port}\nlisten_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{base}'\n"
                "ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n"
                "fsync = off\nmax_connections = 30\nshared_buffers = 16MB\n"
            )
        (data / "pg_hba.conf").write_text(
            "local all all trust\n"
            f"host all {SCRAM_ROLE} 127.0.0.1/32 scram-sha-256\n"
            f"host all {MD5_ROLE} 127.0.0.1/32 md5\n"
        )
        _as_postgres(
            _bin("pg_ctl"),
            "-D",
            str(data),
            "-l",
            str(base / "server.log"),
            "-w",
            "-t",
            "30",
            "start",
        )
        with psycopg.connect(
            host=str(base), port=port, user=OS_USER, dbname="postgres", autocommit=True
        ) as c:
            c.execute(f"CREATE DATABASE {DATABASE}")
            c.execute("SET password_encryption = 'scram-sha-256'")
            c.execute(f"CREATE ROLE {SCRAM_ROLE} LOGIN PASSWORD '{pw_scram}'")
            c.execute("SET password_encryption = 'md5'")
            c.execute(f"CREATE ROLE {MD5_ROLE} LOGIN PASSWORD '{pw_md5}'")
            c.execute(f"GRANT ALL ON DATABASE {DATABASE} TO {SCRAM_ROLE}, {MD5_ROLE}")
    except BaseException:
        stop_cluster(cluster)
        raise
    return cluster


def stop_cluster(cluster: Cluster) -> None:
    data = cluster.dir / "data"
    if (data / "postmaster.pid").exists():
        try:
            _as_postgres(_bin("pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
        except subprocess.CalledProcessError:
            pass
    shutil.rmtree(cluster.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def throwaway_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A started throwaway cluster for one test module; stopped and removed afterwards."""
    if shutil.which("runuser") is None and os.geteuid() == 0:
        pytest.skip("runuser is needed to run initdb as the postgres user")
    if not (PG_BIN / "initdb").exists() and shutil.which("initdb") is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
    cluster = start_cluster(tmp_path_factory.mktemp("upstream-certs"))
    try:
        yield cluster
    finally:
        stop_cluster(cluster)
