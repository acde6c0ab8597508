"""gatez.pii: conformance with Presidio's own engine, redaction actions, the JSON walk, and
the streaming redactor at every chunk boundary."""

from __future__ import annotations

import hashlib
import random
import threading
from collections.abc import Iterator
from typing import Any

import phonenumbers
import pytest
import spacy
import tldextract
import tldextract.tldextract
from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
from presidio_analyzer.nlp_engine import SpacyNlpEngine

from gatez.pii import (
    DEFAULT_ENTITIES,
    SUPPORTED_ENTITIES,
    Action,
    PiiDepthError,
    PiiFinding,
    PiiScanner,
    StreamRedactor,
    redact_json_strings,
)

PRESIDIO_ENTITIES = frozenset(
    {"EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "IBAN_CODE", "IP_ADDRESS", "US_SSN", "URL"}
)
SALT = b"tenant-a-salt-0123456789"

# Realistic prompt snippets, with and without PII, tricky negatives included.
CORPUS = [
    "Hi, please email me at jane.doe@example.com about the invoice.",
    "Contact support@sub.example.co.uk or sales@example.org for a quote.",
    "My card is 4111 1111 1111 1111, expiry 12/27.",
    "Charge 5500-0000-0000-0004 for the upgrade.",
    "The card number 4111 1111 1111 1112 was rejected (bad Luhn).",
    "Order id 1234-5678-9012-3456 shipped yesterday.",
    "Wire it to IBAN DE89 3704 0044 0532 0130 00 by Friday.",
    "IBAN GB82WEST12345698765432 is the account on file.",
    "This IBAN DE89 3704 0044 0532 0130 01 has a bad checksum.",
    "I want my deposit in DE89370400440532013000 2 days from today.",
    "My SSN is 536-22-8726 and my name is John.",
    "SSN 000-12-3456 is not a real one, nor is 666-12-3456.",
    "The placeholder 123-45-6789 and 078-05-1120 appear in examples.",
    "Social security: 536 22 8726.",
    "Mismatched 536-22.8726 delimiters.",
    "Call me at (212) 555-0134 tomorrow.",
    "My mobile is +44 20 7946 0958 and office +1-202-555-0143.",
    "Phone: 030 901820 in Berlin.",
    "Server at 192.168.1.10 and gateway 10.0.0.1/24 are down.",
    "IPv6 address 2001:db8::ff00:42:8329 responded.",
    "Not an IP: 999.300.1.1 nor 1.2.3.",
    "Upgrade from version 1.2.3 to 2.10.0 on 2024-01-02.",
    "The meeting is on 2023-11-05 at 14:30.",
    "Release v3.11.4 fixed the build; see commit 9fceb02.",
    "Visit https://www.example.com/path?q=1 for details.",
    "Docs live at docs.python.org and the script is main.py.",
    "Nothing sensitive here, just a question about Python decorators.",
    "Summarise this article about climate change in three bullet points.",
    "The total was $1,234.56 for 3 items (order #A-99812).",
    "Use the ratio 3.14159 and the constant 2.71828.",
    "Tracking number 1Z999AA10123456784 arrived.",
    "Numbers 123456789 and 987654321 are test data.",
    "He said: reach me via j.smith+news@mail.example.net please.",
    "Invalid email foo@bar and foo@.com should not match.",
    "Cards: 378282246310005 (amex) and 6011111111111117 (discover).",
    "My number is 212 555 0134 ext. 12, call after 5.",
    "ip=172.16.0.5, port=8080, user=admin",
    "Log line: 2024-05-01T12:00:00Z GET /api/v1/users/42 200 13ms",
    "Account 12345678, sort code 12-34-56, London.",
    "Email ALICE@EXAMPLE.COM or call 415-555-2671.",
    "The hash is 3f786850e387550fdab836ed7e6dc881de23001b.",
    "Route 66 and interstate 95 meet nowhere; zip 94105-1234.",
    "Write to <mailto:ops@example.io>,(bob@example.com) or x@y@example.com.",
    "Dates (2024-05-17), 2023-12-31; and 1999-01-01. Order 123456, ticket 004217.",
    "Fax: +49 30 901820-0 or 0049 30 901820; ref 2024-05-17T10:00.",
    "Host fe80::1%eth0 and ::ffff:192.0.2.128 and :: and a:b:c.",
    "Built in 1648, rebuilt 1702; extension 01640 rings the desk.",
]


class _BlankSpacy(SpacyNlpEngine):
    """Presidio's spaCy engine on a blank English pipeline: no model download."""

    def load(self) -> None:
        # Presidio annotates the attribute as None until load() fills it.
        self.nlp = {"en": spacy.blank("en")}  # type: ignore[assignment]


@pytest.fixture(scope="module")
def presidio() -> Iterator[AnalyzerEngine]:
    # tldextract's module-level extractor would try to fetch the public suffix list:
    # point it at the bundled snapshot for the reference engine's e-mail validation.
    saved = tldextract.tldextract.TLD_EXTRACTOR
    tldextract.tldextract.TLD_EXTRACTOR = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)
    registry = RecognizerRegistry()
    registry.load_predefined_recognizers(languages=["en"])
    yield AnalyzerEngine(registry=registry, nlp_engine=_BlankSpacy(), supported_languages=["en"])
    tldextract.tldextract.TLD_EXTRACTOR = saved


