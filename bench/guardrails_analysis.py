"""Cost of statement analysis and guardrail judgement per statement (not part of the tests).

    .venv/bin/python bench/guardrails_analysis.py [-n 20000]

Prints microseconds per statement for: a cold analysis (parse + walk, every text new), a
shape-cache hit (same text but for constants), an exact-text hit, and the judgement
of the `protect-production` rule set on an analysed statement.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from lockgate.config.model import Manifest
from lockgate.model import Principal
from lockgate.policy.guardrails import Guardrails
from lockgate.sql.analyze import Analyzer

SHAPES = {
    "pgbench select": "SELECT abalance FROM pgbench_accounts WHERE aid = {i}",
    "pgbench update": "UPDATE pgbench_accounts SET abalance = abalance + {i} WHERE aid = {i}",
    "join + cte": (
        "WITH recent AS (SELECT id, customer_id FROM orders WHERE created > now() - interval "
        "'{i} days') SELECT c.email, count(*) FROM customers c JOIN recent r "
        "ON r.customer_id = c.id GROUP BY c.email ORDER BY 2 DESC LIMIT 10"
    ),
    "delete where 1=1": "DELETE FROM customers WHERE {i} = {i}",
}


def per_call(fn: Callable[[int], object], n: int) -> float:
    start = time.perf_counter()
    for i in range(n):
        fn(i)
    return (time.perf_counter() - start) / n * 1e6


def row(shape: str, guardrails: Guardrails, who: Principal, n: int) -> str:
    cold = per_call(lambda i: Analyzer().analyze(shape.format(i=i)), n // 10)
    warm = Analyzer()
    warm.analyze(shape.format(i=-1))
    shape_hit = per_call(lambda i: warm.analyze(shape.format(i=i)), n)
    text = shape.format(i=7)
    warm.analyze(text)
    text_hit = per_call(lambda i: warm.analyze(text), n)
    analysis = warm.analyze(text)
    judged = per_call(lambda i: guardrails.judge(who, "prod", analysis), n)
    return f"{cold:9.1f} {shape_hit:10.1f} {text_hit:9.2f} {judged:8.2f}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=20_000)
    n = parser.parse_args().n
    manifest = Manifest.model_validate(
        {
            "resources": [{"name": "prod", "upstream": {"database": "d", "user": "u"}}],
            "guardrails": {"rules": [{"use": "protect-production"}]},
        }
    )
    guardrails = Guardrails(manifest)
    who = Principal("bench", frozenset({"dev"}))
    print(f"{'statement':18} {'cold':>9} {'shape hit':>10} {'text hit':>9} {'judge':>8}  (µs)")
    for label, shape in SHAPES.items():
        print(f"{label:18} " + row(shape, guardrails, who, n))
    print("(a text hit is what a repeated or prepared statement costs; shape hits are")
    print(" unavailable to text-dependent statements such as `WHERE 1 = 1`, which parse cold)")


if __name__ == "__main__":
    main()
