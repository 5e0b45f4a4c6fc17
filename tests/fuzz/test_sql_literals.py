"""Property tests of the literal key: the compiled twin against the Python reference."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lockgate.sql.literals import LITERAL_KEY_COMPILED, canonical, literal_key_py

settings.register_profile(
    "ci", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "deep", max_examples=5000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# Pieces that exercise every rule: quotes and doubled quotes, comments, prefixes, numbers of
# every form, identifiers (also non-ASCII), the refused characters.
_PIECES = [
    "SELECT", " ", "\n", "\t", "'", "''", '"', '""', "--", "/*", "*/", "-", "&", "U", "E",
    "B", "X", "N", "a", "t1", "_", ".", "1", "42", "007", "123456789", "1234567890", "1e5",
    "0x1F", "1_0", "$", "$1", "\\", "é", "ß", "=", ",", ";", "(", ")", "::", "\x01", "\x00",
    "\r", "WHERE", "'x'", "'it''s'", '"q"',
]  # fmt: skip
soups = st.lists(st.sampled_from(_PIECES), max_size=40).map("".join)
compiled = pytest.mark.skipif(LITERAL_KEY_COMPILED is None, reason="kernel not built")


@compiled
@given(st.one_of(soups, st.text(max_size=120)))
def test_compiled_key_equals_the_reference(text: str) -> None:
    assert LITERAL_KEY_COMPILED is not None
    assert LITERAL_KEY_COMPILED(text) == literal_key_py(text)


@given(soups)
def test_a_key_is_its_own_blanks_filled_in(text: str) -> None:
    # The canonical texts the analyzer checks a key with have that same key.
    key = literal_key_py(text)
    if key is not None:
        for number, string in ((b"1", b"'a'"), (b"2", b"'b'")):
            assert literal_key_py(canonical(key, number, string)) == key