def _reference(engine: AnalyzerEngine, text: str) -> set[tuple[str, int, int]]:
    results = engine.analyze(text, language="en", entities=sorted(PRESIDIO_ENTITIES))
    return {(r.entity_type, r.start, r.end) for r in results}


def _fast(text: str) -> set[tuple[str, int, int]]:
    scanner = PiiScanner(PRESIDIO_ENTITIES, min_score=0.0)
    return {(f.entity_type, f.start, f.end) for f in scanner.scan(text)}


@pytest.mark.parametrize("text", CORPUS)
def test_findings_equal_presidio(presidio: AnalyzerEngine, text: str) -> None:
    assert _fast(text) == _reference(presidio, text)


def test_corpus_has_positives_and_negatives(presidio: AnalyzerEngine) -> None:
    found = [bool(_reference(presidio, t) - {("URL",)}) for t in CORPUS]
    assert 10 <= sum(found) < len(CORPUS)


def test_scores_equal_presidio_but_for_context_words(presidio: AnalyzerEngine) -> None:
    # On purpose: offline Presidio has no lemmas, so its context words never raise a score;
    # ours read the preceding words and apply Presidio's boost (+0.35, at least 0.4).
    scanner = PiiScanner(PRESIDIO_ENTITIES, min_score=0.0)
    boosted = 0
    for text in CORPUS:
        ref = {
            (r.entity_type, r.start, r.end): r.score
            for r in presidio.analyze(text, language="en", entities=sorted(PRESIDIO_ENTITIES))
        }
        for f in scanner.scan(text):
            expected = ref[(f.entity_type, f.start, f.end)]
            if f.score != expected:
                assert f.score == pytest.approx(min(max(expected + 0.35, 0.4), 1.0)), text
                boosted += 1
    assert boosted >= 3


def test_context_word_lifts_a_phone_number_over_the_default_threshold() -> None:
    scanner = PiiScanner()
    assert [f.entity_type for f in scanner.scan("Call me at (212) 555-0134.")] == ["PHONE_NUMBER"]
    # A bare number scores 0.4 as in Presidio: below the default 0.5.
    assert scanner.scan("See (212) 555-0134.") == []
    assert len(PiiScanner(min_score=0.4).scan("See (212) 555-0134.")) == 1


SECRETS = {
    "AWS_ACCESS_KEY": "AKIAIOSFODNN7EXAMPLE",
    "GITHUB_TOKEN": "ghp_" + "a1B2c3D4e5" * 3 + "f6G7h8",
    "SLACK_TOKEN": "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx",
    "OPENAI_API_KEY": "sk-proj-" + "Ab3dE" * 8,
    "ANTHROPIC_API_KEY": "sk-ant-api03-" + "Zx9_y" * 8,
    "JWT": (
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0."
        "dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"
    ),
}


