"""Which `approvals.rules` entry governs a held statement or an access request."""

from __future__ import annotations

import fnmatch

from lockgate.config.model import ApprovalRule, Manifest

ANY = "*"


class ApprovalRules:
    """The manifest's approval rules; the first that covers a request (in order) governs it."""

    def __init__(self, manifest: Manifest) -> None:
        self._rules = tuple(manifest.approvals.rules)

    def __bool__(self) -> bool:
        return bool(self._rules)

    def for_statement(self, resource: str, guardrail: str) -> ApprovalRule | None:
        """The rule reviewing statements held by guardrail rule `guardrail` on `resource`."""
        for rule in self._rules:
            if "statement" not in rule.requests or not _covers(rule, resource):
                continue
            if any(fnmatch.fnmatchcase(guardrail, p) for p in rule.guardrails):
                return rule
        return None

    def for_grant(self, resource: str) -> ApprovalRule | None:
        """The rule reviewing access requests (grants) for `resource`."""
        for rule in self._rules:
            if "grant" in rule.requests and _covers(rule, resource):
                return rule
        return None


def _covers(rule: ApprovalRule, resource: str) -> bool:
    return ANY in rule.resources or resource in rule.resources
