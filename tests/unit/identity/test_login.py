"""The login flow's pieces: PKCE, state and nonce, the loopback callback, discovery, the
device flow and refresh, against real HTTP servers on 127.0.0.1."""

from __future__ import annotations

import socket
import threading
import urllib.error
import urllib.parse
import urllib.request

import pytest
from tests.identity_provider import TestIssuer, authorization_code, mock_provider
from tests.login_provider import DEVICE_GRANT, LoginEndpoints

from lockgate.identity.login import (
    AuthRequest,
    CallbackListener,
    Client,
    LoginFailed,
    Provider,
    TokenSet,
    authorization_url,
    code_from_callback,
    discover,
    exchange_code,
    poll_device,
    refresh,
    s256,
    start_device,
)

PROVIDER = Provider(
    "https://idp.example.com", "https://idp.example.com/auth", "https://idp.example.com/token"
)
CLIENT = Client("lockgate-cli")


def test_s256_matches_rfc_7636_appendix_b() -> None:
    verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
    assert s256(verifier) == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"


def test_each_request_draws_fresh_unguessable_values() -> None:
    a, b = (
        AuthRequest.new("http://127.0.0.1:1/callback"),
        AuthRequest.new("http://127.0.0.1:1/callback"),
    )
    assert len({a.state, b.state, a.nonce, b.nonce, a.code_verifier, b.code_verifier}) == 6
    # RFC 7636: a verifier of 43 to 128 characters from the unreserved set.
    assert 43 <= len(a.code_verifier) <= 128
    assert set(a.code_verifier) <= set(
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"
    )


def test_the_authorization_url_carries_pkce_state_and_nonce() -> None:
    request = AuthRequest.new("http://127.0.0.1:5555/callback")
    url = authorization_url(PROVIDER, Client("cli", scopes=("openid", "email")), request)
    parts = urllib.parse.urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == PROVIDER.authorization_endpoint
    query = dict(urllib.parse.parse_qsl(parts.query))
    assert query == {
        "response_type": "code",
        "client_id": "cli",
        "redirect_uri": "http://127.0.0.1:5555/callback",
        "scope": "openid email",
        "state": request.state,
        "nonce": request.nonce,
        "code_challenge": s256(request.code_verifier),
        "code_challenge_method": "S256",
    }
    assert request.code_verifier not in url


def test_an_endpoint_that_already_has_a_query_keeps_it() -> None:
    provider = Provider("https://i", "https://i/auth?tenant=acme", "https://i/token")
    url = authorization_url(provider, CLIENT, AuthRequest.new("http://127.0.0.1:1/callback"))
    assert url.startswith("https://i/auth?tenant=acme&response_type=code&")


def test_the_callback_gives_the_code_only_with_our_state() -> None:
    request = AuthRequest.new("http://127.0.0.1:1/callback")
    assert code_from_callback(f"/callback?code=abc&state={request.state}", request) == "abc"
    for target in (
        "/callback?code=abc",
        "/callback?code=abc&state=forged",
        f"/callback?code=abc&state={request.state}&state=forged",
        f"/callback?code=abc&state={request.state[:-1]}",
    ):
        with pytest.raises(LoginFailed, match="state"):
            code_from_callback(target, request)


def test_a_provider_error_and_a_missing_code_are_refused() -> None:
    request = AuthRequest.new("http://127.0.0.1:1/callback")
    with pytest.raises(LoginFailed, match="refused the login: access_denied \\(no thanks\\)"):
        code_from_callback(
            f"/callback?error=access_denied&error_description=no+thanks&state={request.state}",
            request,
        )
    with pytest.raises(LoginFailed, match="no authorization code"):
        code_from_callback(f"/callback?state={request.state}", request)


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_the_listener_takes_one_callback_on_loopback_then_closes() -> None:
    listener = CallbackListener()
    parts = urllib.parse.urlsplit(listener.redirect_uri)
    assert parts.hostname == "127.0.0.1" and parts.path == "/callback"
    base = f"http://127.0.0.1:{parts.port}"
    results: list[tuple[int, str]] = []

    def browser() -> None:
        results.append(_get(f"{base}/favicon.ico"))
        results.append(_get(f"{base}/callback?code=c1&state=s1"))

    thread = threading.Thread(target=browser)
    thread.start()
    target = listener.wait(30)
    thread.join(10)
    assert target == "/callback?code=c1&state=s1"
    assert [status for status, _ in results] == [404, 200]
    assert "close this window" in results[1][1]
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", parts.port), timeout=2):
        pass


def test_an_idle_browser_connection_does_not_block_the_callback() -> None:
    # A short idle timeout (the CLI's is 5 s): the listener must get past the idle connection.
    listener = CallbackListener(idle_timeout=0.5)
    port = urllib.parse.urlsplit(listener.redirect_uri).port
    assert port is not None
    idle = socket.create_connection(("127.0.0.1", port))  # a browser's unused preconnect
    got: list[str] = []
    waiter = threading.Thread(target=lambda: got.append(listener.wait(60)))
    waiter.start()
    try:
        status, _ = _get(f"http://127.0.0.1:{port}/callback?code=c2&state=s2")
        waiter.join(60)
    finally:
        idle.close()
    assert status == 200
    assert got == ["/callback?code=c2&state=s2"]


def test_the_listener_gives_up_after_its_timeout() -> None:
    listener = CallbackListener()
    with pytest.raises(LoginFailed, match="no login came back from the browser"):
        listener.wait(0.3)


def test_discovery_reads_the_endpoints(idp: TestIssuer, endpoints: LoginEndpoints) -> None:
    provider = discover(idp.url)
    assert provider.token_endpoint == f"{endpoints.url}/token"
    assert provider.device_authorization_endpoint == f"{endpoints.url}/device"