@pytest.mark.parametrize(("entity", "secret"), sorted(SECRETS.items()))
def test_secrets_are_found_with_their_exact_span(entity: str, secret: str) -> None:
    text = f"use {secret} for the call"
    findings = PiiScanner().scan(text)
    assert [(f.entity_type, text[f.start : f.end]) for f in findings] == [(entity, secret)]


def test_bearer_token_keeps_the_scheme_and_jwt_wins_the_same_span() -> None:
    scanner = PiiScanner()
    out = scanner.redact(
        "Authorization: Bearer abcdefghijklmnop1234", {"BEARER_TOKEN": Action.REPLACE}
    )
    assert out.text == "Authorization: Bearer <BEARER_TOKEN>"
    jwt = SECRETS["JWT"]
    both = scanner.redact(f"Bearer {jwt}", {"BEARER_TOKEN": Action.REPLACE, "JWT": Action.REPLACE})
    assert both.text == "Bearer <JWT>"
    assert both.counts == {"JWT": 1}


@pytest.mark.parametrize(
    "text",
    [
        "sk-short",
        "the task-list-of-things-to-do-today-and-tomorrow",
        "ghp_tooshort",
        "AKIA123",
        "eyJhbGciOiJIUzI1NiJ9 alone is a header",
        "Bearer short",
    ],
)
def test_secret_lookalikes_are_not_found(text: str) -> None:
    assert PiiScanner().scan(text) == []


def test_redact_actions() -> None:
    scanner = PiiScanner()
    text = "Mail jane.doe@example.com, card 4111 1111 1111 1111, ip 10.0.0.1."
    out = scanner.redact(
        text,
        {"EMAIL_ADDRESS": Action.REPLACE, "CREDIT_CARD": Action.MASK, "IP_ADDRESS": Action.HASH},
        salt=SALT,
    )
    digest = hashlib.sha256(SALT + b"10.0.0.1").hexdigest()[:16]
    assert out.text == f"Mail <EMAIL_ADDRESS>, card {'*' * 19}, ip {digest}."
    assert out.counts == {"EMAIL_ADDRESS": 1, "CREDIT_CARD": 1, "IP_ADDRESS": 1}
    assert out.blocked == frozenset()


def test_types_without_an_action_are_left_alone_and_uncounted() -> None:
    out = PiiScanner().redact("a@example.com 10.0.0.1", {"IP_ADDRESS": Action.REPLACE})
    assert out.text == "a@example.com <IP_ADDRESS>"
    assert out.counts == {"IP_ADDRESS": 1}


def test_hash_is_per_tenant_and_needs_a_salt() -> None:
    scanner = PiiScanner()
    actions = {"EMAIL_ADDRESS": Action.HASH}
    a = scanner.redact("x a@example.com", actions, salt=SALT).text
    assert a == scanner.redact("x a@example.com", actions, salt=SALT).text
    assert a != scanner.redact("x a@example.com", actions, salt=b"tenant-b-salt-0123456789").text
    with pytest.raises(ValueError, match="salt"):
        scanner.redact("x a@example.com", actions)


def test_block_names_types_never_values() -> None:
    out = PiiScanner().redact(
        "SSN 536-22-8726, mail a@example.com",
        {"US_SSN": Action.BLOCK, "EMAIL_ADDRESS": Action.MASK},
    )
    assert out.blocked == frozenset({"US_SSN"})
    assert "536-22-8726" not in out.text
    assert out.text == "SSN <US_SSN>, mail *************"


def test_overlaps_resolve_like_presidio_anonymizer() -> None:
    # The URLs Presidio finds inside an e-mail are contained in it: the e-mail wins.
    scanner = PiiScanner(DEFAULT_ENTITIES | {"URL"})
    actions = {"EMAIL_ADDRESS": Action.REPLACE, "URL": Action.REPLACE}
    out = scanner.redact("mail j.smith@mail.example.net or see docs.python.org", actions)
    assert out.text == "mail <EMAIL_ADDRESS> or see <URL>"
    assert out.counts == {"EMAIL_ADDRESS": 1, "URL": 1}
    # An SSN-shaped number is also a phone number in Presidio; same span, higher score wins.
    both = scanner.redact(
        "ssn 536-22-8726", {"US_SSN": Action.REPLACE, "PHONE_NUMBER": Action.REPLACE}
    )
    assert both.text == "ssn <US_SSN>"


