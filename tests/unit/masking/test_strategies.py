"""Masking strategies: redact, partial, keyed hash, null."""

from __future__ import annotations

from lockgate.masking.strategies import Strategy, partial


def test_partial_keeps_shape() -> None:
    assert partial("123-45-6789") == "***-**-6789"
    assert partial("4111 1111 1111 1111") == "**** **** **** 1111"
    assert partial("jane@example.com") == "****@example.com"
    assert partial("abc") == "***"  # too short to keep anything
    assert partial("+1 415-555-0134", 2) == "+* ***-***-**34"


def test_hash_is_keyed_and_deterministic() -> None:
    a = Strategy("hash", key=b"k1")
    b = Strategy("hash", key=b"k2")
    assert a.apply("x") == a.apply("x")
    assert a.apply("x") != a.apply("y")
    assert a.apply("x") != b.apply("x")
    value = a.apply("123-45-6789")
    assert value is not None and value.startswith("h:") and "6789" not in value


def test_redact_null_and_labels() -> None:
    assert Strategy("redact").apply("secret") == "****"
    assert Strategy("redact", text="[hidden]").apply("secret") == "[hidden]"
    assert Strategy("null").apply("secret") is None
    assert Strategy("redact").label("email").apply("a@b.co") == "<email>"
    assert not Strategy("null").changes_type and Strategy("hash").changes_type
