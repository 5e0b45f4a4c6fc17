"""Upstream password authentication: the SCRAM-SHA-256 client against a server computed here.

The test's server side follows RFC 5802 step by step and is itself checked against the
RFC 7677 test vector, so the client is verified against an independent computation.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from lockgate.protocols.postgres.auth import SCRAM_SHA_256, ScramClient, md5_password
from lockgate.protocols.postgres.messages import ProtocolViolation

# RFC 7677, section 3.
RFC_CLIENT_NONCE = "rOprNGfwEbeRWgbNEkqO"
RFC_SERVER_FIRST = (
    b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
)
RFC_CLIENT_FINAL = (
    b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
    b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
)
RFC_SERVER_FINAL = b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="


class ScramServer:
    """The server's half of one SCRAM-SHA-256 exchange, written from RFC 5802 section 3."""

    def __init__(self, password: str, salt: bytes, iterations: int, nonce_suffix: str) -> None:
        salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
        client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
        self.stored_key = hashlib.sha256(client_key).digest()
        self.server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
        self.salt = salt
        self.iterations = iterations
        self.nonce_suffix = nonce_suffix
        self.client_first_bare = ""
        self.server_first = ""

    def first(self, client_first: bytes) -> bytes:
        text = client_first.decode()
        gs2, _, bare = text.partition(",,")
        assert gs2 == "n", "no channel binding expected"
        self.client_first_bare = bare
        client_nonce = dict(p.split("=", 1) for p in bare.split(","))["r"]
        self.server_first = (
            f"r={client_nonce}{self.nonce_suffix},"
            f"s={base64.b64encode(self.salt).decode()},i={self.iterations}"
        )
        return self.server_first.encode()

    def final(self, client_final: bytes) -> bytes:
        """Check the client's proof; the server-final message, or e=invalid-proof."""
        text = client_final.decode()
        without_proof, _, proof_b64 = text.rpartition(",p=")
        auth_message = f"{self.client_first_bare},{self.server_first},{without_proof}".encode()
        signature = hmac.new(self.stored_key, auth_message, hashlib.sha256).digest()
        proof = base64.b64decode(proof_b64)
        client_key = bytes(a ^ b for a, b in zip(proof, signature, strict=True))
        if hashlib.sha256(client_key).digest() != self.stored_key:
            return b"e=invalid-proof"
        server_sig = hmac.new(self.server_key, auth_message, hashlib.sha256).digest()
        return b"v=" + base64.b64encode(server_sig)


def _rfc_server() -> ScramServer:
    return ScramServer(
        "pencil",
        base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ=="),
        4096,
        "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0",
    )


def test_the_test_server_reproduces_the_rfc_7677_vector() -> None:
    server = _rfc_server()
    assert server.first(b"n,,n=user,r=" + RFC_CLIENT_NONCE.encode()) == RFC_SERVER_FIRST
    assert server.final(RFC_CLIENT_FINAL) == RFC_SERVER_FINAL


def test_client_math_reproduces_the_rfc_7677_vector() -> None:
    client = ScramClient("pencil", nonce=RFC_CLIENT_NONCE)
    # PostgreSQL ignores the SCRAM user name, so the client sends `n=`; the RFC example
    # names "user": put it in the bare message to compare byte for byte.
    client._first_bare = f"n=user,r={RFC_CLIENT_NONCE}"
    assert client.client_final(RFC_SERVER_FIRST) == RFC_CLIENT_FINAL
    client.verify_server_final(RFC_SERVER_FINAL)
    assert client.done


def test_client_first_message_as_postgresql_expects() -> None:
    client = ScramClient("pencil", nonce=RFC_CLIENT_NONCE)
    assert client.client_first() == b"n,,n=,r=rOprNGfwEbeRWgbNEkqO"
    assert SCRAM_SHA_256 == "SCRAM-SHA-256"


@pytest.mark.parametrize("password", ["pencil", "ünïcödé pass", "p,w=d", ""])
def test_full_exchange_against_the_test_server(password: str) -> None:
    server = ScramServer(password, b"0123456789abcdef", 4096, "serverpart")
    client = ScramClient(password)
    server_first = server.first(client.client_first())
    server_final = server.final(client.client_final(server_first))
    assert server_final.startswith(b"v=")
    assert not client.done
    client.verify_server_final(server_final)
    assert client.done