def test_discovery_for_another_issuer_is_refused(
    idp: TestIssuer, endpoints: LoginEndpoints
) -> None:
    idp.discovery_extra["issuer"] = "https://evil.example.com"
    with pytest.raises(LoginFailed, match=r"names issuer 'https://evil\.example\.com'"):
        discover(idp.url)


def test_plain_http_endpoints_off_loopback_are_refused(
    idp: TestIssuer, endpoints: LoginEndpoints
) -> None:
    idp.discovery_extra["token_endpoint"] = "http://idp.example.com/token"
    with pytest.raises(LoginFailed, match=r"token_endpoint .* not https"):
        discover(idp.url)


def test_an_unreachable_provider_is_a_friendly_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(LoginFailed, match="not reachable"):
        discover(f"http://127.0.0.1:{port}", timeout=2)


def test_id_token_checks(endpoints: LoginEndpoints, idp: TestIssuer) -> None:
    tokens = TokenSet.from_response({"id_token": endpoints.id_token()})
    claims = tokens.check(idp.url, "lockgate-cli", None)
    assert claims["sub"] == "dora"
    with pytest.raises(LoginFailed, match="audience"):
        tokens.check(idp.url, "another-client", None)
    with pytest.raises(LoginFailed, match="issued by"):
        tokens.check("https://other.example.com", "lockgate-cli", None)
    with pytest.raises(LoginFailed, match="nonce"):
        tokens.check(idp.url, "lockgate-cli", "n-1")
    with_nonce = idp.token(sub="dora", aud="lockgate-cli", nonce="n-1")
    TokenSet.from_response({"id_token": with_nonce}).check(idp.url, "lockgate-cli", "n-1")
    with pytest.raises(LoginFailed, match="no ID token"):
        TokenSet.from_response({"access_token": "x"})


def test_the_code_flow_with_oidc_provider_mock() -> None:
    """The real provider: nonce echoed in the ID token, PKCE sent, a refresh token kept."""
    with mock_provider({"erin@example.com": {"groups": ["it"]}}) as url:
        provider = discover(url)
        client = Client("lockgate", "any-secret")
        request = AuthRequest.new("http://127.0.0.1:9/callback")
        query = dict(
            urllib.parse.parse_qsl(
                urllib.parse.urlsplit(authorization_url(provider, client, request)).query
            )
        )
        location = authorization_code(url, query, "erin@example.com")
        code = code_from_callback(location[location.index("/callback") :], request)
        tokens = exchange_code(provider, client, code, request)
        assert tokens.refresh_token
        with pytest.raises(LoginFailed, match="authorization code"):
            exchange_code(provider, client, code, request)  # a code is good once
        forged = AuthRequest(
            request.state, "another-nonce", request.code_verifier, request.redirect_uri
        )
        location = authorization_code(url, query, "erin@example.com")
        code = code_from_callback(location[location.index("/callback") :], request)
        with pytest.raises(LoginFailed, match="nonce"):
            exchange_code(provider, client, code, forged)
        # 0.3 renews without an ID token: the person is told to log in again.
        with pytest.raises(LoginFailed, match="without an ID token"):
            refresh(provider.token_endpoint, url, client, tokens.refresh_token)


def test_refresh_rotates_the_refresh_token(idp: TestIssuer, endpoints: LoginEndpoints) -> None:
    first = endpoints.new_refresh_token()
    client = Client("lockgate-cli")
    tokens = refresh(f"{endpoints.url}/token", idp.url, client, first)
    assert tokens.refresh_token not in (None, first)
    assert endpoints.requests[-1] == {
        "grant_type": "refresh_token",
        "refresh_token": first,
        "client_id": "lockgate-cli",
    }
    with pytest.raises(LoginFailed, match="would not renew it"):
        refresh(f"{endpoints.url}/token", idp.url, client, first)


def test_a_client_secret_goes_in_basic_auth(idp: TestIssuer, endpoints: LoginEndpoints) -> None:
    refresh(
        f"{endpoints.url}/token",
        idp.url,
        Client("lockgate-cli", "p@ss:word"),
        endpoints.new_refresh_token(),
    )
    assert "client_id" not in endpoints.requests[-1]
    assert endpoints.authorizations[-1] == "Basic bG9ja2dhdGUtY2xpOnAlNDBzcyUzQXdvcmQ="


def test_the_device_flow_waits_for_approval(idp: TestIssuer, endpoints: LoginEndpoints) -> None:
    provider = discover(idp.url)
    grant = start_device(provider, Client("lockgate-cli"))
    assert grant.user_code == "WDJB-MJHT" and grant.interval == 1
    endpoints.device_answers = ["authorization_pending", "slow_down", "authorization_pending"]
    slept: list[float] = []
    tokens = poll_device(provider, Client("lockgate-cli"), grant, timeout=600, sleep=slept.append)
    assert slept == [1, 6, 6]  # slow_down adds five seconds (RFC 8628)
    assert tokens.refresh_token
    polls = [r for r in endpoints.requests if r.get("grant_type") == DEVICE_GRANT]
    assert len(polls) == 4 and {p["device_code"] for p in polls} == {grant.device_code}


def test_a_refused_device_login_stops(idp: TestIssuer, endpoints: LoginEndpoints) -> None:
    provider = discover(idp.url)
    grant = start_device(provider, Client("lockgate-cli"))
    endpoints.device_answers = ["authorization_pending", "access_denied"]
    with pytest.raises(LoginFailed, match="access_denied"):
        poll_device(provider, Client("lockgate-cli"), grant, timeout=600, sleep=lambda _: None)


def test_the_device_flow_needs_the_provider_to_offer_it() -> None:
    with pytest.raises(LoginFailed, match="does not offer the device flow"):
        start_device(PROVIDER, CLIENT)
