"""PII detection and redaction: Presidio's recognizers, run the fast way.

Presidio's ``AnalyzerEngine`` costs about 6 ms per KB restricted to the default entities
here, 23 ms per KB with all its predefined recognizers (spaCy tokenisation, context
enhancement over NLP artefacts, the phone matcher over the whole text per region); the data
plane budget is 1 ms per KB. This module keeps Presidio's semantics: the predefined
recognizers' own ``PATTERNS`` and ``CONTEXT`` (read from the installed ``presidio_analyzer``
classes), their checksum validation (Luhn, IBAN mod 97) and invalidation rules (US SSN,
IP), the ``phonenumbers`` matcher the phone recognizer uses, Presidio's score rules and its
de-duplication. It compiles every regex once at import and runs it straight on the text,
skipping a pattern when a cheap check shows it cannot match (no ``@``, no digit…).
``tests/gatez/test_pii.py`` checks the findings against Presidio's own engine.

Secrets (cloud and SaaS API keys, JWTs, bearer tokens) are our own pattern recognizers in
the same shape; Presidio has none.

Differences from Presidio, on purpose:

- Context words: Presidio raises a result's score by 0.35 (at least to 0.4) when one of its
  recognizer's context words is among the five preceding non-stop-word lemmas; without a
  spaCy model there are no lemmas and no boost. Here the preceding words, lower-cased, stand
  in for lemmas (substring match, as Presidio's default ``substring`` mode), so the boost
  works with no model. It changes scores only, never spans.
- Phone numbers: ``phonenumbers.PhoneNumberMatcher`` runs per region over the whole text in
  Presidio (about 130 ms on 16 KB); here it runs, for the same eight regions, only on the
  words holding a run of four or more digits (plus a following extension such as "ext. 12"),
  skips words that are only an ISO date (phonenumbers finds no number in them: checked
  exhaustively), and caches its answer per word. The conformance tests check it finds the
  same numbers. (phonenumbers accepts some bare 4- and 5-digit German numbers, "1640",
  "01640"; none of three digits or fewer, checked exhaustively.)

NER (PERSON, LOCATION) is opt-in, per process: ``GATEZ_PII_NER_MODEL`` names an installed spaCy
package (``en_core_web_sm``) or the directory of a saved pipeline, and :func:`configure_ner`
loads it once at start (never downloading: the models Presidio defaults to are not installable
here) for every tenant's scanners. Only then are the two types offered, and a policy still
has to name them (they are never in :data:`DEFAULT_ENTITIES`). Presidio's semantics: the
whole pipeline runs on the text, as Presidio's ``SpacyNlpEngine`` runs it; every ``doc.ents``
span whose label Presidio's default NER configuration maps to the type counts (PERSON, PER →
PERSON; GPE, LOC, FAC, LOCATION → LOCATION), scored 0.85 (``NerModelConfiguration``'s default:
spaCy gives no score) with no context boost (``SpacyRecognizer`` has no context words).
Findings merge with the pattern findings through the same de-duplication and overlap rules (an
e-mail a model calls a person stays an e-mail: 1.0 beats 0.85). Texts over 100,000 characters go
through the pipeline in pieces cut at line breaks (spaCy refuses a text over a million).
``tests/gatez/test_pii_ner.py`` checks the findings against Presidio's own engine on the same
pipeline.

NER is opt-in because of its cost, which the data plane pays on the event loop. Measured
(``python -m bench.pii_ner``): a tiny pipeline (the blank English tokenizer and an entity
ruler, the tests' model) adds about 0.2 ms per KB — a lower bound, spaCy's tokenizer and
per-call overhead; spaCy's small CPU NER architecture (tok2vec and ner, the shape of
``en_core_web_sm``'s; untrained weights, same cost) adds about 8.5 ms per KB, and Presidio's
engine with ``en_core_web_sm`` is several ms per KB too (it also runs the tagger, parser and
lemmatizer; a pipeline saved with only what its NER needs costs less). A streamed answer is
rescanned every step (window and context, ~280 characters): about 3 ms of CPU per 32-character
step with the small statistical architecture, against 0.05 ms without NER.

The module imports ``presidio_analyzer`` (and with it spaCy) once, about 0.9 s at import.
"""

from __future__ import annotations

import functools
import hashlib
import re
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

import phonenumbers
import spacy
import tldextract
from presidio_analyzer.predefined_recognizers import (
    CreditCardRecognizer,
    EmailRecognizer,
    IbanRecognizer,
    IpRecognizer,
    PhoneRecognizer,
    UrlRecognizer,
    UsSsnRecognizer,
)
from spacy.language import Language

__all__ = [
    "DEFAULT_ENTITIES",
    "NER_ENTITIES",
    "NER_SETTING",
    "SUPPORTED_ENTITIES",
    "Action",
    "JsonRedaction",
    "NerModelError",
    "PiiDepthError",
    "PiiFinding",
    "PiiScanner",
    "RedactionResult",
    "StreamRedactor",
    "configure_ner",
    "ner_available",
    "redact_json_strings",
    "supported_entities",
]