def test_unknown_entity_type_is_refused() -> None:
    with pytest.raises(ValueError, match="PERSON"):
        PiiScanner(frozenset({"PERSON"}))
    assert frozenset({"URL", "PHONE_NUMBER"}) <= SUPPORTED_ENTITIES


def test_redact_json_strings_copies_and_counts() -> None:
    body: dict[str, Any] = {
        "messages": [
            {"role": "user", "content": "mail a@example.com"},
            {"role": "tool", "content": [{"type": "text", "text": "ip 10.0.0.1"}]},
        ],
        "tools": [{"arguments": {"to": "b@example.org", "n": 3, "ok": True, "x": None}}],
    }
    actions = {"EMAIL_ADDRESS": Action.REPLACE, "IP_ADDRESS": Action.MASK}
    out = redact_json_strings(body, PiiScanner(), actions)
    assert out.value["messages"][0]["content"] == "mail <EMAIL_ADDRESS>"
    assert out.value["messages"][1]["content"][0]["text"] == "ip ********"
    assert out.value["tools"][0]["arguments"] == {
        "to": "<EMAIL_ADDRESS>",
        "n": 3,
        "ok": True,
        "x": None,
    }
    assert out.counts == {"EMAIL_ADDRESS": 2, "IP_ADDRESS": 1}
    assert body["messages"][0]["content"] == "mail a@example.com"  # the input is untouched


def test_redact_json_strings_bounded_depth_and_block() -> None:
    deep: Any = "a@example.com"
    for _ in range(10):
        deep = [deep]
    with pytest.raises(PiiDepthError):
        redact_json_strings(deep, PiiScanner(), {"EMAIL_ADDRESS": Action.MASK}, max_depth=5)
    out = redact_json_strings(deep, PiiScanner(), {"EMAIL_ADDRESS": Action.BLOCK})
    assert out.blocked == frozenset({"EMAIL_ADDRESS"})


STREAM_TEXT = (
    "Thanks! Reach jane.doe@example.com or card 4111 1111 1111 1111, "
    "IBAN DE89 3704 0044 0532 0130 00, ssn 536-22-8726, key AKIAIOSFODNN7EXAMPLE. "
    "Or call my mobile, it is +1-202-555-0143. Bye"
)
STREAM_ACTIONS = {
    e: Action.REPLACE
    for e in (
        "EMAIL_ADDRESS",
        "CREDIT_CARD",
        "IBAN_CODE",
        "US_SSN",
        "AWS_ACCESS_KEY",
        "PHONE_NUMBER",
    )
}


def _stream(chunks: list[str], window: int = 64) -> tuple[str, dict[str, int]]:
    redactor = StreamRedactor(PiiScanner(), STREAM_ACTIONS, window_chars=window)
    out = "".join(redactor.feed(c) for c in chunks) + redactor.finish()
    return out, dict(redactor.counts)


def test_stream_split_at_every_boundary_equals_whole_text_redaction() -> None:
    whole = PiiScanner().redact(STREAM_TEXT, STREAM_ACTIONS)
    assert whole.counts == dict.fromkeys(STREAM_ACTIONS, 1)
    for i in range(1, len(STREAM_TEXT)):
        for j in (i + 1, i + 7, i + 23):
            chunks = [STREAM_TEXT[:i], STREAM_TEXT[i:j], STREAM_TEXT[j:]]
            assert _stream(chunks) == (whole.text, whole.counts), (i, j)


