"""A statement's literal key: its text with plain literals blanked, found without parsing.

Theory of operation
-------------------
Programs send the same statement again and again with other values (`... WHERE aid =
48213`). The analyzer already answers those from its shape cache, keyed by libpg_query's
`normalize` (constants become `$n`), but `normalize` parses the whole text, the costliest
step left per statement. The literal key finds the same sameness with one pass over the bytes:
the UTF-8 text with every plain integer (`\\x01`) and plain string constant (`\\x02`)
blanked, everything else kept byte for byte. Two texts with the same key differ only in
the values of those literals; what the key cannot read safely, it refuses (None): any `$`
(parameters, dollar quotes), backslash, control character or block comment; a string with
a prefix (`E'`, `B'`, `X'`, `N'`, `U&'`); an unterminated quote.

The key is coarser than `normalize` in a few places: it blanks `ORDER BY 1`, a typmod's
`varchar(10)` or `COPY`'s file name, which `normalize` keeps. So the analyzer trusts a key
only after checking, for the first text that has it, that blanking it loses nothing: the
text with every blank set to one value and to another must both normalize to the text's
own shape (`_keyed` in analyze.py). Texts with the same key differ only in literal values, not
in the tokens around them, which are all `normalize` goes by.

`_literals.c` is the compiled twin (built at install when a C compiler is there, like the
PostgreSQL framing kernel); `literal_key_py` here is the reference it is tested against.
The analyzer uses the key only compiled (`LITERAL_KEY_COMPILED`): in Python it would cost
more than it saves (about 7 µs against `normalize`'s 2; compiled 0.2).
"""

from __future__ import annotations

import re
from collections.abc import Callable

INT = b"\x01"
STRING = b"\x02"
# An integer literal longer than this may not fit in 32 bits (then PostgreSQL reads it as
# a numeric constant); kept as it is.
MAX_DIGITS = 9

_REFUSED = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f$\\]|/\*")
_TOKEN = re.compile(
    rb"""(?P<comment>--[^\n]*)
    |(?P<quoted>"(?:[^"]|"")*")
    |(?P<string>'(?:[^']|'')*')
    |(?P<run>[0-9A-Za-z_.\x80-\xff]+)
    |(?P<other>[\s\S])""",
    re.VERBOSE,
)
_IDENT = frozenset(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_") | frozenset(
    range(0x80, 0x100)
)


def literal_key_py(text: str) -> bytes | None:
    """The literal key of `text` (see the module's doc), or None where it cannot be had."""
    try:
        data = text.encode()
    except UnicodeEncodeError:  # a lone surrogate: not a text a server would take
        return None
    if _REFUSED.search(data):
        return None
    out: list[bytes] = []
    pos = 0
    n = len(data)
    while pos < n:
        tok = _TOKEN.match(data, pos)
        assert tok is not None  # `other` matches any byte
        kind = tok.lastgroup
        end = tok.end()
        piece = data[pos:end]
        if kind == "string":
            if pos > 0 and (data[pos - 1] in _IDENT or data[pos - 1] == 0x26):  # 0x26: '&'
                return None  # E'…', B'…', X'…', N'…', U&'…': not a plain string
            out.append(STRING)
        elif kind == "run" and piece.isdigit() and len(piece) <= MAX_DIGITS:
            out.append(INT)
        elif kind == "other" and piece in (b"'", b'"'):
            return None  # an unterminated quote
        else:
            out.append(piece)  # identifiers, keywords, other numbers, operators, comments
        pos = end
    return b"".join(out)


def canonical(key: bytes, integer: bytes, string: bytes) -> str:
    """A text with `key`, every blank set to `integer` or `string`."""
    return key.replace(INT, integer).replace(STRING, string).decode()


def _compiled() -> Callable[[str], bytes | None] | None:
    try:
        from lockgate.sql import _literals  # type: ignore[attr-defined]
    except ImportError:  # built without a C compiler
        return None
    key: Callable[[str], bytes | None] = _literals.key
    return key


# The compiled twin (`_literals.c`), or None when it was not built.
LITERAL_KEY_COMPILED = _compiled()
