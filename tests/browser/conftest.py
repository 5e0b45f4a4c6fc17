"""The web console in a real headless Chromium (Debian's), against a real `lockgate serve`.

One browser per test module (Playwright driving /usr/bin/chromium; Playwright's own browser
download is never used). The gateway serves the console built by `scripts/setup` from
`web/` into `src/lockgate/admin/static/`. Screenshots go to `test-artifacts/` at the top of
the repository. Everything skips only when Chromium itself is missing.
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
STATIC = REPO / "src" / "lockgate" / "admin" / "static"
AXE = REPO / "web" / "node_modules" / "axe-core" / "axe.min.js"
CHROMIUM = "/usr/bin/chromium"
# What the machine notes ask of a headless Chromium here: no sandbox as root, nothing that
# reaches out to the network on its own (the network is closed; its attempts only slow it).
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1366, "height": 768}  # a laptop screen: the console must read well on it


def chromium_missing() -> str | None:
    if not os.path.exists(CHROMIUM) and shutil.which("chromium") is None:
        return "Debian's chromium is not installed (scripts/setup installs it with apt-get)"
    return None


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One headless Chromium for the module, with a fresh profile directory."""
    why = chromium_missing()
    if why:
        pytest.skip(why)
    if not (STATIC / "index.html").exists():
        raise AssertionError(
            f"the console is not built ({STATIC}/index.html missing): run scripts/setup, "
            "which runs `npm ci && npm run build` in web/"
        )
    from playwright.sync_api import sync_playwright

    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_playwright() as pw:
        # A persistent context is how Playwright takes an explicit --user-data-dir.
        context = pw.chromium.launch_persistent_context(
            str(profile),
            executable_path=shutil.which("chromium") or CHROMIUM,
            args=CHROMIUM_ARGS,
            headless=True,
            ignore_https_errors=True,  # the admin listener's self-signed certificate
            viewport=VIEWPORT,
            accept_downloads=True,
        )
        context.set_default_timeout(20_000)
        try:
            yield context
        finally:
            context.close()


@pytest.fixture
def page(browser: Any, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A fresh tab; JavaScript errors on the page fail the test."""
    tab = browser.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    yield tab
    tab.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def screenshot(page: Any, name: str) -> Path:
    """Save a full-page screenshot under test-artifacts/ and return its path."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def wait_http(url: str, timeout: float = 60.0) -> None:
    """Wait until `url` answers over HTTPS (self-signed) with any HTTP status."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2, context=ctx):
                return
        except urllib.error.HTTPError:
            return
        except OSError:
            if time.monotonic() > deadline:
                raise AssertionError(f"{url} did not answer in {timeout}s") from None
            time.sleep(0.1)


def sign_in_with_token(page: Any, base_url: str, token: str) -> None:
    """Use the sign-in page's token form, as a person pasting a gateway token would."""
    page.goto(f"{base_url}/")
    page.get_by_label("Token", exact=True).fill(token)
    page.get_by_role("button", name="Sign in with a token").click()
    page.get_by_test_id("whoami").wait_for()


def assert_accessible(page: Any, what: str) -> None:
    """axe-core's WCAG 2 A/AA checks on the page as shown, plus our own landmark rules."""
    if not AXE.exists():
        raise AssertionError(f"{AXE} missing: run scripts/setup (npm ci in web/)")
    # Evaluated through DevTools rather than a <script> tag: the console's CSP (rightly)
    # refuses inline scripts, and the check must not need a weaker policy.
    page.evaluate(AXE.read_text() + "\n;true")
    result = page.evaluate(
        """async () => {
            const r = await axe.run(document, {
                runOnly: {type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa']},
                // The terminal player draws its own canvas-like grid of styled cells.
                exclude: [['.ap-wrapper']],
            });
            return r.violations.map(v => ({
                id: v.id, impact: v.impact, help: v.help,
                nodes: v.nodes.slice(0, 3).map(n => n.target.join(' ')),
            }));
        }"""
    )
    assert result == [], f"accessibility problems on {what}: {json.dumps(result, indent=1)}"
    assert page.locator("main").count() == 1, f"{what}: one main landmark"
    assert page.locator("h1").count() == 1, f"{what}: one page heading"


__all__ = [
    "ARTIFACTS",
    "assert_accessible",
    "screenshot",
    "sign_in_with_token",
    "wait_http",
]
