"""`lockgate login`: a person gets an ID token from their company's OpenID provider.

Theory of operation
-------------------
Authorization code with PKCE (RFC 7636, S256) on a loopback redirect (RFC 8252):

1. `discover` reads the provider's endpoints from `{issuer}/.well-known/openid-configuration`.
2. `AuthRequest.new` draws a fresh `state`, `nonce` and PKCE verifier; `authorization_url`
   is what the browser opens, redirecting back to `http://127.0.0.1:PORT/callback`.
3. `CallbackListener` answers exactly one request to `/callback` (anything else gets a 404)
   and closes; `code_from_callback` refuses a callback whose `state` is not ours or that
   carries an `error`.
4. `exchange_code` trades the code and the PKCE verifier for tokens; `TokenSet.check`
   refuses an ID token whose `iss`, `aud` or `nonce` is not what we asked for. (Its
   signature is checked by the gateway on every connection; here it came straight from the
   token endpoint.)

The device flow (RFC 8628) replaces steps 2-4 where discovery names a
`device_authorization_endpoint`: `start_device` gets a user code to type elsewhere and
`poll_device` waits for the person to approve it. `refresh` uses a refresh token.

Everything here raises `LoginFailed` with a message fit for a terminal; tokens never
appear in messages.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

from lockgate.errors import AuthFailed, LockgateError
from lockgate.identity.oidc import MAX_DOCUMENT_BYTES, ProviderUnavailable, fetch_json
from lockgate.identity.verifier import unverified_claims

CALLBACK_PATH = "/callback"
DEFAULT_SCOPES = ("openid", "email", "profile")
_LOOPBACK = ("127.0.0.1", "localhost", "::1")
# ID tokens are refreshed this long before they expire, so a connection never races expiry.
EXPIRY_MARGIN = 60


class LoginFailed(LockgateError):
    """The login (or a refresh) did not produce a usable ID token."""


def id_token_claims(token: str) -> dict[str, Any]:
    """The claims of an ID token, unverified (the gateway verifies it; we only read them)."""
    try:
        return unverified_claims(token)
    except AuthFailed:
        raise LoginFailed("the provider sent an ID token that is not a JWT") from None


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def s256(verifier: str) -> str:
    """The PKCE S256 code challenge of `verifier`."""
    return _b64(hashlib.sha256(verifier.encode("ascii")).digest())


def _safe_endpoint(url: object) -> bool:
    if not isinstance(url, str):
        return False
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return True
    return parts.scheme == "http" and parts.hostname in _LOOPBACK


@dataclass(frozen=True, slots=True)
class Provider:
    """The endpoints of one OpenID provider, from its discovery document."""

    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    device_authorization_endpoint: str | None = None


def discover(
    issuer: str, timeout: float = 10.0, fetch: Callable[[str, float], Any] = fetch_json
) -> Provider:
    """Read the provider's endpoints; refuse a document for another issuer or plain HTTP."""
    try:
        doc = fetch(f"{issuer.rstrip('/')}/.well-known/openid-configuration", timeout)
    except ProviderUnavailable as exc:
        raise LoginFailed(
            f"the identity provider is not reachable: {exc}",
            hint="check the issuer URL and your network, then run `lockgate login` again",
        ) from None
    if not isinstance(doc, dict) or doc.get("issuer") != issuer:
        found = doc.get("issuer") if isinstance(doc, dict) else None
        raise LoginFailed(
            f"the provider's discovery document names issuer {found!r}, not {issuer!r}",
            hint="use the issuer URL exactly as the provider writes it (see identity.oidc)",
        )
    endpoints: dict[str, str] = {}
    for name in ("authorization_endpoint", "token_endpoint"):
        url = doc.get(name)
        if not _safe_endpoint(url):
            raise LoginFailed(
                f"the provider's {name} {url!r} is missing or not https",
                hint="ask the provider's administrator; Lockgate only sends codes over https",
            )
        endpoints[name] = str(url)
    device = doc.get("device_authorization_endpoint")
    return Provider(
        issuer=issuer,
        authorization_endpoint=endpoints["authorization_endpoint"],
        token_endpoint=endpoints["token_endpoint"],
        device_authorization_endpoint=str(device) if _safe_endpoint(device) else None,
    )


