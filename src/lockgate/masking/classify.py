"""Discovery: which table columns hold personal data, from samples of their values.

`classify(samples)` runs the content detectors over sampled values of each column and
suggests a column rule where a detector matches a sizeable share of the non-empty values.
When Microsoft Presidio is installed, its recognizers vote too (`masking/presidio.py`).
Column names are a hint too (`ssn`, `email`, `card_number`, …) so a column whose sample is
empty still gets a suggestion. Suggestions are printed as manifest YAML to paste.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from lockgate.masking import detectors as det

# Share of non-empty sampled values a detector must match to call the column that kind.
THRESHOLD = 0.5
_STRATEGY = {"email": "partial", "phone": "partial", "card": "partial", "ssn": "partial",
             "iban": "partial", "ipv4": "hash", "ipv6": "hash", "aws_key": "redact",
             "private_key": "redact", "jwt": "redact", "name": "hash"}  # fmt: skip
_NAMES = [
    (re.compile(r"ssn|social_?sec"), "ssn"),
    (re.compile(r"e_?mail"), "email"),
    (re.compile(r"phone|mobile|msisdn"), "phone"),
    (re.compile(r"card_?(num|no)|pan$|credit_?card"), "card"),
    (re.compile(r"iban"), "iban"),
    (re.compile(r"(^|_)ip(_?addr(ess)?)?$"), "ipv4"),
    (re.compile(r"passw|secret|api_?key|token"), "aws_key"),
]


@dataclass(frozen=True, slots=True)
class Suggestion:
    schema: str
    table: str
    column: str
    kind: str
    share: float
    sampled: int
    by_name: bool = False

    @property
    def strategy(self) -> str:
        return _STRATEGY.get(self.kind, "redact")


def classify_column(
    schema: str,
    table: str,
    column: str,
    values: Sequence[str | None],
    extra: Callable[[str], set[str]] | None = None,
) -> Suggestion | None:
    """The most likely kind of personal data in a column, or None.

    `extra`: another scanner (Presidio) whose kinds count alongside the detectors'.
    """
    present = [v for v in values if v]
    detectors = det.resolve(["all"])
    best: tuple[float, str] = (0.0, "")
    if present:
        counts: dict[str, int] = {}
        for v in present:
            kinds = {n for _, _, n in det.scan(v, detectors)}
            if extra is not None:
                kinds |= extra(v)
            for name in kinds:
                counts[name] = counts.get(name, 0) + 1
        for name, n in counts.items():
            share = n / len(present)
            if share > best[0]:
                best = (share, name)
    if best[0] >= THRESHOLD:
        return Suggestion(schema, table, column, best[1], best[0], len(present))
    lowered = column.lower()
    for pattern, kind in _NAMES:
        if pattern.search(lowered):
            return Suggestion(schema, table, column, kind, best[0], len(present), by_name=True)
    return None


def classify(
    samples: Iterable[tuple[str, str, str, Sequence[str | None]]],
    extra: Callable[[str], set[str]] | None = None,
) -> list[Suggestion]:
    """Suggestions for the sampled columns that look personal (`extra`: e.g. Presidio)."""
    out: list[Suggestion] = []
    for schema, table, column, values in samples:
        s = classify_column(schema, table, column, values, extra)
        if s is not None:
            out.append(s)
    return out


def as_yaml(resource: str, suggestions: Sequence[Suggestion]) -> str:
    """Manifest text for the suggestions: a masking rule to paste and adjust."""
    lines = [
        "masking:",
        "  rules:",
        f"    - name: {resource}-pii",
        f"      resources: [{resource}]",
        "      groups: []          # whom to mask for (empty: everyone)",
        "      clear_groups: []    # who sees clear values",
        "      columns:",
    ]
    for s in suggestions:
        why = (
            "column name" if s.by_name and s.share < THRESHOLD else f"{s.share:.0%} of {s.sampled}"
        )
        lines.append(
            f"        - {{column: {s.schema}.{s.table}.{s.column}, strategy: {s.strategy}}}"
            f"  # {s.kind} ({why})"
        )
    lines.append("      detect: [email, phone, card, ssn, iban, secrets]")
    return "\n".join(lines) + "\n"
