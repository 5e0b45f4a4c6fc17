"""`rows_over`: a guardrail that decides on the planner's row estimate."""

from __future__ import annotations

from typing import Any

from lockgate.config.model import Manifest
from lockgate.model import DecisionKind, Principal
from lockgate.policy.guardrails import Guardrails, Verdict
from lockgate.sql.analyze import Analyzer

ALICE = Principal("alice", frozenset({"dev"}))
_analyzer = Analyzer()
_RULE = {
    "name": "bulk",
    "match": {"kinds": ["select"], "reads": ["big"], "rows_over": 1000},
    "action": "review",
}


def _judge(sql: str, **kw: Any) -> Verdict:
    g = Guardrails(
        Manifest.model_validate(
            {
                "resources": [{"name": "prod", "upstream": {"database": "d", "user": "u"}}],
                "guardrails": {"rules": [_RULE]},
            }
        )
    )
    return g.judge(ALICE, "prod", _analyzer.analyze(sql), **kw)


def test_matching_facts_ask_for_an_estimate_first() -> None:
    v = _judge("SELECT * FROM big")
    assert v.needs_estimate and not v.refused


def test_other_facts_need_no_estimate() -> None:
    v = _judge("SELECT * FROM small")
    assert not v.needs_estimate and not v.refused


def test_under_the_threshold_passes() -> None:
    v = _judge("SELECT * FROM big", estimate=1000)
    assert not v.needs_estimate and not v.refused


def test_over_the_threshold_is_held_with_the_estimate_in_the_reason() -> None:
    v = _judge("SELECT * FROM big", estimate=1001)
    assert v.decision.kind is DecisionKind.REVIEW and v.decision.rule == "bulk"
    assert "estimated rows=1001 > 1000" in v.decision.reason


def test_no_estimate_fails_closed() -> None:
    v = _judge("SELECT * FROM big", estimate=-1)
    assert v.decision.kind is DecisionKind.REVIEW
    assert "no row estimate" in v.decision.reason


def test_under_the_threshold_is_watched_for_the_actual_rows() -> None:
    v = _judge("SELECT * FROM big", estimate=40)
    assert not v.refused and v.watch is not None
    assert (v.watch.rule, v.watch.threshold, v.watch.estimate) == ("bulk", 1000, 40)
    assert v.watch.action is DecisionKind.REVIEW


def test_other_reads_are_not_watched() -> None:
    assert _judge("SELECT * FROM small").watch is None
    assert _judge("SELECT * FROM big", estimate=1001).watch is None
