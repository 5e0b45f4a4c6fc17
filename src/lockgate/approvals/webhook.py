"""Webhook notifications: a JSON event to each configured URL on new requests and decisions.

`lockgate` format: `{"event", "request", "approve", "deny", "url"}`. `slack` format: a
Slack-compatible incoming-webhook payload (`text`, mrkdwn). `url` links to the request in the
web console when the manifest has an `admin:` listener (else null). Each POST is retried
(`attempts`, backing off 0.5 s, 1 s, 2 s ...); a URL that keeps failing is logged, never
raised: a notification must not block or fail a request. Payloads carry no secret (requests
hold none). Gateways post from a thread; the CLI posts decisions synchronously.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import urllib.error
import urllib.request
from typing import Any

from lockgate.approvals.store import ApprovalRequest
from lockgate.config.model import ApprovalWebhook, Manifest
from lockgate.tasks import spawn

log = logging.getLogger("lockgate.approvals.webhook")

_BACKOFF_CAP = 8.0


def console_link(console: str | None, request: ApprovalRequest) -> str | None:
    """Where a reviewer decides on `request` in the web console (None: no console)."""
    return f"{console}/reviews#review-{request.id}" if console else None


def payload(
    hook: ApprovalWebhook, event: str, request: ApprovalRequest, console: str | None = None
) -> dict[str, Any]:
    """The JSON body for `event` about `request`, in the hook's format."""
    url = console_link(console, request)
    approve = f"lockgate reviews approve {request.id} --reason TEXT"
    deny = f"lockgate reviews deny {request.id} --reason TEXT"
    if hook.format == "slack":
        what = (
            f"`{' '.join((request.statement or '').split())[:300]}`"
            if request.kind == "statement"
            else f"access for {request.grant_seconds or 0}s"
        )
        text = (
            f"*Lockgate {event}*: request `{request.id}` by *{request.requester}* on "
            f"*{request.resource}*: {what}\n"
            f"reason: {request.reason}\nstatus: {request.status}"
            + (f" ({request.outcome})" if request.outcome else "")
            + f"\napprove: `{approve}`"
            + (f" or <{url}|in the console>" if url else "")
        )
        return {"text": text}
    return {
        "event": event,
        "request": request.as_json(),
        "approve": approve,
        "deny": deny,
        "url": url,
    }


def post(hook: ApprovalWebhook, body: dict[str, Any]) -> bool:
    """POST `body` with retries; True once a 2xx answered."""
    data = json.dumps(body).encode()
    for attempt in range(hook.attempts):
        req = urllib.request.Request(
            hook.url,
            data=data,
            headers={"Content-Type": "application/json", "User-Agent": "lockgate"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(req, timeout=hook.timeout) as answer:
                if 200 <= answer.status < 300:
                    return True
        except (urllib.error.URLError, OSError, ValueError) as exc:
            log.warning(
                "webhook %s: attempt %d failed: %s", hook.url, attempt + 1, type(exc).__name__
            )
        if attempt + 1 < hook.attempts:
            time.sleep(min(_BACKOFF_CAP, 0.5 * 2**attempt))
    log.error("webhook %s: giving up after %d attempts", hook.url, hook.attempts)
    return False


def post_all(
    hooks: list[ApprovalWebhook], event: str, request: ApprovalRequest, console: str | None = None
) -> None:
    """Notify every hook, synchronously (the CLI); `console`: the web console's address."""
    for hook in hooks:
        post(hook, payload(hook, event, request, console))


def console_address(manifest: Manifest) -> str | None:
    """The web console's address when the manifest has an `admin:` listener."""
    return manifest.admin.base_url() if manifest.admin is not None else None


def decision_event(request: ApprovalRequest) -> str:
    """The event a decision on `request` announces (`request.approved`, ...)."""
    return f"request.{request.status}" if request.status != "pending" else "request.decision"


def notify(manifest: Manifest, event: str, request: ApprovalRequest) -> None:
    """Post `event` to the manifest's approval webhooks, synchronously."""
    if manifest.approvals.webhooks:
        post_all(manifest.approvals.webhooks, event, request, console_address(manifest))


class WebhookNotifier:
    """Posts events from a gateway process without blocking its loop."""

    def __init__(self, hooks: list[ApprovalWebhook], console: str | None = None) -> None:
        self.hooks = list(hooks)
        self.console = console

    def __call__(self, event: str, request: ApprovalRequest) -> None:
        if self.hooks:
            spawn(
                asyncio.to_thread(post_all, self.hooks, event, request, self.console),
                name="webhook",
            )