@dataclass(frozen=True, slots=True)
class Client:
    """The OAuth client the CLI acts as: its id and optional secret at the provider."""

    client_id: str
    client_secret: str | None = None
    scopes: tuple[str, ...] = DEFAULT_SCOPES


@dataclass(frozen=True, slots=True)
class AuthRequest:
    """One authorization request: the values the callback and the ID token must echo."""

    state: str
    nonce: str
    code_verifier: str
    redirect_uri: str

    @classmethod
    def new(cls, redirect_uri: str) -> AuthRequest:
        """Fresh, unguessable `state`, `nonce` and PKCE verifier (43+ characters)."""
        return cls(
            state=secrets.token_urlsafe(24),
            nonce=secrets.token_urlsafe(24),
            code_verifier=secrets.token_urlsafe(48),
            redirect_uri=redirect_uri,
        )

    @property
    def code_challenge(self) -> str:
        return s256(self.code_verifier)


def authorization_url(provider: Provider, client: Client, request: AuthRequest) -> str:
    """The URL the person opens in a browser to log in."""
    query = {
        "response_type": "code",
        "client_id": client.client_id,
        "redirect_uri": request.redirect_uri,
        "scope": " ".join(client.scopes),
        "state": request.state,
        "nonce": request.nonce,
        "code_challenge": request.code_challenge,
        "code_challenge_method": "S256",
    }
    sep = "&" if urllib.parse.urlsplit(provider.authorization_endpoint).query else "?"
    return provider.authorization_endpoint + sep + urllib.parse.urlencode(query)


def code_from_callback(target: str, request: AuthRequest) -> str:
    """The authorization code in the callback's request target, after checking `state`."""
    parts = urllib.parse.urlsplit(target)
    params = urllib.parse.parse_qs(parts.query)

    def one(name: str) -> str | None:
        values = params.get(name)
        return values[0] if values and len(values) == 1 else None

    if not secrets.compare_digest(one("state") or "", request.state):
        raise LoginFailed(
            "the login callback did not carry this login's state (a stale or forged redirect)",
            hint="run `lockgate login` again and finish it in the browser it opens",
        )
    error = one("error")
    if error is not None:
        description = (one("error_description") or "")[:200]
        raise LoginFailed(
            f"the provider refused the login: {error[:60]}"
            + (f" ({description})" if description else ""),
            hint="check that your account may use this client, then run `lockgate login` again",
        )
    code = one("code")
    if not code:
        raise LoginFailed("the login callback carried no authorization code", hint="try again")
    return code


