"""Guardrails: decide on a statement from what it does (its facts), never from its text.

Theory of operation
-------------------
The manifest's `guardrails.rules` are compiled once; a `use: SET` entry expands into the
shipped set's rules (`rulesets.py`), each scoped like the entry. For one session the rules
that cover its resource and principal are picked once and cached, so judging a statement
is a walk over a handful of compiled rules.

For each statement of a string, in order, the first *enforced* rule whose `match` holds
decides: `deny`/`review` refuse the whole string (nothing of it runs), `allow` ends the
search for that statement (how exceptions are carved before a broader deny). A matching
`monitor` rule never decides: it is noted (recorded as "would …") and the search goes on.

Text the parser cannot read, and fastpath function calls, get the `unparsed` action
whenever any rule covers the session; with no rule at all, statements are not judged.

A `rows_over` rule whose facts match but whose threshold the planner's estimate stays
under does not decide; it is returned as the verdict's `watch`, so the protocol handler
counts the rows actually returned and acts on the rule when they pass the threshold.

Read-only access (`access: - read_only: true`) adds a rule ahead of all others that no
`allow` can carve out: every way of turning the session's read-only mode off is refused.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any

from lockgate.config.model import GuardrailMatch, GuardrailRule, Manifest
from lockgate.model import Decision, DecisionKind, Principal
from lockgate.policy.rulesets import RULE_SETS
from lockgate.sql.analyze import Analysis, StatementFacts
from lockgate.sql.catalog import READ_ONLY_ESCAPE

ANY = "*"
UNPARSED_RULE = "unparsed-sql"
READ_ONLY_RULE = "read-only-access"
_ACTIONS = {"deny": DecisionKind.DENY, "review": DecisionKind.REVIEW, "allow": DecisionKind.ALLOW}


@dataclass(frozen=True, slots=True)
class RowWatch:
    """A `rows_over` rule let a statement through on its estimate: watch the actual rows."""

    rule: str
    action: DecisionKind
    threshold: int
    estimate: int
    message: str
    matched: str


@dataclass(frozen=True, slots=True)
class Verdict:
    """The guardrails' answer for one command string."""

    decision: Decision
    # What the client is told when refused (the rule's message; the rule is added by the
    # protocol's error table).
    message: str = ""
    # Monitor-mode rules that matched: "rule: would deny (facts)".
    monitored: tuple[str, ...] = ()
    # A `rows_over` rule matched the facts: judge again with the planner's row estimate.
    needs_estimate: bool = False
    # Allowed on the estimate by a `rows_over` rule: the actual rows must stay under it.
    watch: RowWatch | None = None

    @property
    def refused(self) -> bool:
        return not self.decision.allowed


ALLOWED = Verdict(Decision(DecisionKind.ALLOW))


def _names_match(patterns: frozenset[str], names: tuple[str, ...]) -> tuple[str, ...]:
    """The `names` (relations as written) that any pattern matches.

    A pattern without a dot matches the relation's last component; with one, the whole
    name, and an unqualified name by its last component (it may resolve to that schema).
    """
    hits = []
    for name in names:
        low = name.lower()
        last = low.rpartition(".")[2]
        for p in patterns:
            if "." in p:
                bare = "." not in low and fnmatch.fnmatchcase(last, p.rpartition(".")[2])
                if bare or fnmatch.fnmatchcase(low, p):
                    hits.append(name)
                    break
            elif fnmatch.fnmatchcase(last, p):
                hits.append(name)
                break
    return tuple(hits)


@dataclass(frozen=True, slots=True)
class _Match:
    kinds: frozenset[str]
    flags: frozenset[str]
    functions: frozenset[str]
    tables: frozenset[str]
    reads: frozenset[str]
    writes: frozenset[str]
    rows_over: int | None = None

    @classmethod
    def of(cls, m: GuardrailMatch) -> _Match:
        def low(xs: list[str]) -> frozenset[str]:
            return frozenset(x.lower() for x in xs)

        return cls(
            frozenset(m.kinds), frozenset(m.flags), low(m.functions), low(m.tables),
            low(m.reads), low(m.writes), m.rows_over,
        )  # fmt: skip

    def test(self, f: StatementFacts) -> str | None:
        """None if the facts do not match, else what matched (for the audit trail)."""
        found: list[str] = []
        if self.kinds:
            hit = sorted(self.kinds & f.kinds)
            if not hit:
                return None
            found.append("kinds=" + ",".join(hit))
        if self.flags:
            hit = sorted(self.flags & f.flags)
            if not hit:
                return None
            found.append("flags=" + ",".join(hit))
        if self.functions:
            called = tuple(
                n
                for n in f.functions
                if n.lower().rpartition(".")[2] in self.functions or n.lower() in self.functions
            )
            if not called:
                return None
            found.append("functions=" + ",".join(called))
        for label, patterns, names in (
            ("tables", self.tables, f.tables),
            ("reads", self.reads, f.reads),
            ("writes", self.writes, f.writes),
        ):
            if patterns:
                rels = _names_match(patterns, names)
                if not rels:
                    return None
                found.append(f"{label}=" + ",".join(rels))
        return "; ".join(found) or "any statement"


@dataclass(frozen=True, slots=True)
class _Rule:
    name: str
    resources: frozenset[str]
    subjects: frozenset[str]
    groups: frozenset[str]
    match: _Match
    action: DecisionKind
    message: str
    monitor: bool

    def covers(self, principal: Principal, resource: str) -> bool:
        if ANY not in self.resources and resource not in self.resources:
            return False
        if not self.subjects and not self.groups:
            return True
        return (
            ANY in self.subjects
            or principal.subject in self.subjects
            or not self.groups.isdisjoint(principal.groups)
        )


