"""How a value is masked: `redact`, `partial`, `hash` (keyed HMAC) or `null`.

A strategy turns the text of a value into the masked text, or None for SQL NULL. Every
strategy except `null` produces text, so a masked cell is valid for the `text` type in both
the text and the binary result formats (both are the UTF-8 bytes); the plan adjusts the
column's type when the original type would not parse the masked text.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Literal

StrategyName = Literal["redact", "partial", "hash", "null"]


@dataclass(frozen=True, slots=True)
class Strategy:
    """One way to mask a value; `apply` is called only for non-NULL cells."""

    name: StrategyName
    text: str = "****"
    keep_last: int = 4
    key: bytes = b""
    # Hex digits of the HMAC kept in `hash` output (64 bits by default: joins still line up).
    hash_chars: int = 16

    def apply(self, value: str) -> str | None:
        if self.name == "redact":
            return self.text
        if self.name == "null":
            return None
        if self.name == "hash":
            digest = hmac.digest(self.key, value.encode("utf-8", "surrogatepass"), "sha256")
            return "h:" + digest.hex()[: self.hash_chars]
        return partial(value, self.keep_last)

    @property
    def changes_type(self) -> bool:
        """True when the output is text (not NULL) and so needs a text-typed column."""
        return self.name != "null"

    def label(self, detector: str) -> Strategy:
        """The strategy for content found by `detector`: redact says what was found."""
        if self.name == "redact" and self.text == "****":
            return Strategy("redact", f"<{detector}>")
        return self


def partial(value: str, keep_last: int = 4) -> str:
    """Keep an email's domain, or the last `keep_last` letters/digits; star out the rest.

    Separators stay where they were, so `123-45-6789` becomes `***-**-6789` and
    `4111 1111 1111 1111` becomes `**** **** **** 1111`. Short values are fully starred.
    """
    at = value.rfind("@")
    if 0 < at < len(value) - 1 and "." in value[at:]:
        return "****" + value[at:]
    alnum = sum(c.isalnum() for c in value)
    keep = keep_last if alnum > keep_last * 2 else 0
    out: list[str] = []
    seen = 0
    limit = alnum - keep
    for c in value:
        if c.isalnum():
            out.append("*" if seen < limit else c)
            seen += 1
        else:
            out.append(c)
    return "".join(out)


REDACT = Strategy("redact")
NULL = Strategy("null")
