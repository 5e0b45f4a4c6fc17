"""Guardrail rules: scope, first match, allow carve-outs, monitor mode, rule sets, unparsed SQL."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from lockgate.config.model import Manifest
from lockgate.model import DecisionKind, Principal
from lockgate.policy.guardrails import READ_ONLY_RULE, UNPARSED_RULE, Guardrails, Verdict
from lockgate.sql.analyze import Analyzer

ALICE = Principal("alice", frozenset({"dev"}))
DBA = Principal("dora", frozenset({"dba"}))
_analyzer = Analyzer()


def guardrails(rules: list[dict[str, Any]], **section: Any) -> Guardrails:
    return Guardrails(
        Manifest.model_validate(
            {
                "resources": [
                    {"name": n, "upstream": {"database": "d", "user": "u"}} for n in ("prod", "dev")
                ],
                "guardrails": {"rules": rules, **section},
            }
        )
    )


def judge(
    g: Guardrails, sql: str, who: Principal = ALICE, resource: str = "prod", **kw: Any
) -> Verdict:
    return g.judge(who, resource, _analyzer.analyze(sql), **kw)


def test_no_rules_no_judgement() -> None:
    g = guardrails([])
    assert not judge(g, "DROP TABLE t").refused
    assert not judge(g, "this is not sql").refused


def test_deny_names_rule_message_and_matched_facts() -> None:
    g = guardrails([{"name": "no-drop", "match": {"kinds": ["drop"]}, "message": "no dropping"}])
    v = judge(g, "DROP TABLE t")
    assert v.decision.kind is DecisionKind.DENY
    assert v.decision.rule == "no-drop"
    assert v.message == "no dropping"
    assert "kinds=drop" in v.decision.reason
    assert not judge(g, "CREATE TABLE t (a int)").refused


def test_every_key_must_match_any_value_in_it() -> None:
    g = guardrails(
        [{"name": "r", "match": {"kinds": ["delete", "update"], "writes": ["public.orders"]}}]
    )
    assert judge(g, "DELETE FROM orders WHERE id = 1").refused
    assert judge(g, "UPDATE public.orders SET a = 1 WHERE id = 1").refused
    assert not judge(g, "DELETE FROM other.orders WHERE id = 1").refused
    assert not judge(g, "DELETE FROM customers WHERE id = 1").refused
    assert not judge(g, "SELECT * FROM orders").refused


def test_functions_match_by_name_in_any_schema_and_case() -> None:
    g = guardrails([{"name": "r", "match": {"functions": ["pg_sleep"]}}])
    assert judge(g, "SELECT PG_CATALOG.PG_SLEEP(1)").refused
    assert not judge(g, "SELECT pg_sleep_for('1s')").refused


def test_scope_by_resource_subject_and_group() -> None:
    g = guardrails(
        [{"name": "r", "resources": ["prod"], "groups": ["dev"], "match": {"kinds": ["drop"]}}]
    )
    assert judge(g, "DROP TABLE t").refused
    assert not judge(g, "DROP TABLE t", resource="dev").refused
    assert not judge(g, "DROP TABLE t", who=DBA).refused


def test_first_match_wins_and_allow_carves_exceptions() -> None:
    g = guardrails(
        [
            {"name": "dba-ddl", "groups": ["dba"], "match": {"kinds": ["ddl"]}, "action": "allow"},
            {"use": "protect-production"},
        ]
    )
    assert not judge(g, "DROP TABLE t", who=DBA).refused
    v = judge(g, "DROP TABLE t")
    assert v.decision.rule == "protect-production/no-ddl"
    # The carve-out covers DDL only: the DBA still may not truncate.
    assert judge(g, "TRUNCATE t", who=DBA).decision.rule == "protect-production/no-truncate"


def test_review_refuses_with_a_clear_message() -> None:
    g = guardrails([{"use": "protect-production"}])
    v = judge(g, "DO $$BEGIN NULL; END$$")
    assert v.decision.kind is DecisionKind.REVIEW
    assert "approval" in v.message


def test_monitor_mode_records_and_lets_through() -> None:
    g = guardrails(
        [
            {"name": "watch", "match": {"kinds": ["delete"]}, "mode": "monitor"},
            {"name": "no-truncate", "match": {"kinds": ["truncate"]}},
        ]
    )
    v = judge(g, "DELETE FROM t WHERE id = 1")
    assert not v.refused
    assert v.decision.rule == "watch"
    assert v.decision.reason.startswith("monitor: watch: would deny")
    assert judge(g, "TRUNCATE t").refused
    monitored_set = guardrails([{"use": "protect-production", "mode": "monitor"}])
    assert not judge(monitored_set, "DROP TABLE t").refused


def test_multi_statement_strings_refused_by_any_statement() -> None:
    g = guardrails([{"name": "no-drop", "match": {"kinds": ["drop"]}}])
    assert judge(g, "SELECT 1; DROP TABLE t; SELECT 2").refused
    assert not judge(g, "SELECT 1; SELECT 2").refused


def test_unparsed_denied_by_default_configurable() -> None:
    g = guardrails([{"name": "r", "match": {"kinds": ["drop"]}}])
    v = judge(g, "DR/**/OP TABLE t")
    assert v.decision.rule == UNPARSED_RULE
    assert judge(g, "-- fastpath", opaque=True).refused
    lenient = guardrails([{"name": "r", "match": {"kinds": ["drop"]}}], unparsed="allow")
    assert not judge(lenient, "DR/**/OP TABLE t").refused


def test_read_only_sessions_cannot_escape_even_with_an_allow_rule() -> None:
    g = guardrails([{"name": "all", "action": "allow"}])
    v = judge(g, "SET default_transaction_read_only = off", read_only=True)
    assert v.decision.rule == READ_ONLY_RULE
    assert not judge(g, "SET default_transaction_read_only = off").refused
    assert judge(guardrails([]), "BEGIN READ WRITE", read_only=True).refused
    assert not judge(guardrails([]), "BEGIN READ ONLY", read_only=True).refused


@pytest.mark.parametrize(
    ("rule", "error"),
    [
        ({"name": "r", "match": {"kinds": ["dorp"]}}, "unknown kind 'dorp'"),
        ({"name": "r", "match": {"flags": ["nope"]}}, "unknown flag 'nope'"),
        ({"use": "nonexistent"}, "unknown rule set 'nonexistent'"),
        ({"use": "read-only", "action": "allow"}, "no `match` or `action`"),
        ({"match": {"kinds": ["drop"]}}, "needs a `name`"),
        ({"name": "r", "action": "maybe"}, "action"),
    ],
)
def test_schema_errors(rule: dict[str, Any], error: str) -> None:
    with pytest.raises(ValidationError, match=error):
        guardrails([rule])


def test_shipped_rule_sets_compile() -> None:
    g = guardrails([{"use": "protect-production"}, {"use": "read-only", "resources": ["dev"]}])
    assert "protect-production/no-ddl" in g.rules
    assert (
        judge(g, "INSERT INTO t VALUES (1)", resource="dev").decision.rule == "read-only/no-writes"
    )
    assert not judge(g, "SELECT * FROM t", resource="dev").refused