class CallbackListener:
    """A one-shot HTTP listener on 127.0.0.1 for the provider's redirect back to the CLI."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, idle_timeout: float = 5.0) -> None:
        """`idle_timeout`: seconds a connection that sends nothing may hold the listener."""
        listener = self
        self.target: str | None = None

        class Handler(BaseHTTPRequestHandler):
            # Browsers open spare connections they may never send on: do not wait on them.
            timeout = idle_timeout

            def do_GET(self) -> None:
                if urllib.parse.urlsplit(self.path).path != CALLBACK_PATH:
                    self._reply(404, "Not the Lockgate login callback.")
                    return
                listener.target = self.path
                self._reply(200, "Lockgate: you can close this window and go back to the terminal.")

            def _reply(self, status: int, text: str) -> None:
                body = f"<!doctype html><title>Lockgate</title><p>{text}</p>\n".encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # the request line holds the code: keep it out of the terminal

        self._server = HTTPServer((host, port), Handler)
        self.redirect_uri = f"http://{host}:{self._server.server_address[1]}{CALLBACK_PATH}"

    def wait(self, timeout: float) -> str:
        """Serve until the callback arrives (then close); its request target."""
        deadline = time.monotonic() + timeout
        try:
            while self.target is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise LoginFailed(
                        f"no login came back from the browser within {timeout:.0f} s",
                        hint="run `lockgate login` again (--timeout SECONDS to wait longer)",
                    )
                self._server.timeout = min(left, 1.0)
                self._server.handle_request()
            return self.target
        finally:
            self.close()

    def close(self) -> None:
        self._server.server_close()


@dataclass(frozen=True, slots=True)
class TokenSet:
    """What the token endpoint sent: the ID token, maybe a refresh token, and the expiry."""

    id_token: str
    refresh_token: str | None
    expires_at: int  # the ID token's `exp` (seconds since the epoch)

    @classmethod
    def from_response(cls, body: dict[str, Any], previous_refresh: str | None = None) -> TokenSet:
        id_token = body.get("id_token")
        if not isinstance(id_token, str) or not id_token:
            raise LoginFailed(
                "the provider sent no ID token",
                hint="make sure the client's scopes include 'openid', then run `lockgate login`",
            )
        exp = id_token_claims(id_token).get("exp")
        if not isinstance(exp, int | float) or isinstance(exp, bool):
            raise LoginFailed("the provider's ID token has no expiry ('exp')", hint="try again")
        refresh = body.get("refresh_token")
        return cls(
            id_token=id_token,
            refresh_token=refresh if isinstance(refresh, str) and refresh else previous_refresh,
            expires_at=int(exp),
        )

    def check(self, issuer: str, client_id: str, nonce: str | None) -> dict[str, Any]:
        """Refuse an ID token for another issuer, another client, or another login."""
        claims = id_token_claims(self.id_token)
        if claims.get("iss") != issuer:
            raise LoginFailed(f"the ID token was issued by {claims.get('iss')!r}, not {issuer!r}")
        aud = claims.get("aud")
        audiences = aud if isinstance(aud, list) else [aud]
        if client_id not in audiences:
            raise LoginFailed("the ID token is not meant for this client (audience)")
        if nonce is not None and not secrets.compare_digest(str(claims.get("nonce", "")), nonce):
            raise LoginFailed(
                "the ID token does not carry this login's nonce (a replayed token)",
                hint="run `lockgate login` again",
            )
        return claims


def post_form(
    url: str, form: dict[str, str], client: Client, timeout: float = 15.0
) -> dict[str, Any]:
    """POST a form to a token-type endpoint; its JSON answer, even for an OAuth error."""
    data = dict(form)
    headers = {"Accept": "application/json", "User-Agent": "lockgate"}
    if client.client_secret is None:
        data["client_id"] = client.client_id
    else:
        pair = f"{urllib.parse.quote(client.client_id, safe='')}:"
        pair += urllib.parse.quote(client.client_secret, safe="")
        headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
    body = urllib.parse.urlencode(data).encode()
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            raw = response.read(MAX_DOCUMENT_BYTES + 1)
    except urllib.error.HTTPError as exc:
        raw = exc.read(MAX_DOCUMENT_BYTES + 1)
        if not raw:
            raise LoginFailed(f"the provider answered HTTP {exc.code}", hint="try again") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise LoginFailed(
            f"the identity provider is not reachable: {reason}",
            hint="check your network, then try again",
        ) from None
    try:
        answer = json.loads(raw[:MAX_DOCUMENT_BYTES])
    except ValueError:
        raise LoginFailed("the provider's token endpoint did not send JSON") from None
    if not isinstance(answer, dict):
        raise LoginFailed("the provider's token endpoint did not send a JSON object")
    return answer


def _raise_oauth_error(answer: dict[str, Any], what: str) -> None:
    error = answer.get("error")
    if error is None:
        return
    description = str(answer.get("error_description") or "")[:200]
    raise LoginFailed(
        f"the provider refused {what}: {str(error)[:60]}"
        + (f" ({description})" if description else ""),
        hint="run `lockgate login` again",
    )


def exchange_code(provider: Provider, client: Client, code: str, request: AuthRequest) -> TokenSet:
    """Trade an authorization code (and the PKCE verifier) for tokens; checks the nonce."""
    answer = post_form(
        provider.token_endpoint,
        {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": request.redirect_uri,
            "code_verifier": request.code_verifier,
        },
        client,
    )
    _raise_oauth_error(answer, "the authorization code")
    tokens = TokenSet.from_response(answer)
    tokens.check(provider.issuer, client.client_id, request.nonce)
    return tokens


def refresh(
    provider_token_endpoint: str, issuer: str, client: Client, refresh_token: str
) -> TokenSet:
    """A fresh ID token for a refresh token (the provider may rotate the refresh token)."""
    answer = post_form(
        provider_token_endpoint,
        {"grant_type": "refresh_token", "refresh_token": refresh_token},
        client,
    )
    if answer.get("error") is not None:
        raise LoginFailed(
            "your login has expired and the provider would not renew it",
            hint="run `lockgate login` again",
        )
    if not isinstance(answer.get("id_token"), str):
        raise LoginFailed(
            "your login has expired and the provider renews it without an ID token",
            hint="run `lockgate login` again",
        )
    tokens = TokenSet.from_response(answer, previous_refresh=refresh_token)
    tokens.check(issuer, client.client_id, None)
    return tokens


@dataclass(frozen=True, slots=True)
class DeviceGrant:
    """A pending device login: the code the person types at `verification_uri`."""

    device_code: str
    user_code: str
    verification_uri: str
    verification_uri_complete: str | None
    interval: float
    expires_in: float


def start_device(provider: Provider, client: Client) -> DeviceGrant:
    """Ask the provider for a user code (RFC 8628 section 3.1)."""
    if provider.device_authorization_endpoint is None:
        raise LoginFailed(
            "this provider does not offer the device flow",
            hint="run `lockgate login` without --device",
        )
    answer = post_form(
        provider.device_authorization_endpoint, {"scope": " ".join(client.scopes)}, client
    )
    _raise_oauth_error(answer, "the device login")
    try:
        complete = answer.get("verification_uri_complete")
        return DeviceGrant(
            device_code=str(answer["device_code"]),
            user_code=str(answer["user_code"]),
            verification_uri=str(answer["verification_uri"]),
            verification_uri_complete=complete if isinstance(complete, str) else None,
            interval=float(answer.get("interval", 5)),
            expires_in=float(answer.get("expires_in", 600)),
        )
    except (KeyError, TypeError, ValueError):
        raise LoginFailed("the provider's device authorization answer is incomplete") from None


def poll_device(
    provider: Provider,
    client: Client,
    grant: DeviceGrant,
    *,
    timeout: float,
    sleep: Callable[[float], None] = time.sleep,
) -> TokenSet:
    """Poll the token endpoint until the person approves (or refuses, or time runs out)."""
    interval = max(grant.interval, 1.0)
    deadline = time.monotonic() + min(timeout, grant.expires_in)
    while True:
        answer = post_form(
            provider.token_endpoint,
            {
                "grant_type": "urn:ietf:params:oauth:grant-type:device_code",
                "device_code": grant.device_code,
            },
            client,
        )
        error = answer.get("error")
        if error is None:
            tokens = TokenSet.from_response(answer)
            tokens.check(provider.issuer, client.client_id, None)
            return tokens
        if error == "slow_down":
            interval += 5  # RFC 8628 section 3.5
        elif error != "authorization_pending":
            _raise_oauth_error(answer, "the device login")
        if time.monotonic() + interval > deadline:
            raise LoginFailed(
                "the device login was not approved in time",
                hint="run `lockgate login --device` again and approve it sooner",
            )
        sleep(interval)
