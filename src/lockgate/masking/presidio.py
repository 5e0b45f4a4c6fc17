"""Microsoft Presidio as a second opinion for discovery (`lockgate classify`), when installed.

Presidio costs about a millisecond per value even without a language model, so it never runs
on the data path; sampling a few hundred values per column for discovery is fine. With no
spaCy model installed, a blank English pipeline is used: Presidio's pattern recognizers
(with their checksums and context words) still run, its named-entity ones find nothing.
Presidio's URL and e-mail checks look domain suffixes up with `tldextract`, which would
download the public suffix list; the bundled snapshot is used instead, so classifying never
reaches the network.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from typing import Any

log = logging.getLogger("lockgate.masking.presidio")

# Presidio entity → the kind of personal data `classify` suggests a rule for. Entities not
# listed (dates, URLs, national identifiers of other countries…) are not suggested.
ENTITY_KINDS = {
    "EMAIL_ADDRESS": "email",
    "PHONE_NUMBER": "phone",
    "CREDIT_CARD": "card",
    "US_SSN": "ssn",
    "IBAN_CODE": "iban",
    "IP_ADDRESS": "ipv4",
    "PERSON": "name",
    "US_PASSPORT": "passport",
    "US_DRIVER_LICENSE": "driver_license",
    "US_BANK_NUMBER": "bank_account",
    "CRYPTO": "crypto_wallet",
}
# Presidio scores below this are too weak to call a value personal data.
MIN_SCORE = 0.5


def load() -> Callable[[str], set[str]] | None:
    """A scanner `value -> kinds` backed by Presidio, or None when it is not installed."""
    try:
        import spacy
        import tldextract
        from presidio_analyzer import AnalyzerEngine
        from presidio_analyzer.nlp_engine import SpacyNlpEngine
    except ImportError:
        return None
    tldextract.tldextract.TLD_EXTRACTOR = tldextract.TLDExtract(suffix_list_urls=())
    model: str
    try:
        import en_core_web_sm  # noqa: F401

        model = "en_core_web_sm"
    except ImportError:
        model = tempfile.mkdtemp(prefix="lockgate-spacy-")
        spacy.blank("en").to_disk(model)
    engine: Any = AnalyzerEngine(
        nlp_engine=SpacyNlpEngine(models=[{"lang_code": "en", "model_name": model}]),
        supported_languages=["en"],
    )
    log.info("Presidio %s loaded (spaCy model: %s)", _version(), model)

    def kinds(value: str) -> set[str]:
        found = engine.analyze(text=value, language="en")
        return {
            ENTITY_KINDS[r.entity_type]
            for r in found
            if r.entity_type in ENTITY_KINDS and r.score >= MIN_SCORE
        }

    return kinds


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("presidio-analyzer")
    except PackageNotFoundError:
        return "?"