# Presidio's score bounds (EntityRecognizer.MIN_SCORE / MAX_SCORE) and its context
# enhancer's defaults (LemmaContextAwareEnhancer).
_MIN_SCORE = 0.0
_MAX_SCORE = 1.0
_CONTEXT_FACTOR = 0.35
_MIN_SCORE_WITH_CONTEXT = 0.4
_CONTEXT_PREFIX_WORDS = 5

# The words spaCy's English model marks as stop words that commonly precede an entity;
# Presidio skips stop words when it collects the preceding context lemmas.
_STOP_WORDS = frozenset(
    [
        "a",
        "an",
        "the",
        "is",
        "are",
        "was",
        "were",
        "be",
        "been",
        "am",
        "my",
        "your",
        "his",
        "her",
        "its",
        "our",
        "their",
        "me",
        "you",
        "he",
        "she",
        "it",
        "we",
        "they",
        "to",
        "of",
        "in",
        "on",
        "at",
        "by",
        "for",
        "from",
        "with",
        "and",
        "or",
        "but",
        "as",
        "this",
        "that",
        "these",
        "those",
        "here",
        "there",
        "please",
        "do",
        "does",
        "did",
        "have",
        "has",
        "had",
        "not",
        "no",
        "yes",
        "so",
        "if",
        "then",
        "than",
    ]
)
_WORD = re.compile(r"\w+")
# How far back the context words are looked for (five words, generously).
_CONTEXT_LOOKBACK = 120

# Presidio compiles its patterns with the `regex` module; the flags share their values with
# `re`'s, so the recognizer's own flags carry over.
_FLAG_MASK = re.IGNORECASE | re.MULTILINE | re.DOTALL


@dataclass(frozen=True, slots=True)
class PiiFinding:
    """One detected entity: its type, its span in the scanned text and its score."""

    entity_type: str
    start: int
    end: int
    score: float


class Action(StrEnum):
    """What redaction does with an entity of a given type."""

    MASK = "mask"
    """Replace every character with ``*`` (the length is kept)."""
    REPLACE = "replace"
    """Replace with the type tag, e.g. ``<EMAIL_ADDRESS>``."""
    HASH = "hash"
    """Replace with a salted SHA-256 (hex, truncated): equal values stay equal per tenant."""
    BLOCK = "block"
    """The request must be refused; the result names the entity types, never the values."""


@dataclass(frozen=True, slots=True)
class RedactionResult:
    """Redacted text, how many entities of each type were redacted, and any blocking types.

    When ``blocked`` is not empty the caller must refuse the request; ``text`` still has the
    blocking entities replaced by their type tag, so it never carries their values.
    """

    text: str
    counts: Mapping[str, int]
    blocked: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class _Pattern:
    name: str
    regex: re.Pattern[str]
    score: float
    # Which capture group holds the entity (0: the whole match); bearer tokens skip "Bearer ".
    group: int = 0
    # A cheap search that must succeed for the pattern to match at all (None: always run).
    precheck: re.Pattern[str] | None = None


@dataclass(frozen=True, slots=True)
class _Recognizer:
    entity_type: str
    patterns: tuple[_Pattern, ...]
    context: tuple[str, ...]
    # Cheap test on the whole text: False means no pattern can match, skip the recognizer.
    precheck: Callable[[str], bool]
    validate: Callable[[str], bool | None] | None = None
    invalidate: Callable[[str], bool | None] | None = None
    # IBAN: Presidio tries the match's capture groups from the last to the first.
    group_fallback: bool = False
    # When set, a match never spans whitespace and always holds this character: the
    # patterns run only over the whitespace-free words that contain it.
    anchor: str | None = None


def _compile(
    patterns: Iterable[Any], flags: int, prechecks: Mapping[str, str] | None = None
) -> tuple[_Pattern, ...]:
    pre = prechecks or {}
    return tuple(
        _Pattern(
            p.name,
            re.compile(p.regex, flags & _FLAG_MASK),
            p.score,
            precheck=re.compile(pre[p.name]) if p.name in pre else None,
        )
        for p in patterns
    )


# Every IPv6-shaped pattern of IpRecognizer needs "::" or a hex digit before a colon that is
# followed by a hex digit or a colon; IPv4 needs digit-dot-digit.
_IPV6_SHAPE = r"::|[0-9A-Fa-f]:[0-9A-Fa-f:]"
_IP_PRECHECKS = {
    "IPv4_mapped": _IPV6_SHAPE,
    "IPv4_embedded": _IPV6_SHAPE,
    "IPv4": r"\d\.\d",
    "IPv6": _IPV6_SHAPE,
    "IPv6_unspecified": _IPV6_SHAPE,
}


_DIGIT = re.compile(r"\d")


def _has_digit(text: str) -> bool:
    # A compiled search, not a loop over characters: this precheck runs up to four times per
    # scan and was the largest single cost of a prompt's scan. `\d` is what the patterns use.
    return _DIGIT.search(text) is not None


def _always(text: str) -> bool:
    return True


# Offline public-suffix list: the snapshot bundled with tldextract, never a download.
_TLD = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)
# Build its suffix trie now (about 30 ms) rather than in the first request that has an "@".
_TLD("example.com")


