"""Content detectors: valid values found, look-alikes with bad checksums left alone."""

from __future__ import annotations

import pytest

from lockgate.masking import detectors as det


def _names(text: str, names: tuple[str, ...] = ("all",)) -> list[tuple[str, str]]:
    found = det.scan(text, det.resolve(names))
    return [(name, text[s:e]) for s, e, name in found]


@pytest.mark.parametrize(
    ("text", "kind", "value"),
    [
        ("mail jane.doe+x@example.co.uk now", "email", "jane.doe+x@example.co.uk"),
        ("card 4111 1111 1111 1111 ok", "card", "4111 1111 1111 1111"),
        ("card 5500-0000-0000-0004", "card", "5500-0000-0000-0004"),
        ("ssn 123-45-6789.", "ssn", "123-45-6789"),
        ("iban GB82 WEST 1234 5698 7654 32 end", "iban", "GB82 WEST 1234 5698 7654 32"),
        ("iban DE89370400440532013000", "iban", "DE89370400440532013000"),
        ("from 192.168.10.254 at", "ipv4", "192.168.10.254"),
        ("v6 2001:db8::8a2e:370:7334 here", "ipv6", "2001:db8::8a2e:370:7334"),
        ("call +1 415-555-0134 today", "phone", "+1 415-555-0134"),
        ("key AKIAIOSFODNN7EXAMPLE in env", "aws_key", "AKIAIOSFODNN7EXAMPLE"),
    ],
)
def test_detects_valid_values(text: str, kind: str, value: str) -> None:
    assert (kind, value) in _names(text)


@pytest.mark.parametrize(
    "text",
    [
        "card 4111 1111 1111 1112",  # Luhn fails
        "ssn 000-45-6789",  # area 000
        "ssn 666-45-6789",
        "ssn 900-45-6789",
        "ssn 123-00-6789",
        "ssn 123-45-0000",
        "iban GB83 WEST 1234 5698 7654 32",  # mod 97 fails
        "iban DE8937040044053201300",  # wrong length for DE
        "ip 256.1.1.1",
        "time 12:30:45",  # not an IPv6 address
        "order 12345",
        "nobody at example",
    ],
)
def test_leaves_look_alikes(text: str) -> None:
    found = _names(text, ("card", "ssn", "iban", "ip", "phone"))
    assert not [f for f in found if f[0] != "phone"], found


def test_checksums() -> None:
    assert det.luhn_ok("79927398713") and not det.luhn_ok("79927398710")
    assert det.iban_ok("FR14 2004 1010 0505 0001 3M02 606")
    assert not det.iban_ok("FR15 2004 1010 0505 0001 3M02 606")
    assert det.ssn_ok("078-05-1120") and not det.ssn_ok("078-05-0000")


def test_secrets() -> None:
    jwt = (
        "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0."
        "dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"
    )
    assert ("jwt", jwt) in _names(f"Bearer {jwt}")
    assert not [n for n, _ in _names("eyJub3QiOiJqd3QifQ.eyJhIjoxfQ.x") if n == "jwt"]
    pem = "-----BEGIN RSA PRIVATE KEY-----\nMIIEow\n-----END RSA PRIVATE KEY-----"
    assert ("private_key", pem) in _names(f"x {pem} y")
    # A truncated block is still caught to the end of the value.
    assert _names("-----BEGIN PRIVATE KEY-----\nMIIE")[0][0] == "private_key"


def test_specific_kinds_win_overlaps() -> None:
    found = _names("ssn 123-45-6789 card 4111111111111111")
    assert [n for n, _ in found] == ["ssn", "card"]


def test_custom_detector_and_unknown_name() -> None:
    emp = det.custom("employee_id", r"EMP-\d{6}")
    assert det.scan("id EMP-123456", det.resolve(["employee_id"], [emp])) == [
        (3, 13, "employee_id")
    ]
    with pytest.raises(KeyError):
        det.resolve(["nope"])
