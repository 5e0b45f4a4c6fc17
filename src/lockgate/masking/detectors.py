"""Content detectors: find personal data and secrets inside text values.

Each detector is a regular expression that proposes candidates and, where the data has one,
a checksum or structure check that confirms them (Luhn for payment cards, ISO 13616 mod 97
for IBANs, the SSA's rules for US SSNs, `ipaddress` for IPv6, a JSON header for JWTs).
A value costs a few microseconds: a cheap character pre-check skips detectors that cannot
match, so most values are never scanned by most patterns.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

Span = tuple[int, int]


@dataclass(frozen=True, slots=True)
class Detector:
    """A named kind of sensitive content: a candidate pattern and an optional check."""

    name: str
    pattern: re.Pattern[str]
    check: Callable[[str], bool] | None = None
    # A value that contains none of these characters cannot match (empty: always scan).
    needs: frozenset[str] = field(default_factory=frozenset)

    def find(self, text: str) -> list[Span]:
        """Spans of `text` this detector confirms."""
        if self.needs and not any(c in text for c in self.needs):
            return []
        out: list[Span] = []
        check = self.check
        for mt in self.pattern.finditer(text):
            if check is None or check(mt.group(0)):
                out.append(mt.span())
        return out


# -- checks ------------------------------------------------------------------------------


def luhn_ok(digits: str) -> bool:
    """True when a string of digits passes the Luhn checksum."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _card_ok(text: str) -> bool:
    digits = "".join(c for c in text if c.isdigit())
    return 13 <= len(digits) <= 19 and luhn_ok(digits)


def ssn_ok(text: str) -> bool:
    """True for a well-formed US SSN (area not 000/666/9xx, group not 00, serial not 0000)."""
    digits = "".join(c for c in text if c.isdigit())
    if len(digits) != 9:
        return False
    area, group, serial = digits[:3], digits[3:5], digits[5:]
    return area not in ("000", "666") and area[0] != "9" and group != "00" and serial != "0000"


# Lengths of IBANs per country (ISO 13616 registry, the common ones; others: 15..34).
_IBAN_LENGTHS = {
    "AD": 24, "AT": 20, "BE": 16, "BG": 22, "CH": 21, "CY": 28, "CZ": 24, "DE": 22, "DK": 18,
    "EE": 20, "ES": 24, "FI": 18, "FR": 27, "GB": 22, "GR": 27, "HR": 21, "HU": 28, "IE": 22,
    "IS": 26, "IT": 27, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "MC": 27, "MT": 31, "NL": 18,
    "NO": 15, "PL": 28, "PT": 25, "RO": 24, "SE": 24, "SI": 19, "SK": 24, "SM": 27,
}  # fmt: skip


def iban_ok(text: str) -> bool:
    """True when `text` (spaces allowed) is an IBAN whose mod-97 checksum is 1."""
    s = text.replace(" ", "").upper()
    if not 15 <= len(s) <= 34 or not s[:2].isalpha() or not s[2:4].isdigit():
        return False
    expected = _IBAN_LENGTHS.get(s[:2])
    if expected is not None and len(s) != expected:
        return False
    moved = s[4:] + s[:4]
    try:
        number = int("".join(str(int(c, 36)) for c in moved))
    except ValueError:
        return False
    return number % 97 == 1


def _ipv6_ok(text: str) -> bool:
    if text.count(":") < 2:
        return False
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def _phone_ok(text: str) -> bool:
    digits = sum(c.isdigit() for c in text)
    return 7 <= digits <= 15


def _jwt_ok(text: str) -> bool:
    head = text.split(".", 1)[0]
    try:
        decoded = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
    except (ValueError, binascii.Error):
        return False
    return isinstance(decoded, dict) and "alg" in decoded


_DIGITS = frozenset("0123456789")