def _email_valid(text: str) -> bool:
    # EmailRecognizer.validate_result, with the offline extractor.
    return _TLD(text).fqdn != ""


def _presidio_recognizers() -> dict[str, _Recognizer]:
    email = EmailRecognizer()
    card = CreditCardRecognizer()
    iban = IbanRecognizer()
    ip = IpRecognizer()
    ssn = UsSsnRecognizer()
    url = UrlRecognizer()
    recognizers = [
        _Recognizer(
            "EMAIL_ADDRESS",
            _compile(EmailRecognizer.PATTERNS, email.global_regex_flags or 0),
            tuple(email.context),
            lambda t: "@" in t,
            validate=_email_valid,
            anchor="@",
        ),
        _Recognizer(
            "CREDIT_CARD",
            _compile(CreditCardRecognizer.PATTERNS, card.global_regex_flags or 0),
            tuple(card.context),
            _has_digit,
            validate=card.validate_result,
        ),
        _Recognizer(
            "IBAN_CODE",
            _compile(IbanRecognizer.PATTERNS, iban.global_regex_flags or 0),
            tuple(iban.context),
            _has_digit,
            validate=iban.validate_result,
            group_fallback=True,
        ),
        _Recognizer(
            "IP_ADDRESS",
            _compile(IpRecognizer.PATTERNS, ip.global_regex_flags or 0, _IP_PRECHECKS),
            tuple(ip.context),
            lambda t: ":" in t or "." in t,
            invalidate=ip.invalidate_result,
        ),
        _Recognizer(
            "US_SSN",
            _compile(UsSsnRecognizer.PATTERNS, ssn.global_regex_flags or 0),
            tuple(ssn.context),
            _has_digit,
            invalidate=ssn.invalidate_result,
        ),
        _Recognizer(
            "URL",
            _compile(UrlRecognizer.PATTERNS, url.global_regex_flags or 0),
            tuple(url.context),
            lambda t: "." in t,
        ),
    ]
    return {r.entity_type: r for r in recognizers}


def _secret(entity: str, regex: str, score: float, prefixes: tuple[str, ...]) -> _Recognizer:
    flags = re.IGNORECASE if entity == "BEARER_TOKEN" else 0
    group = 1 if entity == "BEARER_TOKEN" else 0
    pattern = _Pattern(entity.lower(), re.compile(regex, flags), score, group)
    lowered = tuple(p.lower() for p in prefixes)
    if flags:
        precheck: Callable[[str], bool] = lambda t: any(p in t.lower() for p in lowered)  # noqa: E731
    else:
        precheck = lambda t: any(p in t for p in prefixes)  # noqa: E731
    return _Recognizer(entity, (pattern,), (), precheck)


_TOKEN_END = r"(?![A-Za-z0-9_-])"
_SECRET_RECOGNIZERS = {
    r.entity_type: r
    for r in (
        _secret("AWS_ACCESS_KEY", r"\b(?:AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16}\b", 0.9, ("A",)),
        _secret(
            "GITHUB_TOKEN",
            r"\b(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255})" + _TOKEN_END,
            0.95,
            ("gh", "github_pat_"),
        ),
        _secret("SLACK_TOKEN", r"\bxox[abposr]-[A-Za-z0-9-]{10,250}" + _TOKEN_END, 0.9, ("xox",)),
        _secret(
            "OPENAI_API_KEY",
            r"(?<![A-Za-z0-9_-])sk-(?!ant-)(?:proj-|svcacct-|admin-)?[A-Za-z0-9_-]{20,}"
            + _TOKEN_END,
            0.85,
            ("sk-",),
        ),
        _secret(
            "ANTHROPIC_API_KEY",
            r"(?<![A-Za-z0-9_-])sk-ant-[A-Za-z0-9_-]{20,}" + _TOKEN_END,
            0.95,
            ("sk-ant-",),
        ),
        _secret(
            "JWT",
            r"(?<![A-Za-z0-9_-])eyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*",
            0.95,
            ("eyJ",),
        ),
        # Only the token is the entity; "Bearer " stays readable.
        _secret("BEARER_TOKEN", r"\bBearer\s+([A-Za-z0-9._~+/-]{16,}=*)", 0.8, ("bearer",)),
    )
}

_PATTERN_RECOGNIZERS = {**_presidio_recognizers(), **_SECRET_RECOGNIZERS}
_PHONE = PhoneRecognizer()
_PHONE_REGIONS: tuple[str, ...] = tuple(_PHONE.supported_regions)
# PhoneRecognizer's default leniency, 1, is phonenumbers' VALID.
_PHONE_LENIENCY = phonenumbers.Leniency.VALID
# A run that could hold a phone number: digits with the separators phonenumbers accepts.
_PHONE_CANDIDATE = re.compile(r"[+(]?\d(?:[\d\s().\-/]{0,3}\d){3,}")
# What may follow a number as its extension ("ext. 12", "x 12", "#12"; phonenumbers'
# extension markers): the window then takes the next two words too.
_PHONE_EXTENSION = re.compile(
    r"\s*[,;]?\s*(?:ext|extn|extension|x|#|~|int|anexo|доб)\S*(?:\s+\S+)?", re.IGNORECASE
)