def _compile(entry: GuardrailRule) -> list[_Rule]:
    if entry.use is None:
        members: list[tuple[str, GuardrailRule]] = [(entry.name, entry)]
    else:
        prefix = entry.name or entry.use
        members = [
            (f"{prefix}/{raw['name']}", GuardrailRule.model_validate(raw))
            for raw in RULE_SETS[entry.use]
        ]
    return [
        _Rule(
            name=name,
            resources=frozenset(entry.resources),
            subjects=frozenset(entry.subjects),
            groups=frozenset(entry.groups),
            match=_Match.of(rule.match),
            action=_ACTIONS[rule.action],
            message=rule.message or f"refused by guardrail '{name}'",
            monitor=entry.mode == "monitor" or rule.mode == "monitor",
        )
        for name, rule in members
    ]


class Guardrails:
    """Judges statements against the manifest's `guardrails` section."""

    def __init__(self, manifest: Manifest) -> None:
        section = manifest.guardrails
        self._rules: tuple[_Rule, ...] = tuple(r for e in section.rules for r in _compile(e))
        self._unparsed = _ACTIONS[section.unparsed]
        self._for: dict[tuple[str, str, frozenset[str]], tuple[_Rule, ...]] = {}

    @property
    def rules(self) -> tuple[str, ...]:
        """Names of every compiled rule, in evaluation order."""
        return tuple(r.name for r in self._rules)

    def rules_for(self, principal: Principal, resource: str) -> tuple[_Rule, ...]:
        key = (resource, principal.subject, principal.groups)
        found = self._for.get(key)
        if found is None:
            found = tuple(r for r in self._rules if r.covers(principal, resource))
            if len(self._for) > 10_000:
                self._for.clear()
            self._for[key] = found
        return found

    def judge(
        self,
        principal: Principal,
        resource: str,
        analysis: Analysis,
        *,
        opaque: bool = False,
        read_only: bool = False,
        estimate: int | None = None,
    ) -> Verdict:
        """The verdict on one command string (every statement in it).

        `estimate`: the planner's row estimate for the string (-1: it could not be had);
        without it, a `rows_over` rule whose facts match asks for one (`needs_estimate`).
        """
        rules = self.rules_for(principal, resource)
        if not rules and not read_only:
            return ALLOWED
        if analysis.error is not None or opaque:
            if self._unparsed is DecisionKind.ALLOW or not rules:
                return ALLOWED
            what = "fastpath function calls" if opaque else "statements the SQL parser cannot read"
            message = f"{what} are not allowed here"
            return _refusal(self._unparsed, UNPARSED_RULE, message, "unparsed")
        monitored: list[str] = []
        watch: RowWatch | None = None
        for facts in analysis.statements:
            if read_only and READ_ONLY_ESCAPE in facts.flags:
                return _refusal(
                    DecisionKind.DENY,
                    READ_ONLY_RULE,
                    "this session is read-only; turning read-only mode off "
                    "(SET/RESET of transaction_read_only, READ WRITE transactions, "
                    "set_config) is not allowed",
                    "flags=read_only_escape",
                )
            for rule in rules:
                matched = rule.match.test(facts)
                if matched is None:
                    continue
                over = rule.match.rows_over
                if over is not None:
                    if estimate is None:
                        return Verdict(ALLOWED.decision, needs_estimate=True)
                    if 0 <= estimate <= over:
                        if not rule.monitor and rule.action is not DecisionKind.ALLOW:
                            if watch is None or over < watch.threshold:
                                watch = RowWatch(
                                    rule.name, rule.action, over, estimate, rule.message, matched
                                )
                        continue
                    matched += (
                        f"; estimated rows={estimate} > {over}"
                        if estimate >= 0
                        else f"; no row estimate (rows_over {over})"
                    )
                if rule.monitor:
                    monitored.append(f"{rule.name}: would {rule.action.value} ({matched})")
                    continue
                if rule.action is DecisionKind.ALLOW:
                    break
                return _refusal(rule.action, rule.name, rule.message, matched, monitored)
        if monitored:
            reason = "monitor: " + "; ".join(monitored)
            first = monitored[0].partition(":")[0]
            return Verdict(
                Decision(DecisionKind.ALLOW, first, reason), monitored=tuple(monitored), watch=watch
            )
        return ALLOWED if watch is None else Verdict(ALLOWED.decision, watch=watch)


def _refusal(
    kind: DecisionKind, rule: str, message: str, matched: str, monitored: list[str] | None = None
) -> Verdict:
    if kind is DecisionKind.ALLOW:
        return ALLOWED
    if kind is DecisionKind.REVIEW:
        message = f"{message}; this statement needs a reviewer's approval before it can run"
    reason = f"{message} [matched: {matched}]"
    if monitored:
        reason += " [monitor: " + "; ".join(monitored) + "]"
    return Verdict(Decision(kind, rule, reason), message, tuple(monitored or ()))


def describe(facts: StatementFacts) -> dict[str, Any]:
    """The facts of a statement as plain data (for `lockgate policy test` and logs)."""
    return {
        "kind": facts.kind,
        "kinds": sorted(facts.kinds),
        "reads": list(facts.reads),
        "writes": list(facts.writes),
        "functions": list(facts.functions),
        "flags": sorted(facts.flags),
    }
