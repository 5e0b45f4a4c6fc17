"""`lockgate policy test`: what a candidate manifest's guardrails would decide differently."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from lockgate.cli.common import config_option, fail, load, print_json
from lockgate.config.model import Manifest
from lockgate.model import Decision, DecisionKind, Principal
from lockgate.policy.access import AccessPolicy
from lockgate.policy.guardrails import Guardrails
from lockgate.sql.analyze import Analyzer


@dataclass(frozen=True, slots=True)
class _Case:
    text: str
    resource: str
    principal: Principal
    before: Decision


class _Judge:
    """One manifest's verdicts (guardrails plus read-only access) on recorded statements."""

    def __init__(self, manifest: Manifest, analyzer: Analyzer) -> None:
        self.guardrails = Guardrails(manifest)
        self.access = AccessPolicy(manifest)
        self.analyzer = analyzer

    def decide(self, case: _Case) -> Decision:
        try:
            read_only = self.access.read_only(case.principal, case.resource)
        except Exception:  # the resource is not in this manifest
            read_only = False
        verdict = self.guardrails.judge(
            case.principal,
            case.resource,
            self.analyzer.analyze(case.text),
            opaque=case.text.startswith("-- fastpath function call"),
            read_only=read_only,
        )
        return verdict.decision


def _from_store(manifest: Manifest, limit: int) -> list[_Case]:
    from sqlalchemy import select

    from lockgate.audit.tables import commands, sessions
    from lockgate.store import open_engine

    engine = open_engine(manifest.state_url, create=False)
    query = (
        select(
            commands.c.text, commands.c.decision, commands.c.rule, commands.c.reason,
            sessions.c.resource, sessions.c.subject, sessions.c.groups, sessions.c.protocol,
        )
        .join(sessions, sessions.c.id == commands.c.session_id)
        .where(sessions.c.protocol == "postgres")
        .order_by(commands.c.started_at.desc())
        .limit(limit)
    )  # fmt: skip
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    engine.dispose()
    return [
        _Case(
            r.text,
            r.resource,
            Principal(r.subject, frozenset(r.groups or ())),
            Decision(DecisionKind(r.decision), r.rule, r.reason),
        )
        for r in rows
    ]


def _from_file(path: Path, resource: str, subject: str, groups: tuple[str, ...]) -> list[_Case]:
    from pglast.parser import ParseError, split

    text = path.read_text()
    try:
        statements = list(split(text))
    except ParseError:
        statements = [line for line in text.splitlines() if line.strip()]
    who = Principal(subject, frozenset(groups))
    return [_Case(s, resource, who, Decision(DecisionKind.ALLOW)) for s in statements]


def _label(d: Decision) -> str:
    return (
        f"{d.kind.value} ({d.rule})"
        if d.rule and d.kind is not DecisionKind.ALLOW
        else d.kind.value
    )


@click.group("policy")
def policy() -> None:
    """Try guardrail changes before turning them on."""


@policy.command("test")
@config_option
@click.option(
    "--statements",
    "statements_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Judge the statements in this SQL file instead of the audit store's.",
)
@click.option(
    "--against",
    "against_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Compare with this manifest's decisions (default: what the audit recorded).",
)
@click.option(
    "--resource",
    default="",
    help="With --statements: the resource they are sent to (default: the first).",
)
@click.option(
    "--subject", default="policy-test", show_default=True, help="With --statements: who sends them."
)
@click.option(
    "--group", "groups", multiple=True, help="With --statements: the sender's groups (repeatable)."
)
@click.option(
    "--limit",
    default=10_000,
    show_default=True,
    help="How many recent audited statements to replay.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the differences as JSON.")
def test_cmd(
    config_path: Path,
    statements_file: Path | None,
    against_path: Path | None,
    resource: str,
    subject: str,
    groups: tuple[str, ...],
    limit: int,
    as_json: bool,
) -> None:
    """Replay statements against the candidate manifest (-c) and print what changes."""
    candidate = load(config_path)
    analyzer = Analyzer()
    if statements_file is not None:
        target = resource or (candidate.resources[0].name if candidate.resources else "")
        if not target:
            fail("the candidate manifest has no resources", "pass --resource NAME")
        cases = _from_file(statements_file, target, subject, groups)
    else:
        source = load(against_path) if against_path is not None else candidate
        try:
            cases = _from_store(source, limit)
        except Exception as exc:
            fail(f"cannot read the audit store: {exc}", "check state.url, or use --statements FILE")
    baseline = _Judge(load(against_path), analyzer) if against_path is not None else None
    judge = _Judge(candidate, analyzer)
    changes: list[dict[str, Any]] = []
    for case in cases:
        before = baseline.decide(case) if baseline is not None else case.before
        after = judge.decide(case)
        if (before.kind, before.rule if not before.allowed else "") == (
            after.kind,
            after.rule if not after.allowed else "",
        ):
            continue
        changes.append(
            {
                "statement": case.text,
                "resource": case.resource,
                "subject": case.principal.subject,
                "before": {"decision": before.kind.value, "rule": before.rule},
                "after": {"decision": after.kind.value, "rule": after.rule, "reason": after.reason},
            }
        )
    if as_json:
        print_json({"statements": len(cases), "changes": changes})
        return
    click.echo(
        f"{len(cases)} statement(s) replayed against {config_path}; {len(changes)} would change."
    )
    for c in changes:
        stricter = c["after"]["decision"] != "allow"
        mark = click.style(
            "now refused" if stricter else "now allowed", fg="red" if stricter else "green"
        )
        was = _label(Decision(DecisionKind(c["before"]["decision"]), c["before"]["rule"]))
        now = _label(Decision(DecisionKind(c["after"]["decision"]), c["after"]["rule"]))
        text = " ".join(c["statement"].split())
        click.echo(f"  {mark}: {was} -> {now}  [{c['subject']}@{c['resource']}] {text[:120]}")
    if not changes:
        click.echo("No differences: the candidate decides as before.")


COMMANDS = [policy]
