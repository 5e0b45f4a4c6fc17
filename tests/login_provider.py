"""Token and device endpoints on 127.0.0.1 for `lockgate login` tests, added to a `TestIssuer`.

`oidc-provider-mock` 0.3 serves the authorization-code flow but neither the device flow nor
ID tokens on refresh; this serves both, signing ID tokens with the `TestIssuer`'s key, so
the gateway trusts them like any other token of that issuer.
"""

from __future__ import annotations

import secrets
import subprocess
import sys
import urllib.parse
import urllib.request
from typing import Any

from tests.identity_provider import JsonHandler, LoopbackServer, TestIssuer, authorization_code

LOCKGATE = [sys.executable, "-m", "lockgate.cli"]

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"


class LoginEndpoints:
    """`/token` (refresh_token and device_code grants) and `/device` for `issuer`."""

    def __init__(
        self, issuer: TestIssuer, client_id: str = "lockgate-cli", sub: str = "dora"
    ) -> None:
        self.issuer = issuer
        self.client_id = client_id
        self.sub = sub
        self.claims: dict[str, Any] = {"groups": ["it"], "email": f"{sub}@example.com"}
        self.ttl = 600
        # Refresh tokens the endpoint accepts; each use rotates it to a new one.
        self.refresh_tokens: set[str] = set()
        # What successive device_code polls answer before success (OAuth error codes).
        self.device_answers: list[str] = []
        self.requests: list[dict[str, str]] = []
        self.authorizations: list[str | None] = []
        outer = self

        class Handler(JsonHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                form = dict(urllib.parse.parse_qsl(self.rfile.read(length).decode()))
                outer.requests.append(form)
                outer.authorizations.append(self.headers.get("Authorization"))
                if self.path == "/device":
                    self._send(200, outer._device())
                elif self.path == "/token":
                    status, body = outer._token(form)
                    self._send(status, body)
                else:
                    self._send(404, {"error": "not_found"})

        self._http = LoopbackServer(Handler)
        self.url = self._http.url
        issuer.discovery_extra.update(
            {
                "authorization_endpoint": f"{self.url}/authorize",
                "token_endpoint": f"{self.url}/token",
                "device_authorization_endpoint": f"{self.url}/device",
            }
        )

    def close(self) -> None:
        self._http.close()

    def id_token(self, ttl: int | None = None) -> str:
        """An ID token of this issuer for the client (negative `ttl`: already expired)."""
        ttl = self.ttl if ttl is None else ttl
        return self.issuer.token(sub=self.sub, aud=self.client_id, ttl=ttl, **self.claims)

    def new_refresh_token(self) -> str:
        token = secrets.token_urlsafe(16)
        self.refresh_tokens.add(token)
        return token

    def _device(self) -> dict[str, Any]:
        return {
            "device_code": "dev-" + secrets.token_hex(4),
            "user_code": "WDJB-MJHT",
            "verification_uri": f"{self.url}/activate",
            "interval": 1,
            "expires_in": 600,
        }

    def _token(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        grant = form.get("grant_type")
        if grant == "refresh_token":
            token = form.get("refresh_token", "")
            if token not in self.refresh_tokens:
                return 400, {"error": "invalid_grant"}
            self.refresh_tokens.discard(token)
        elif grant == DEVICE_GRANT:
            if self.device_answers:
                return 400, {"error": self.device_answers.pop(0)}
        else:
            return 400, {"error": "unsupported_grant_type"}
        return 200, {
            "token_type": "Bearer",
            "access_token": secrets.token_urlsafe(16),
            "id_token": self.id_token(),
            "refresh_token": self.new_refresh_token(),
            "expires_in": self.ttl,
        }


def browser_login(
    env: dict[str, str], provider: str, sub: str, *args: str
) -> subprocess.CompletedProcess[str]:
    """Run `lockgate login --no-browser`, then do what the person's browser would."""
    proc = subprocess.Popen(
        [*LOCKGATE, "login", "--no-browser", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stderr is not None
    seen: list[str] = []
    try:
        for line in proc.stderr:
            seen.append(line)
            if line.startswith("http"):
                break
        else:
            raise AssertionError(f"no login URL printed: {''.join(seen)}")
        url = urllib.parse.urlsplit(line.strip())
        assert f"{url.scheme}://{url.netloc}" == provider
        query = dict(urllib.parse.parse_qsl(url.query))
        assert query["code_challenge_method"] == "S256"
        redirect = authorization_code(provider, query, sub)
        assert urllib.parse.urlsplit(redirect).hostname == "127.0.0.1"
        with urllib.request.urlopen(redirect, timeout=10) as r:
            assert b"close this window" in r.read()
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, "".join(seen) + err)