def test_wrong_password_is_rejected_by_the_server_and_reported() -> None:
    server = ScramServer("right", b"salt" * 4, 4096, "x")
    client = ScramClient("wrong")
    answer = server.final(client.client_final(server.first(client.client_first())))
    assert answer == b"e=invalid-proof"
    with pytest.raises(ProtocolViolation) as info:
        client.verify_server_final(answer)
    assert "invalid-proof" in info.value.message
    assert "wrong" not in info.value.message
    assert not client.done


def test_a_server_that_does_not_know_the_password_is_caught() -> None:
    # A fake upstream cannot produce the server signature without the stored keys.
    real = ScramServer("secret", b"salt" * 4, 4096, "x")
    fake = ScramServer("guess", b"salt" * 4, 4096, "x")
    client = ScramClient("secret")
    first = real.first(client.client_first())
    final = client.client_final(first)
    fake.first(client.client_first())
    fake.server_first = real.server_first
    forged = b"v=" + base64.b64encode(
        hmac.new(fake.server_key, b"anything", hashlib.sha256).digest()
    )
    with pytest.raises(ProtocolViolation) as info:
        client.verify_server_final(forged)
    assert "signature" in info.value.message
    assert not client.done
    client.verify_server_final(real.final(final))
    assert client.done


def test_nonces_are_fresh_and_safe_to_embed() -> None:
    nonces = {ScramClient("x").client_first() for _ in range(20)}
    assert len(nonces) == 20
    for first in nonces:
        nonce = first.decode().rpartition("r=")[2]
        assert len(nonce) >= 18
        assert "," not in nonce


def test_saslprep_normalises_the_password() -> None:
    server = ScramServer("IX", b"salt" * 4, 4096, "x")
    client = ScramClient("\u2168")  # ROMAN NUMERAL NINE, NFKC → "IX"
    answer = server.final(client.client_final(server.first(client.client_first())))
    assert answer.startswith(b"v=")


@pytest.mark.parametrize(
    "server_first",
    [
        b"r=someone-elses-nonce,s=c2FsdA==,i=4096",  # nonce does not extend ours
        b"r=NONCEx,s=c2FsdA==,i=0",  # no iterations
        b"r=NONCEx,s=c2FsdA==,i=-5",
        b"r=NONCEx,s=c2FsdA==,i=many",
        b"r=NONCEx,s=c2FsdA==",  # no iteration count
        b"r=NONCEx,i=4096",  # no salt
        b"s=c2FsdA==,i=4096",  # no nonce
        b"r=NONCEx,s=abc,i=4096",  # salt is not base64
        b"",
        b"\xff\xfe",
    ],
)
def test_malformed_server_first_is_a_protocol_violation(server_first: bytes) -> None:
    client = ScramClient("pw", nonce="NONCE")
    with pytest.raises(ProtocolViolation) as info:
        client.client_final(server_first)
    assert info.value.code == "08P01"


@pytest.mark.parametrize("server_final", [b"", b"x=1", b"v=***not base64***=", b"v=AAAA"])
def test_malformed_server_final_is_a_protocol_violation(server_final: bytes) -> None:
    server = ScramServer("pw", b"salt" * 4, 4096, "x")
    client = ScramClient("pw")
    client.client_final(server.first(client.client_first()))
    with pytest.raises(ProtocolViolation):
        client.verify_server_final(server_final)
    assert not client.done


def test_server_final_before_client_final_is_rejected() -> None:
    server = ScramServer("pw", b"salt" * 4, 4096, "x")
    client = ScramClient("pw")
    with pytest.raises(ProtocolViolation):
        client.verify_server_final(b"v=" + base64.b64encode(server.server_key))
    assert not client.done


def test_md5_password_matches_postgresql_formula() -> None:
    # PostgreSQL stores 'md5' + md5(password + user) and, on the wire, expects
    # 'md5' + md5(hex(stored) + salt): computed here independently of the client.
    stored = hashlib.md5(b"secretpostgres").hexdigest()
    expected = b"md5" + hashlib.md5(stored.encode() + b"\x01\x02\x03\x04").hexdigest().encode()
    assert md5_password("postgres", "secret", b"\x01\x02\x03\x04") == expected
    assert len(expected) == 35
    assert md5_password("postgres", "secret", b"\x01\x02\x03\x05") != expected
    assert md5_password("other", "secret", b"\x01\x02\x03\x04") != expected


def test_an_empty_server_signature_before_client_final_does_not_complete_the_exchange() -> None:
    # A fake upstream answering the initial response straight away with SASLFinal `v=`
    # (an empty signature) must not pass for a server that proved it knows the password.
    client = ScramClient("pw")
    client.client_first()
    with pytest.raises(ProtocolViolation):
        client.verify_server_final(b"v=")
    assert not client.done
