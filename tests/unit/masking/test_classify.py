"""Discovery: suggested column rules from sampled values and column names."""

from __future__ import annotations

import yaml

from lockgate.config.model import Manifest
from lockgate.masking.classify import as_yaml, classify


def test_classify_by_content_and_by_name() -> None:
    samples = [
        ("public", "people", "contact", ["a@example.com", "b@example.org", None, "n/a"]),
        ("public", "people", "tax_id", ["123-45-6789", "234-56-7890"]),
        ("public", "people", "notes", ["hello", "world", "x@y.zz"]),
        ("public", "people", "ssn", [None, None]),
        ("public", "people", "city", ["Paris", "Oslo"]),
    ]
    got = {(s.column, s.kind) for s in classify(samples)}
    assert got == {("contact", "email"), ("tax_id", "ssn"), ("ssn", "ssn")}
    text = as_yaml("db", classify(samples))
    manifest = Manifest.model_validate({"masking": yaml.safe_load(text)["masking"]})
    (rule,) = manifest.masking.rules
    assert [c.column for c in rule.columns] == [
        "public.people.contact",
        "public.people.tax_id",
        "public.people.ssn",
    ]


def test_presidio_votes_when_installed() -> None:
    """Presidio (a test dependency) finds kinds the built-in detectors do not know."""
    from lockgate.masking import presidio

    scanner = presidio.load()
    assert scanner is not None, "presidio-analyzer is a test dependency"
    wallets = [
        ("public", "payouts", "wallet", ["1BoatSLRHtKNngkdXEeobR76b53LETtpyT"] * 3),
        ("public", "payouts", "memo", ["thanks", "see you", "ok"]),
    ]
    assert classify(wallets) == []
    (found,) = classify(wallets, scanner)
    assert (found.column, found.kind, found.strategy) == ("wallet", "crypto_wallet", "redact")
    # Built-in kinds still come out under their own names.
    (email,) = classify([("public", "people", "contact", ["a@example.com"])], scanner)
    assert email.kind == "email"
