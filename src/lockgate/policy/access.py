"""Access policy: may this principal open a session on this resource?

Pure and precomputed: the manifest's rules are indexed by resource once, so a check is a
dictionary lookup plus a few set operations. The first matching rule (in manifest order) wins.
A rule with a time window (`when`) matches only while its window is open; when the only
rules that match are closed, the refusal names the first one's window.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from lockgate.config.model import AccessRule, Manifest
from lockgate.config.windows import TimeWindow
from lockgate.errors import UnknownResource
from lockgate.model import Decision, DecisionKind, Principal

ANY = "*"
_NAME_LIMIT = 100


@dataclass(frozen=True, slots=True)
class _CompiledRule:
    name: str
    any_subject: bool
    subjects: frozenset[str]
    groups: frozenset[str]
    when: TimeWindow | None = None

    def matches(self, principal: Principal) -> bool:
        return (
            self.any_subject
            or principal.subject in self.subjects
            or not self.groups.isdisjoint(principal.groups)
        )


def _compile(rule: AccessRule) -> _CompiledRule:
    return _CompiledRule(
        name=rule.name,
        any_subject=ANY in rule.subjects,
        subjects=frozenset(rule.subjects),
        groups=frozenset(rule.groups),
        when=rule.when,
    )


def _quoted(name: str) -> str:
    shown = name if len(name) <= _NAME_LIMIT else name[:_NAME_LIMIT] + "..."
    return "'" + "".join(c if c.isprintable() else "?" for c in shown) + "'"


def _identity(principal: Principal) -> str:
    groups = ", ".join(sorted(principal.groups)) if principal.groups else "none"
    return f"identity {_quoted(principal.subject)} (groups: {groups})"


class AccessPolicy:
    """Decides connection access from the manifest's `access` rules."""

    def __init__(self, manifest: Manifest) -> None:
        self._resources: tuple[str, ...] = tuple(r.name for r in manifest.resources)
        self._read_only = frozenset(r.name for r in manifest.access if r.read_only)
        self._windows = {r.name: r.when for r in manifest.access if r.when is not None}
        compiled = [(rule, _compile(rule)) for rule in manifest.access]
        self._rules_for: dict[str, tuple[_CompiledRule, ...]] = {
            name: tuple(
                c for rule, c in compiled if ANY in rule.resources or name in rule.resources
            )
            for name in self._resources
        }

    @property
    def resources(self) -> tuple[str, ...]:
        return self._resources

    def window(self, rule: str) -> TimeWindow | None:
        """The time window of access rule `rule`, if it has one."""
        return self._windows.get(rule)

    @property
    def windowed(self) -> bool:
        """Whether any rule has a time window (then live sessions are checked against it)."""
        return bool(self._windows)

    def check(
        self, principal: Principal, resource_name: str, now: datetime | None = None
    ) -> Decision:
        """Allow with the matching rule's name, or deny with a reason that says what to do."""
        rules = self._rules_for.get(resource_name)
        if rules is None:
            known = ", ".join(self._resources) if self._resources else "none are configured"
            raise UnknownResource(
                f"resource {_quoted(resource_name)} does not exist; known resources: {known}",
                hint="connect with the name of a configured resource",
            )
        if principal.scopes is not None and resource_name not in principal.scopes:
            limit = ", ".join(sorted(principal.scopes)) or "no resources"
            return Decision(
                DecisionKind.DENY,
                rule="",
                reason=(
                    f"token is scoped to {limit}; resource {_quoted(resource_name)} is outside "
                    "its scope; use a token issued with "
                    f"`lockgate token issue --scope {resource_name}`"
                ),
            )
        closed: _CompiledRule | None = None
        for rule in rules:
            if rule.matches(principal):
                if rule.when is not None:
                    now = now or datetime.now(UTC)
                    if not rule.when.contains(now):
                        closed = closed or rule
                        continue
                return Decision(DecisionKind.ALLOW, rule=rule.name)
        if closed is not None and closed.when is not None:
            return Decision(
                DecisionKind.DENY,
                rule=closed.name,
                reason=(
                    f"access rule {_quoted(closed.name)} admits {_identity(principal)} to "
                    f"resource {_quoted(resource_name)} only inside its time window: "
                    f"{closed.when.closed_message(now or datetime.now(UTC))}"
                ),
            )
        return Decision(
            DecisionKind.DENY,
            rule="",
            reason=(
                f"{_identity(principal)} is not allowed on resource {_quoted(resource_name)}; "
                "ask an admin to add an access rule that covers it"
            ),
        )

    def read_only(self, principal: Principal, resource_name: str) -> bool:
        """Whether the rule that lets `principal` reach the resource makes sessions read-only."""
        decision = self.check(principal, resource_name)
        return decision.allowed and decision.rule in self._read_only

    def reachable(self, principal: Principal) -> list[str]:
        """Resources this principal may connect to, in manifest order."""
        return [r for r in self._resources if self.check(principal, r).allowed]
