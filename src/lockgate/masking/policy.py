"""Which masking applies to one identity on one resource, from the manifest's `masking:`.

`MaskPolicy.for_session(manifest, principal, resource, key)` merges every rule that matches
the principal (and does not list it as seeing clear values) into one policy: column rules
in manifest order (the first matching pattern wins), content detectors, and the mode
(`strict` when any matching rule says so). An empty policy means the session is not
masked at all, and the relay does no masking work for it.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lockgate.config.model import Manifest, MaskingRule
from lockgate.masking import detectors as det
from lockgate.masking.strategies import REDACT, Strategy
from lockgate.model import Principal

HASH_KEY_FILE = "masking-hash.key"


@dataclass(frozen=True, slots=True)
class ColumnRule:
    """A `schema.table.column` pattern (lower case, wildcards) and how to mask it."""

    rule: str
    pattern: tuple[str, str, str]
    strategy: Strategy

    def matches(self, schema: str, table: str, column: str) -> bool:
        s, t, c = self.pattern
        return (
            fnmatch.fnmatchcase(column.lower(), c)
            and fnmatch.fnmatchcase(table.lower(), t)
            and fnmatch.fnmatchcase(schema.lower(), s)
        )


@dataclass(frozen=True, slots=True)
class ColumnMaskSpec:
    """What to do with one table column: its rule name and strategy."""

    rule: str
    strategy: Strategy


@dataclass(frozen=True, slots=True)
class MaskPolicy:
    """Everything masking needs to know for one session."""

    columns: tuple[ColumnRule, ...] = ()
    detectors: tuple[det.Detector, ...] = ()
    detect_strategy: Strategy = REDACT
    detect_rule: str = ""
    strict: bool = False
    # The manifest rule that made the session strict (named in refusals).
    strict_rule: str = ""

    @property
    def active(self) -> bool:
        return bool(self.columns or self.detectors)

    def column(self, schema: str, table: str, column: str) -> ColumnMaskSpec | None:
        """How the table column `schema.table.column` is masked, or None."""
        for c in self.columns:
            if c.matches(schema, table, column):
                return ColumnMaskSpec(c.rule, c.strategy)
        return None

    def scrub(self, text: str) -> tuple[str, int]:
        """`text` with detected content masked, and the number of findings."""
        if not self.detectors:
            return text, 0
        found = det.scan(text, self.detectors)
        if not found:
            return text, 0
        out: list[str] = []
        pos = 0
        for start, end, name in found:
            out.append(text[pos:start])
            masked = self.detect_strategy.label(name).apply(text[start:end])
            out.append("" if masked is None else masked)
            pos = end
        out.append(text[pos:])
        return "".join(out), len(found)

    @classmethod
    def for_session(
        cls, manifest: Manifest, principal: Principal, resource: str, key: bytes
    ) -> MaskPolicy:
        """The merged policy of every rule that masks for `principal` on `resource`."""
        rules = [r for r in manifest.masking.rules if _applies(r, principal, resource)]
        if not rules:
            return cls()
        customs = [det.custom(d.name, d.pattern) for d in manifest.masking.detectors]
        columns: list[ColumnRule] = []
        names: list[str] = []
        detect_strategy: Strategy | None = None
        detect_rule = ""
        for r in rules:
            for c in r.columns:
                parts = c.column.lower().split(".")
                pattern = ("*",) * (3 - len(parts)) + tuple(parts)
                strategy = Strategy(c.strategy, text=c.text, keep_last=c.keep_last, key=key)
                columns.append(ColumnRule(r.name, (pattern[0], pattern[1], pattern[2]), strategy))
            if r.detect:
                names += r.detect
                if detect_strategy is None:
                    detect_strategy = Strategy(r.detect_strategy, key=key)
                    detect_rule = r.name
        return cls(
            columns=tuple(columns),
            detectors=det.resolve(names, customs),
            detect_strategy=detect_strategy or Strategy("redact"),
            detect_rule=detect_rule,
            strict=any(r.mode == "strict" for r in rules),
            strict_rule=next((r.name for r in rules if r.mode == "strict"), ""),
        )


def _applies(rule: MaskingRule, principal: Principal, resource: str) -> bool:
    if "*" not in rule.resources and resource not in rule.resources:
        return False
    if principal.subject in rule.clear_subjects or principal.groups & set(rule.clear_groups):
        return False
    if not rule.subjects and not rule.groups:
        return True
    return (
        principal.subject in rule.subjects
        or "*" in rule.subjects
        or bool(principal.groups & set(rule.groups))
    )


def masked_resources(manifest: Manifest) -> Sequence[str]:
    """Resource names some masking rule mentions (`*` included as is)."""
    return sorted({name for r in manifest.masking.rules for name in r.resources})


def load_hash_key(manifest: Manifest, resolve: object = None) -> bytes:
    """The `hash` strategy's key: the manifest's reference, or a key file in the state folder.

    `resolve` turns a credential reference into its value (the gate passes its resolver).
    """
    ref = manifest.masking.hash_key
    if ref is not None and callable(resolve):
        value = resolve(ref)
        if isinstance(value, str) and value:
            return value.encode()
    path = manifest.state_dir / HASH_KEY_FILE
    return _key_file(path)


def _key_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    key = os.urandom(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        # Another worker created it first: use theirs, so every worker hashes alike.
        return path.read_bytes()
    with os.fdopen(fd, "wb") as f:
        f.write(key)
    return key