_PHONE_CONTEXT_WORDS: tuple[str, ...] = tuple(_PHONE.context)

# A word that is only an ISO date: phonenumbers finds no number in any of these (checked
# exhaustively for years 1900-2099, months 00-19, days 00-39, in the eight regions, bare,
# in parentheses and with a trailing ",", "." or ";"), so their windows are skipped.
_ISO_DATE_WORD = re.compile(r"\((?:19|20)\d\d-[01]\d-[0-3]\d\)|(?:19|20)\d\d-[01]\d-[0-3]\d[,.;]?")

SUPPORTED_ENTITIES: frozenset[str] = frozenset(_PATTERN_RECOGNIZERS) | {"PHONE_NUMBER"}
"""Every entity type the pattern recognizers find, with no model (see also
:data:`NER_ENTITIES`)."""

DEFAULT_ENTITIES: frozenset[str] = SUPPORTED_ENTITIES - {"URL"}
"""The default set: all but URL, which Presidio also finds in file names (``main.py``: .py is
Paraguay's TLD) and in every e-mail domain — opt in when wanted."""

NER_ENTITIES: frozenset[str] = frozenset({"PERSON", "LOCATION"})
"""The types a spaCy NER model finds, offered only once :func:`configure_ner` has one; never
in :data:`DEFAULT_ENTITIES` (a scanner or policy names them)."""

NER_SETTING: Final = "GATEZ_PII_NER_MODEL"
"""The setting naming the NER model (``Settings.pii_ner_model``)."""

# Presidio's spaCy NER configuration (presidio_analyzer/conf/default.yaml,
# model_to_presidio_entity_mapping) for the types offered here; its other labels (ORG, DATE,
# NORP…) are left out. spaCy gives entities no score: NerModelConfiguration.default_score.
_NER_LABELS: Final[Mapping[str, str]] = MappingProxyType(
    {
        "PER": "PERSON",
        "PERSON": "PERSON",
        "LOC": "LOCATION",
        "GPE": "LOCATION",
        "FAC": "LOCATION",
        "LOCATION": "LOCATION",
    }
)
_NER_SCORE: Final = 0.85
# Long texts go through the pipeline in pieces: spaCy refuses texts over nlp.max_length, and
# its statistical NER needs memory in proportion to the text.
_NER_PIECE_CHARS: Final = 100_000


class NerModelError(ValueError):
    """The NER model the setting names cannot be found or loaded (the process must not start;
    a ValueError, as a bad value of any other setting is)."""


