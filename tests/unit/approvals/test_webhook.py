from __future__ import annotations

from datetime import UTC, datetime, timedelta

from lockgate.approvals.store import ApprovalRequest
from lockgate.approvals.webhook import payload
from lockgate.config.model import ApprovalWebhook


def _request() -> ApprovalRequest:
    now = datetime.now(UTC)
    return ApprovalRequest(
        id="3f9c0a1b2c4d",
        kind="statement",
        status="pending",
        requester="ana",
        requester_issuer="lockgate",
        requester_groups=("analysts",),
        resource="prod",
        statement="DELETE FROM orders WHERE id = 7",
        guardrail="prod-writes",
        reason="writes on prod need a review",
        session_id="s1",
        rule="prod-writes-review",
        quorum=1,
        distinct_groups=False,
        reviewers=("dba",),
        grant_seconds=None,
        created_at=now,
        expires_at=now + timedelta(minutes=15),
        closed_at=None,
        outcome=None,
    )


def test_payload_links_to_the_request_in_the_console() -> None:
    hook = ApprovalWebhook(url="http://127.0.0.1:9/hook")
    body = payload(hook, "request.created", _request(), "https://gw.example:8443")
    assert body["url"] == "https://gw.example:8443/reviews#review-3f9c0a1b2c4d"
    assert body["approve"] == "lockgate reviews approve 3f9c0a1b2c4d --reason TEXT"
    assert payload(hook, "request.created", _request())["url"] is None


def test_slack_payload_carries_the_console_link() -> None:
    hook = ApprovalWebhook(url="http://127.0.0.1:9/hook", format="slack")
    text = payload(hook, "request.created", _request(), "https://gw.example:8443")["text"]
    assert "<https://gw.example:8443/reviews#review-3f9c0a1b2c4d|in the console>" in text
    assert "in the console" not in payload(hook, "request.created", _request())["text"]