def test_stream_char_by_char_and_small_window() -> None:
    whole = PiiScanner().redact(STREAM_TEXT, STREAM_ACTIONS)
    assert _stream(list(STREAM_TEXT)) == (whole.text, whole.counts)
    # A window as long as the longest entity (the 27-char IBAN) still catches everything.
    assert _stream(list(STREAM_TEXT), window=27) == (whole.text, whole.counts)


def test_stream_holds_back_only_the_window() -> None:
    redactor = StreamRedactor(PiiScanner(), STREAM_ACTIONS, window_chars=16)
    assert redactor.feed("x" * 10) == ""
    assert redactor.feed("y" * 10) == "xxxx"
    assert redactor.finish() == "x" * 6 + "y" * 10


def test_stream_never_emits_a_raw_entity_prefix() -> None:
    redactor = StreamRedactor(PiiScanner(), STREAM_ACTIONS, window_chars=32)
    emitted = ""
    for c in STREAM_TEXT:
        emitted += redactor.feed(c)
        assert "jane" not in emitted and "4111" not in emitted and "536-22" not in emitted


def test_stream_block_is_reported() -> None:
    redactor = StreamRedactor(PiiScanner(), {"US_SSN": Action.BLOCK}, window_chars=32)
    text = "".join(redactor.feed(c) for c in "my ssn is 536-22-8726 ok") + redactor.finish()
    assert redactor.blocked == frozenset({"US_SSN"})
    assert "536-22-8726" not in text


def test_stream_entity_longer_than_the_window_ends_and_redacts_what_is_held() -> None:
    # An e-mail whose first characters were emitted before its "@" arrived starts in the
    # emitted text: the redactor once looped forever on it (a hang of the data plane). Run in
    # a daemon thread so a regression fails instead of hanging the test run.
    local = "a" * 200
    text = f"hello {local}@example.com and then some more text, " * 2
    redactor = StreamRedactor(PiiScanner(), {"EMAIL_ADDRESS": Action.REPLACE}, window_chars=128)
    out: list[str] = []

    def run() -> None:
        out.extend(redactor.feed(text[i : i + 32]) for i in range(0, len(text), 32))
        out.append(redactor.finish())

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(timeout=10)
    assert not worker.is_alive(), "the stream redactor did not return"
    emitted = "".join(out)
    # Documented limit: what left before the entity could be recognised stays as it was; the
    # rest of it is redacted.
    assert "@example.com" not in emitted
    assert emitted.count("<EMAIL_ADDRESS> and then some more text, ") == 2
    assert redactor.counts == {"EMAIL_ADDRESS": 2}


def test_finding_is_a_frozen_value() -> None:
    f = PiiFinding("EMAIL_ADDRESS", 0, 3, 1.0)
    with pytest.raises(AttributeError):
        f.start = 1  # type: ignore[misc]


def test_skipped_iso_date_words_hold_no_phone_number() -> None:
    # gatez.pii skips phone windows that are only an ISO date, because phonenumbers finds no
    # number in them (checked exhaustively once); a sample guards a phonenumbers upgrade.
    rnd = random.Random(11)
    for _ in range(60):
        date = f"{rnd.randint(1900, 2099)}-{rnd.randint(0, 19):02d}-{rnd.randint(0, 39):02d}"
        for word in (date, f"({date})", f"{date},", f"{date}."):
            for region in ("US", "GB", "DE", "FR", "IL", "IN", "CA", "BR"):
                matcher = phonenumbers.PhoneNumberMatcher(
                    word, region, leniency=phonenumbers.Leniency.VALID
                )
                assert not list(matcher), (word, region)


@pytest.mark.parametrize("min_score", [0.3, 0.5, 0.8])
def test_threshold_shortcuts_equal_filtering_the_full_scan(min_score: float) -> None:
    # Over 0.4 the phone matcher runs only near context words: that must drop exactly the
    # numbers the threshold drops.
    full = PiiScanner(SUPPORTED_ENTITIES, min_score=0.0)
    fast = PiiScanner(SUPPORTED_ENTITIES, min_score=min_score)
    for text in CORPUS:
        assert fast.scan(text) == [f for f in full.scan(text) if f.score >= min_score], text