BUILTIN: dict[str, Detector] = {
    d.name: d
    for d in (
        Detector(
            "email",
            re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"),
            needs=frozenset("@"),
        ),
        Detector(
            "card",
            re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])"),
            _card_ok,
            _DIGITS,
        ),
        # Every SSN the pattern takes has a '-': rarer in text than a digit.
        Detector(
            "ssn", re.compile(r"(?<![\d-])\d{3}-\d{2}-\d{4}(?![\d-])"), ssn_ok, frozenset("-")
        ),
        Detector(
            "iban",
            re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b"),
            iban_ok,
            _DIGITS,
        ),
        Detector(
            "phone",
            re.compile(
                r"(?<![\w+])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?|\d{1,4}[ .-])?"
                r"\d{3}[ .-]\d{3,4}(?:[ .-]\d{2,4})?(?![\w-])"
                r"|(?<![\w+])\+\d{8,15}(?!\w)"
            ),
            _phone_ok,
            _DIGITS,
        ),
        Detector(
            "ipv4",
            re.compile(
                r"(?<![\d.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}"
                r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?![\d.])"
            ),
            needs=frozenset("."),
        ),
        Detector(
            "ipv6",
            re.compile(
                r"(?<![0-9A-Fa-f:])[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}"
                r"(?![0-9A-Fa-f:])"
            ),
            _ipv6_ok,
            frozenset(":"),
        ),
        Detector(
            "aws_key",
            re.compile(r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA|AIPA|ANPA|ANVA|ABIA|ACCA)[A-Z0-9]{16}\b"),
            needs=frozenset("A"),
        ),
        Detector(
            "private_key",
            re.compile(
                r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----"
                r"(?:.*?-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----|.*\Z)",
                re.DOTALL,
            ),
            needs=frozenset("-"),
        ),
        Detector(
            "jwt",
            re.compile(r"\beyJ[A-Za-z0-9_-]{4,}\.eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*"),
            _jwt_ok,
            frozenset("."),
        ),
    )
}

# Detectors `detect: [ip]` and `[secrets]` stand for.
GROUPS: dict[str, tuple[str, ...]] = {
    "ip": ("ipv4", "ipv6"),
    "secrets": ("aws_key", "private_key", "jwt"),
    "all": tuple(BUILTIN),
}

# Precedence when spans overlap: the more specific kind wins (an SSN is not a phone number).
_ORDER = ("private_key", "jwt", "aws_key", "email", "iban", "card", "ssn", "ipv6", "ipv4", "phone")


def custom(name: str, pattern: str) -> Detector:
    """A named detector from a regular expression of the manifest."""
    return Detector(name, re.compile(pattern))


def resolve(names: Iterable[str], customs: Sequence[Detector] = ()) -> tuple[Detector, ...]:
    """Detectors for manifest names (built-in, group or custom), most specific first."""
    by_name = {d.name: d for d in customs}
    chosen: dict[str, Detector] = {}
    for name in names:
        if name in GROUPS:
            for n in GROUPS[name]:
                chosen[n] = BUILTIN[n]
        elif name in by_name:
            chosen[name] = by_name[name]
        elif name in BUILTIN:
            chosen[name] = BUILTIN[name]
        else:
            raise KeyError(name)
    rank = {n: i for i, n in enumerate(_ORDER)}
    return tuple(sorted(chosen.values(), key=lambda d: rank.get(d.name, -1)))


def known_names() -> tuple[str, ...]:
    return (*BUILTIN, *GROUPS)


def scan(text: str, detectors: Sequence[Detector]) -> list[tuple[int, int, str]]:
    """Non-overlapping findings `(start, end, detector name)` in `text`, in order.

    Detectors come most specific first; a later detector's span that overlaps an earlier
    finding is dropped.
    """
    found: list[tuple[int, int, str]] = []
    for det in detectors:
        for start, end in det.find(text):
            if start == end:
                continue
            if any(start < e and s < end for s, e, _ in found):
                continue
            found.append((start, end, det.name))
    found.sort()
    return found
