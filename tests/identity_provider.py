"""A small OIDC issuer of the tests' own on 127.0.0.1: discovery, JWKS, and token signing.

It serves what a real provider serves to a verifier (the discovery document and the key
set) over real HTTP, and signs tokens with any key it holds, so tests can rotate keys, use
ES256 and EdDSA, take the provider down, and forge the attacks a verifier must refuse.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


def _new_key(alg: str) -> PrivateKey:
    if alg.startswith(("RS", "PS")):
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if alg == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    if alg == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(alg)


def _public_jwk(key: PrivateKey, alg: str, kid: str) -> dict[str, Any]:
    if isinstance(key, rsa.RSAPrivateKey):
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    else:
        jwk = json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(key.public_key()))
    jwk.update({"kid": kid, "use": "sig", "alg": alg})
    return dict(jwk)


class JsonHandler(BaseHTTPRequestHandler):
    """Answers JSON (`_send`) and logs nothing."""

    def _send(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class LoopbackServer:
    """`handler` served on 127.0.0.1 (any free port) in a thread, until `close()`."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


class TestIssuer:
    """An issuer at `url` that publishes the keys named in `published`."""

    __test__ = False  # not a test class, despite its name

    def __init__(self) -> None:
        self.keys: dict[str, tuple[PrivateKey, str]] = {}
        self.published: list[str] = []
        self.down = False
        self.jwks_requests = 0
        self.discovery_requests = 0
        # Overrides for the discovery document (e.g. a different `issuer`).
        self.discovery_extra: dict[str, Any] = {}
        issuer = self
        outer = self

        class Handler(JsonHandler):
            def do_GET(self) -> None:
                if issuer.down:
                    self._send(503, {"error": "down"})
                    return
                if self.path == "/.well-known/openid-configuration":
                    outer.discovery_requests += 1
                    doc = {
                        "issuer": issuer.url,
                        "jwks_uri": f"{issuer.url}/jwks",
                        "id_token_signing_alg_values_supported": ["RS256", "ES256", "EdDSA"],
                        **issuer.discovery_extra,
                    }
                    self._send(200, doc)
                elif self.path == "/jwks":
                    outer.jwks_requests += 1
                    keys = [_public_jwk(*issuer.keys[k], k) for k in issuer.published]
                    self._send(200, {"keys": keys})
                else:
                    self._send(404, {"error": "not found"})

        self._http = LoopbackServer(Handler)
        self.url = self._http.url

    def close(self) -> None:
        self._http.close()

    def add_key(self, alg: str = "RS256", kid: str | None = None, publish: bool = True) -> str:
        """Create a key (published in the JWKS unless told otherwise); returns its kid."""
        kid = kid or f"{alg.lower()}-{secrets.token_hex(4)}"
        self.keys[kid] = (_new_key(alg), alg)
        if publish:
            self.published.append(kid)
        return kid

    def sign(
        self,
        claims: dict[str, Any],
        kid: str,
        *,
        with_kid: bool = True,
        headers: dict[str, Any] | None = None,
    ) -> str:
        key, alg = self.keys[kid]
        hdr = {"kid": kid} if with_kid else {}
        hdr.update(headers or {})
        return jwt.encode(claims, key, algorithm=alg, headers=hdr or None)

    def claims(
        self, sub: str = "alice", aud: str | list[str] = "lockgate", ttl: int = 300, **extra: Any
    ) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.url,
            "aud": aud,
            "sub": sub,
            "iat": now,
            "nbf": now,
            "exp": now + ttl,
            "jti": secrets.token_hex(8),
        }
        claims.update(extra)
        return claims

    def token(self, kid: str | None = None, **claims: Any) -> str:
        """A valid token signed by `kid` (default: the first published key)."""
        return self.sign(self.claims(**claims), kid or self.published[0])


# ---------------------------------------------------------------------------------------
# The `oidc-provider-mock` package: a real OIDC provider (authlib) for real ID tokens.


@contextlib.contextmanager
def mock_provider(users: dict[str, dict[str, Any]], *, token_max_age: int = 3600) -> Iterator[str]:
    """Run `oidc-provider-mock` on 127.0.0.1 in a subprocess; yields its issuer URL.

    A subprocess keeps authlib's own deprecation warnings (and its need for
    AUTHLIB_INSECURE_TRANSPORT on plain HTTP) out of the test process.
    """
    import socket
    import subprocess
    import sys
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    args = [sys.executable, "-m", "oidc_provider_mock", "--host", "127.0.0.1", "--port", str(port)]
    args += ["--token-max-age", str(token_max_age)]
    for sub, claims in users.items():
        args += ["--user-claims", json.dumps({"sub": sub, **claims})]
    proc = subprocess.Popen(
        args,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "NO_COLOR": "1", "PYTHONWARNINGS": "ignore"},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError("oidc-provider-mock exited during startup")
            try:
                with urllib.request.urlopen(f"{url}/.well-known/openid-configuration", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("oidc-provider-mock did not start in 30 s") from None
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def authorization_code(base_url: str, query: dict[str, str], sub: str) -> str:
    """Act as the person at the provider's login form; the redirect URL it sends back."""
    import urllib.error
    import urllib.parse
    import urllib.request

    class _NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None

    opener = urllib.request.build_opener(_NoRedirect)
    url = f"{base_url}/oauth2/authorize?{urllib.parse.urlencode(query)}"
    form = urllib.parse.urlencode({"sub": sub}).encode()
    try:
        opener.open(urllib.request.Request(url, data=form, method="POST"), timeout=10)
    except urllib.error.HTTPError as exc:
        if exc.code in (302, 303):
            return str(exc.headers["Location"])
        raise
    raise AssertionError("the provider did not redirect back")


def mock_id_token(base_url: str, sub: str, client_id: str = "lockgate") -> str:
    """A real ID token for `sub` from oidc-provider-mock (authorization-code flow)."""
    import urllib.parse
    import urllib.request

    redirect = "http://127.0.0.1:9/callback"
    location = authorization_code(
        base_url,
        {
            "client_id": client_id,
            "redirect_uri": redirect,
            "response_type": "code",
            "scope": "openid email",
            "state": "s",
        },
        sub,
    )
    code = urllib.parse.parse_qs(urllib.parse.urlsplit(location).query)["code"][0]
    form = urllib.parse.urlencode(
        {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect,
            "client_id": client_id,
            "client_secret": "unused",
        }
    ).encode()
    with urllib.request.urlopen(f"{base_url}/oauth2/token", data=form, timeout=10) as r:
        return str(json.loads(r.read())["id_token"])
