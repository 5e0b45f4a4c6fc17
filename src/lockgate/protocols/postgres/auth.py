"""Client-side password authentication to an upstream server: SCRAM-SHA-256 and md5.

The gateway is the client here: it proves knowledge of the stored credential without
sending it (SCRAM) and checks the server's signature, so a fake upstream learns nothing.
Sans-IO: methods take the server's bytes and return the bytes to send.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import unicodedata

from lockgate.protocols.postgres.messages import ProtocolViolation

SCRAM_SHA_256 = "SCRAM-SHA-256"
# PostgreSQL's default is 4096. The key derivation runs on the gateway's event loop, so a
# hostile upstream must not be able to ask for minutes of work (100k rounds: ~50 ms).
MAX_SCRAM_ITERATIONS = 100_000


def md5_password(user: str, password: str, salt: bytes) -> bytes:
    """The md5 response: 'md5' + md5(md5(password + user) + salt), hex."""
    inner = hashlib.md5((password + user).encode()).hexdigest().encode()
    return b"md5" + hashlib.md5(inner + salt).hexdigest().encode()


def _saslprep(password: str) -> str:
    # PostgreSQL applies SASLprep but falls back to the raw bytes when it fails; NFKC covers
    # the normalisation step that matters for real passwords.
    return unicodedata.normalize("NFKC", password)


class ScramClient:
    """One SCRAM-SHA-256 exchange (RFC 5802 / 7677), without channel binding."""

    def __init__(self, password: str, nonce: str | None = None) -> None:
        self._password = _saslprep(password).encode()
        self._nonce = nonce or base64.b64encode(secrets.token_bytes(18)).decode()
        self._first_bare = f"n=,r={self._nonce}"
        self._server_signature = b""
        self._done = False

    def client_first(self) -> bytes:
        return ("n,," + self._first_bare).encode()

    def client_final(self, server_first: bytes) -> bytes:
        text = server_first.decode("utf-8", "replace")
        attrs = dict(part.split("=", 1) for part in text.split(",") if "=" in part)
        try:
            nonce, salt_b64, iterations = attrs["r"], attrs["s"], int(attrs["i"])
            salt = base64.b64decode(salt_b64)
        except (KeyError, ValueError) as exc:
            raise ProtocolViolation("upstream sent a malformed SCRAM server-first message") from exc
        if not nonce.startswith(self._nonce) or not 1 <= iterations <= MAX_SCRAM_ITERATIONS:
            raise ProtocolViolation("upstream SCRAM nonce or iteration count is invalid")
        salted = hashlib.pbkdf2_hmac("sha256", self._password, salt, iterations)
        client_key = hmac.digest(salted, b"Client Key", "sha256")
        stored_key = hashlib.sha256(client_key).digest()
        final_bare = f"c=biws,r={nonce}"
        auth_message = f"{self._first_bare},{text},{final_bare}".encode()
        signature = hmac.digest(stored_key, auth_message, "sha256")
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        server_key = hmac.digest(salted, b"Server Key", "sha256")
        self._server_signature = hmac.digest(server_key, auth_message, "sha256")
        return f"{final_bare},p={base64.b64encode(proof).decode()}".encode()

    def verify_server_final(self, server_final: bytes) -> None:
        if not self._server_signature:
            # Nothing to compare with yet: an empty `v=` would otherwise match.
            raise ProtocolViolation("upstream sent the SCRAM server-final message too early")
        text = server_final.decode("utf-8", "replace")
        if text.startswith("e="):
            raise ProtocolViolation(f"upstream SCRAM error: {text[2:]}")
        if not text.startswith("v="):
            raise ProtocolViolation("upstream sent a malformed SCRAM server-final message")
        try:
            received = base64.b64decode(text[2:].split(",")[0])
        except ValueError as exc:
            raise ProtocolViolation("upstream SCRAM server signature is not base64") from exc
        if not hmac.compare_digest(received, self._server_signature):
            raise ProtocolViolation("upstream SCRAM server signature does not match")
        self._done = True

    @property
    def done(self) -> bool:
        return self._done