class _NerPipeline:
    """One spaCy pipeline, loaded at most once per process and shared by every scanner."""

    __slots__ = ("_lock", "_nlp", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self._nlp: Language | None = None
        self._lock = threading.Lock()

    def check(self) -> None:
        """Raise NerModelError unless the name is an installed spaCy package or a saved
        pipeline's directory (without loading it)."""
        path = Path(self.name)
        if spacy.util.is_package(self.name) or (path / "config.cfg").is_file():
            return
        raise NerModelError(
            f"{NER_SETTING}={self.name!r} is neither an installed spaCy package nor the directory "
            "of a saved spaCy pipeline (no config.cfg there); nothing is downloaded"
        )

    def load(self) -> Language:
        """The pipeline, loaded on first use (about a second for a statistical model)."""
        nlp = self._nlp
        if nlp is not None:
            return nlp
        with self._lock:
            if self._nlp is None:
                self.check()
                try:
                    loaded = spacy.load(self.name)
                except Exception as error:  # spaCy raises OSError, ValueError, registry errors…
                    raise NerModelError(
                        f"{NER_SETTING}={self.name!r} did not load: {error}"
                    ) from error
                labels = {label for names in loaded.pipe_labels.values() for label in names}
                if not labels & _NER_LABELS.keys():
                    raise NerModelError(
                        f"{NER_SETTING}={self.name!r} has no component labelling persons or "
                        f"locations (its labels: {', '.join(sorted(labels)) or 'none'}; "
                        f"wanted one of {', '.join(sorted(_NER_LABELS))})"
                    )
                self._nlp = loaded
            return self._nlp

    def findings(self, text: str, wanted: frozenset[str]) -> list[PiiFinding]:
        """The entities of ``wanted`` types the pipeline finds, as Presidio's SpacyRecognizer
        reports them: every ``doc.ents`` span whose label maps to the type, scored 0.85."""
        nlp = self.load()
        out: list[PiiFinding] = []
        for offset, piece in _pieces(text, min(nlp.max_length, _NER_PIECE_CHARS)):
            for ent in nlp(piece).ents:
                entity_type = _NER_LABELS.get(ent.label_)
                if entity_type is not None and entity_type in wanted:
                    out.append(
                        PiiFinding(
                            entity_type, offset + ent.start_char, offset + ent.end_char, _NER_SCORE
                        )
                    )
        return out


def _pieces(text: str, limit: int) -> Iterator[tuple[int, str]]:
    # Cut at the last line break before the limit, else the last whitespace (names rarely
    # span either), else at the limit.
    start = 0
    while len(text) - start > limit:
        end = start + limit
        cut = text.rfind("\n", start + 1, end)
        if cut == -1:
            cut = max(text.rfind(" ", start + 1, end), text.rfind("\t", start + 1, end))
        if cut == -1:
            cut = end
        yield start, text[start:cut]
        start = cut
    yield start, text[start:]


@dataclass(slots=True)
class _NerRegistry:
    # The process's NER model: set once at start from the settings, read when a scanner is
    # built (policy compile), so the control service and the data planes agree on a policy.
    pipeline: _NerPipeline | None = None


_NER = _NerRegistry()


def configure_ner(model: str, *, load: bool = True) -> None:
    """Set this process's NER model from ``GATEZ_PII_NER_MODEL`` (``Settings.pii_ner_model``).

    ``model`` is an installed spaCy package name (``en_core_web_sm``) or the directory of a
    pipeline saved with ``nlp.to_disk``; ``""`` turns NER off. It is never downloaded. With
    ``load`` the pipeline is loaded now (a data plane, at start: the first request must not pay
    for it); without, only found (the control service, which validates policies but does not
    scan: the pipeline then loads on first use). Raises :class:`NerModelError` naming the
    setting when the model is not there or does not load; the previous model then stays.
    Call it before the first policy is compiled: scanners take the model when they are built.
    """
    if not model:
        _NER.pipeline = None
        return
    pipeline = _NerPipeline(model)
    if load:
        pipeline.load()
    else:
        pipeline.check()
    _NER.pipeline = pipeline


def ner_available() -> bool:
    """Whether PERSON and LOCATION can be scanned for (:func:`configure_ner` set a model)."""
    return _NER.pipeline is not None


def supported_entities() -> frozenset[str]:
    """The entity types a scanner can be built for in this process."""
    return SUPPORTED_ENTITIES | NER_ENTITIES if ner_available() else SUPPORTED_ENTITIES


class PiiDepthError(ValueError):
    """A JSON value nests deeper than the redaction walk allows (it is not forwarded)."""


def _preceding_words(text: str, start: int) -> list[str]:
    # Presidio's _add_n_words: up to prefix+1 keywords walking back from the entity's token.
    words: list[str] = []
    lo = max(0, start - _CONTEXT_LOOKBACK)
    for word in reversed(_WORD.findall(text, lo, start)):
        lower = word.lower()
        if lower in _STOP_WORDS:
            continue
        words.append(lower)
        if len(words) > _CONTEXT_PREFIX_WORDS:
            break
    return words


def _context_boost(text: str, start: int, score: float, context: tuple[str, ...]) -> float:
    if not context:
        return score
    words = _preceding_words(text, start)
    if any(c in w for c in context for w in words):
        return min(max(score + _CONTEXT_FACTOR, _MIN_SCORE_WITH_CONTEXT), _MAX_SCORE)
    return score


def _remove_duplicates(findings: list[PiiFinding]) -> list[PiiFinding]:
    # EntityRecognizer.remove_duplicates: per type, drop a result contained in another of
    # the same type with an equal or higher score.
    ordered = sorted(
        set(findings), key=lambda f: (f.entity_type, f.start, f.start - f.end, -f.score)
    )
    kept: list[PiiFinding] = []
    active: list[PiiFinding] = []
    current = ""
    for f in ordered:
        if f.entity_type != current:
            current, active = f.entity_type, []
        if f.score == 0:
            continue
        active = [a for a in active if a.end >= f.start]
        if any(f.start >= a.start and f.end <= a.end and f.score <= a.score for a in active):
            continue
        kept.append(f)
        active.append(f)
    return kept


def _resolve_overlaps(findings: list[PiiFinding]) -> list[PiiFinding]:
    """Presidio anonymizer's conflict handling, so the spans to replace never overlap.

    Same-type intersections merge; a result contained in another is dropped (same span: the
    lower score goes); partial overlaps are trimmed, the higher score keeping the shared part.
    """
    by_type: dict[str, list[PiiFinding]] = {}
    for f in sorted(findings, key=lambda f: (f.start, f.end)):
        group = by_type.setdefault(f.entity_type, [])
        if group and f.start < group[-1].end:
            last = group[-1]
            group[-1] = PiiFinding(
                last.entity_type, last.start, max(last.end, f.end), max(last.score, f.score)
            )
        else:
            group.append(f)
    merged = [f for group in by_type.values() for f in group]
    unique: list[PiiFinding] = []
    for f in merged:
        dropped = False
        for o in merged:
            if o is f:
                continue
            if o.start == f.start and o.end == f.end:
                # Equal spans: keep the higher score; on a tie keep the first in order.
                if f.score < o.score or (f.score == o.score and merged.index(o) < merged.index(f)):
                    dropped = True
                    break
            elif o.start <= f.start and f.end <= o.end:
                dropped = True
                break
        if not dropped:
            unique.append(f)
    spans = [_Span(f.start, f.end, f) for f in sorted(unique, key=lambda f: (f.start, f.end))]
    i = 0
    while i < len(spans) - 1:
        cur, nxt = spans[i], spans[i + 1]
        if cur.end <= nxt.start:
            i += 1
            continue
        if cur.finding.score >= nxt.finding.score:
            nxt.start = cur.end
        else:
            cur.end = nxt.start
        spans.sort(key=lambda s: (s.start, s.end))
    return [
        PiiFinding(s.finding.entity_type, s.start, s.end, s.finding.score)
        for s in spans
        if s.start < s.end
    ]


@dataclass(slots=True)
class _Span:
    # A finding whose bounds the overlap trimming moves.
    start: int
    end: int
    finding: PiiFinding


class PiiScanner:
    """Finds PII and secrets in text with Presidio's pattern recognizers, compiled once, and
    persons and locations with the process's spaCy NER model when it has one.

    ``entities`` limits the types scanned (default :data:`DEFAULT_ENTITIES`); findings
    scoring below ``min_score`` are dropped (Presidio's default threshold is 0; 0.5 leaves
    out its "weak" patterns, e.g. a bare 9-digit number as SSN at 0.05, and a phone number
    with no context word such as "phone" or "call" before it, at 0.4). A scanner for any of
    :data:`NER_ENTITIES` takes the model :func:`configure_ner` set, and is refused without one.
    """

    __slots__ = ("_entities", "_min_score", "_ner", "_recognizers")

    def __init__(self, entities: frozenset[str] | None = None, min_score: float = 0.5) -> None:
        """Build a scanner for ``entities`` (all of :data:`DEFAULT_ENTITIES` by default)."""
        chosen = DEFAULT_ENTITIES if entities is None else entities
        unknown = chosen - SUPPORTED_ENTITIES - NER_ENTITIES
        if unknown:
            raise ValueError(f"unknown PII entity types: {sorted(unknown)}")
        self._ner: _NerPipeline | None = None
        if chosen & NER_ENTITIES:
            self._ner = _NER.pipeline
            if self._ner is None:
                raise ValueError(
                    f"{', '.join(sorted(chosen & NER_ENTITIES))}: a spaCy NER model is needed, "
                    f"and {NER_SETTING} names none"
                )
        self._entities = frozenset(chosen)
        self._min_score = min_score
        self._recognizers = tuple(
            _PATTERN_RECOGNIZERS[e] for e in sorted(chosen) if e in _PATTERN_RECOGNIZERS
        )

    @property
    def entities(self) -> frozenset[str]:
        """The entity types this scanner looks for."""
        return self._entities

    def scan(self, text: str, entities: frozenset[str] | None = None) -> list[PiiFinding]:
        """Return the findings in ``text``, ordered by start, as Presidio's analyzer would.

        Findings of different types may overlap (an e-mail and the URL inside it), as in
        Presidio; :meth:`redact` resolves them. ``entities`` narrows this call's types.
        """
        wanted = self._entities if entities is None else self._entities & entities
        raw: list[PiiFinding] = []
        for rec in self._recognizers:
            if rec.entity_type in wanted and rec.precheck(text):
                raw.extend(self._run(rec, text))
        if "PHONE_NUMBER" in wanted and _has_digit(text):
            # A phone number scores 0.4, or 0.75 after a context word: over a threshold
            # above 0.4 only numbers near a context word can be reported.
            raw.extend(_phones(text, needs_context=self._min_score > _PHONE.SCORE))
        ner_wanted = wanted & NER_ENTITIES
        # Every NER finding scores 0.85: over a higher threshold none could be kept.
        if self._ner is not None and ner_wanted and self._min_score <= _NER_SCORE:
            raw.extend(self._ner.findings(text, ner_wanted))
        found = _remove_duplicates([f for f in raw if f.score >= self._min_score])
        found.sort(key=lambda f: (f.start, f.end, f.entity_type))
        return found

    @staticmethod
    def _run(rec: _Recognizer, text: str) -> list[PiiFinding]:
        out: list[PiiFinding] = []
        for pattern in rec.patterns:
            if pattern.precheck is not None and pattern.precheck.search(text) is None:
                continue
            for match in _matches(pattern.regex, text, rec.anchor):
                if rec.group_fallback:
                    finding = _iban_fallback(rec, pattern, match, text)
                    if finding is not None:
                        out.append(finding)
                    continue
                start, end = match.span(pattern.group)
                if start == end:
                    continue
                value = text[start:end]
                score = pattern.score
                if rec.validate is not None:
                    valid = rec.validate(value)
                    if valid is not None:
                        score = _MAX_SCORE if valid else _MIN_SCORE
                if rec.invalidate is not None and rec.invalidate(value):
                    score = _MIN_SCORE
                if score > _MIN_SCORE:
                    score = _context_boost(text, start, score, rec.context)
                    out.append(PiiFinding(rec.entity_type, start, end, score))
        return out

    def redact(
        self, text: str, actions: Mapping[str, Action], *, salt: bytes = b"", hash_chars: int = 16
    ) -> RedactionResult:
        """Apply ``actions`` (entity type -> action) to ``text``.

        Types without an action are neither redacted nor counted. ``salt`` (the tenant's,
        at least 16 bytes, as Presidio's hash operator demands) is required when an action
        is :attr:`Action.HASH`.
        """
        if not text:
            return RedactionResult(text, {})
        wanted = frozenset(actions) & self._entities
        if not wanted:
            return RedactionResult(text, {})
        if Action.HASH in actions.values() and len(salt) < 16:
            raise ValueError("Action.HASH needs a per-tenant salt of at least 16 bytes")
        return _apply(text, _resolve_overlaps(self.scan(text, wanted)), actions, salt, hash_chars)


_NON_SPACE = re.compile(r"\S+")


def _matches(regex: re.Pattern[str], text: str, anchor: str | None) -> Iterator[re.Match[str]]:
    if anchor is None:
        yield from regex.finditer(text)
        return
    # Only the words holding the anchor. With pos/endpos the regex still sees the real
    # character before pos for \b and look-behinds; endpos falls on whitespace or the end.
    pos = text.find(anchor)
    while pos != -1:
        lo = pos
        while lo > 0 and not text[lo - 1].isspace():
            lo -= 1
        word = _NON_SPACE.match(text, lo)
        hi = word.end() if word is not None else pos + 1
        yield from regex.finditer(text, lo, hi)
        pos = text.find(anchor, hi)


def _iban_fallback(
    rec: _Recognizer, pattern: _Pattern, match: re.Match[str], text: str
) -> PiiFinding | None:
    # IbanRecognizer.__analyze_patterns: groups 3, 2, 1 in turn; the first that validates.
    start = match.start()
    for group in range(len(match.groups()), 0, -1):
        end = match.end(group) if match.end(group) > 0 else match.end()
        value = text[start:end]
        if not value:
            continue
        score = pattern.score
        valid = rec.validate(value) if rec.validate is not None else None
        if valid is not None:
            score = _MAX_SCORE if valid else _MIN_SCORE
        if score > _MIN_SCORE:
            return PiiFinding(
                rec.entity_type, start, end, _context_boost(text, start, score, rec.context)
            )
    return None


def _has_context(text: str, lo: int, hi: int, context: tuple[str, ...]) -> bool:
    words = _preceding_words(text, lo) + [w.lower() for w in _WORD.findall(text, lo, hi)]
    return any(c in w for c in context for w in words)


def _phones(text: str, *, needs_context: bool) -> list[PiiFinding]:
    context = _PHONE_CONTEXT_WORDS
    # PhoneRecognizer.analyze, on windows around the digit runs that could be a number.
    windows: list[list[int]] = []
    n = len(text)
    for m in _PHONE_CANDIDATE.finditer(text):
        lo, hi = m.start(), m.end()
        # Widen to whitespace so the window never cuts a word: the matcher rejects a number
        # glued to a letter, and that must still happen here.
        while lo > 0 and not text[lo - 1].isspace():
            lo -= 1
        while hi < n and not text[hi].isspace():
            hi += 1
        if _ISO_DATE_WORD.fullmatch(text, lo, hi):
            continue
        # A match starts at lo or later; its context words are among the words before lo
        # that _preceding_words collects, or inside the window. None there: it scores 0.4.
        if needs_context and not _has_context(text, lo, hi, context):
            continue
        ext = _PHONE_EXTENSION.match(text, hi)
        if ext is not None:
            hi = ext.end()
        if windows and lo <= windows[-1][1]:
            windows[-1][1] = max(hi, windows[-1][1])
        else:
            windows.append([lo, hi])
    out: list[PiiFinding] = []
    for lo, hi in windows:
        for start, end in _phone_spans(text[lo:hi]):
            score = _context_boost(text, lo + start, _PHONE.SCORE, context)
            out.append(PiiFinding("PHONE_NUMBER", lo + start, lo + end, score))
    return out


@functools.lru_cache(maxsize=4096)
def _phone_spans(chunk: str) -> tuple[tuple[int, int], ...]:
    # Cached: the stream redactor rescans its held text on every delta, and prompts repeat
    # their numbers. Keyed by the window's text, so the result is the same either way.
    spans: set[tuple[int, int]] = set()
    for region in _PHONE_REGIONS:
        for match in phonenumbers.PhoneNumberMatcher(chunk, region, leniency=_PHONE_LENIENCY):
            spans.add((match.start, match.end))
    return tuple(sorted(spans))


def _apply(
    text: str,
    findings: list[PiiFinding],
    actions: Mapping[str, Action],
    salt: bytes,
    hash_chars: int,
) -> RedactionResult:
    parts: list[str] = []
    counts: Counter[str] = Counter()
    blocked: set[str] = set()
    pos = 0
    for f in findings:
        action = actions[f.entity_type]
        value = text[f.start : f.end]
        parts.append(text[pos : f.start])
        if action is Action.MASK:
            parts.append("*" * len(value))
        elif action is Action.HASH:
            parts.append(hashlib.sha256(salt + value.encode()).hexdigest()[:hash_chars])
        else:
            if action is Action.BLOCK:
                blocked.add(f.entity_type)
            parts.append(f"<{f.entity_type}>")
        counts[f.entity_type] += 1
        pos = f.end
    parts.append(text[pos:])
    return RedactionResult("".join(parts), dict(counts), frozenset(blocked))


@dataclass(frozen=True, slots=True)
class JsonRedaction:
    """A redacted copy of a JSON value, with per-type counts and any blocking types."""

    value: Any
    counts: Mapping[str, int]
    blocked: frozenset[str] = frozenset()


def redact_json_strings(
    value: Any,
    scanner: PiiScanner,
    actions: Mapping[str, Action],
    *,
    salt: bytes = b"",
    max_depth: int = 64,
) -> JsonRedaction:
    """Redact every string in a parsed JSON value (messages, tool arguments and results).

    Returns a copy; the input is not modified. Object keys are left as they are (they are
    schema, not content). A value nested deeper than ``max_depth`` raises
    :class:`PiiDepthError` rather than passing through unscanned.
    """
    counts: Counter[str] = Counter()
    blocked: set[str] = set()

    def walk(v: Any, depth: int) -> Any:
        if depth > max_depth:
            raise PiiDepthError(f"JSON nested deeper than {max_depth}")
        if isinstance(v, str):
            result = scanner.redact(v, actions, salt=salt)
            counts.update(result.counts)
            blocked.update(result.blocked)
            return result.text
        if isinstance(v, dict):
            return {k: walk(x, depth + 1) for k, x in v.items()}
        if isinstance(v, list):
            return [walk(x, depth + 1) for x in v]
        return v

    redacted = walk(value, 0)
    return JsonRedaction(redacted, dict(counts), frozenset(blocked))


@dataclass(slots=True)
class StreamRedactor:
    """Redacts streamed text deltas, holding back a bounded window of the newest text.

    :meth:`feed` returns the text that is safe to emit now; :meth:`finish` the rest.
    Guarantee: an entity of at most ``window_chars`` characters is redacted however the
    stream splits it, because no character is released while it is within ``window_chars``
    of the newest text, nor while it belongs to an entity found in the held text. An entity
    longer than the window (a long JWT, say) may be emitted in part before it is complete,
    and is then not guaranteed to be caught. ``context_chars`` of already emitted text are
    rescanned for the word boundaries and context words before the held text (by default as
    far back as context scoring looks, so scores equal a whole-text scan's).

    With NER types the same rule holds: a name is released only once ``window_chars`` of
    newer text follow its first character, so a name no longer than the window is whole in
    the text scanned, with ``context_chars`` before it and the rest of the window after; a
    name cut by the end of the held text ("Ada Love") may be found or not, but it lies within
    the window and nothing of it is released on that step. A statistical model's answer
    depends on context, so one further away than that may change what it finds there (a rule
    based pipeline's does not: the tests check its stream output equals the whole text's).

    Output is delayed by up to ``window_chars`` characters; ``blocked`` reports blocking
    types as soon as they are seen (what was emitted before cannot be recalled: the caller
    ends the stream).
    """

    scanner: PiiScanner
    actions: Mapping[str, Action]
    window_chars: int = 128
    salt: bytes = b""
    context_chars: int = _CONTEXT_LOOKBACK
    _held: str = ""
    _emitted_tail: str = ""
    _counts: Counter[str] = field(default_factory=Counter)
    _blocked: set[str] = field(default_factory=set)

    @property
    def counts(self) -> Mapping[str, int]:
        """Entities redacted so far, per type."""
        return dict(self._counts)

    @property
    def blocked(self) -> frozenset[str]:
        """Entity types with :attr:`Action.BLOCK` seen so far."""
        return frozenset(self._blocked)

    def feed(self, delta: str) -> str:
        """Add a delta; return the redacted text that can be emitted now (maybe empty)."""
        self._held += delta
        cut = len(self._held) - self.window_chars
        if cut <= 0:
            return ""
        return self._release(cut)

    def finish(self) -> str:
        """Return everything still held, redacted: the stream has ended."""
        return self._release(len(self._held))

    def _release(self, cut: int) -> str:
        ctx = self._emitted_tail
        text = ctx + self._held
        wanted = frozenset(self.actions) & self.scanner.entities
        findings = _resolve_overlaps(self.scanner.scan(text, wanted)) if wanted else []
        offset = len(ctx)
        cut += offset
        # Never cut through an entity: hold back from its start (cuts only move left). An
        # entity that began in text already emitted (one longer than the window) holds the cut
        # at the offset: nothing is released until the cut passes its end.
        moved = True
        while moved:
            moved = False
            for f in findings:
                start = max(f.start, offset)
                if start < cut < f.end:
                    cut, moved = start, True
        if cut <= offset:
            return ""
        emit = [
            PiiFinding(f.entity_type, max(f.start, offset), f.end, f.score)
            for f in findings
            if f.end <= cut and f.end > offset
        ]
        raw = text[offset:cut]
        shifted = [
            PiiFinding(f.entity_type, f.start - offset, f.end - offset, f.score) for f in emit
        ]
        if Action.HASH in self.actions.values() and len(self.salt) < 16:
            raise ValueError("Action.HASH needs a per-tenant salt of at least 16 bytes")
        result = _apply(raw, shifted, self.actions, self.salt, 16)
        self._counts.update(result.counts)
        self._blocked.update(result.blocked)
        self._held = text[cut:]
        self._emitted_tail = text[max(0, cut - self.context_chars) : cut]
        return result.text
