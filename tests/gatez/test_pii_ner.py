"""gatez.pii's opt-in NER (GATEZ_PII_NER_MODEL): PERSON and LOCATION from a real spaCy pipeline
(a tiny saved one: no download), mapped as Presidio's SpacyRecognizer maps them, merged with
the pattern findings, redacted with every action, in streams split anywhere; and a model that
is not there or does not load refused at configure time."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import spacy
from presidio_analyzer import AnalyzerEngine
from presidio_analyzer.nlp_engine import NerModelConfiguration, NlpEngineProvider

from gatez.pii import (
    _NER_LABELS,
    _NER_SCORE,
    DEFAULT_ENTITIES,
    NER_ENTITIES,
    SUPPORTED_ENTITIES,
    Action,
    NerModelError,
    PiiScanner,
    StreamRedactor,
    _pieces,
    configure_ner,
    ner_available,
    supported_entities,
)
from gatez.settings import Settings
from tests.support.ner import EMAIL_AS_PERSON, NAMES, ner_configured, save_tiny_ner_pipeline

SALT = b"tenant-a-salt-0123456789"
TEXT = (
    "Ada Lovelace wrote from New York to Linus Torvalds, who was at Lake Geneva, and sent a "
    "postcard of the Golden Gate Bridge; Acme Corp paid for the stamps."
)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_ner_pipeline(tmp_path_factory.mktemp("ner"))


@pytest.fixture
def ner(tiny_model: Path) -> Iterator[Path]:
    with ner_configured(tiny_model):
        yield tiny_model


def found(scanner: PiiScanner, text: str) -> list[tuple[str, str, float]]:
    return [(f.entity_type, text[f.start : f.end], f.score) for f in scanner.scan(text)]


# --- what is found --------------------------------------------------------------------------


def test_labels_map_to_person_and_location_at_presidios_score(ner: Path) -> None:
    assert found(PiiScanner(NER_ENTITIES), TEXT) == [
        ("PERSON", "Ada Lovelace", 0.85),
        ("LOCATION", "New York", 0.85),
        ("PERSON", "Linus Torvalds", 0.85),  # PER
        ("LOCATION", "Lake Geneva", 0.85),  # LOC
        ("LOCATION", "Golden Gate Bridge", 0.85),  # FAC
        # Acme Corp is an ORG: Presidio ignores it by default, Gatez does not offer it.
    ]


def test_label_mapping_is_presidios_default_configuration() -> None:
    conf = NlpEngineProvider().nlp_configuration["ner_model_configuration"]
    ignored = set(conf["labels_to_ignore"])
    expected = {
        label: entity
        for label, entity in conf["model_to_presidio_entity_mapping"].items()
        if entity in NER_ENTITIES and label not in ignored
    }
    assert dict(_NER_LABELS) == expected
    assert NerModelConfiguration().default_score == _NER_SCORE


@pytest.fixture(scope="module")
def presidio_with_model(tiny_model: Path) -> AnalyzerEngine:
    # Presidio's own engine and SpacyRecognizer on the same saved pipeline (a path: Presidio
    # finds it there and downloads nothing).
    conf = dict(NlpEngineProvider().nlp_configuration)
    conf["models"] = [{"lang_code": "en", "model_name": str(tiny_model)}]
    engine = NlpEngineProvider(nlp_configuration=conf).create_engine()
    return AnalyzerEngine(nlp_engine=engine, supported_languages=["en"])


@pytest.mark.parametrize(
    "text",
    [
        TEXT,
        "Grace Hopper and Alan Turing never met in Paris or Zurich.",
        "grace hopper, in lower case, is not in this model's patterns; Zurich is.",
        f"Mail {EMAIL_AS_PERSON} or visit New York.",
        "No names here at all.",
    ],
)
def test_findings_equal_presidios_spacy_recognizer(
    ner: Path, presidio_with_model: AnalyzerEngine, text: str
) -> None:
    reference = presidio_with_model.analyze(text, language="en", entities=sorted(NER_ENTITIES))
    expected = sorted((r.entity_type, r.start, r.end, r.score) for r in reference)
    scanner = PiiScanner(NER_ENTITIES, min_score=0.0)
    assert sorted((f.entity_type, f.start, f.end, f.score) for f in scanner.scan(text)) == expected


def test_ner_types_are_never_in_the_default_set(ner: Path) -> None:
    assert not DEFAULT_ENTITIES & NER_ENTITIES
    assert PiiScanner().scan("Ada Lovelace lives in Paris.") == []
    assert supported_entities() == SUPPORTED_ENTITIES | NER_ENTITIES


def test_a_scanner_looks_only_for_its_types(ner: Path) -> None:
    assert [t for t, _, _ in found(PiiScanner(frozenset({"LOCATION"})), TEXT)] == ["LOCATION"] * 3
    scanner = PiiScanner(NER_ENTITIES)
    narrowed = scanner.scan(TEXT, frozenset({"PERSON"}))
    assert {f.entity_type for f in narrowed} == {"PERSON"}


def test_a_threshold_above_presidios_ner_score_drops_ner_findings(ner: Path) -> None:
    assert PiiScanner(NER_ENTITIES, min_score=0.85).scan(TEXT) != []
    assert PiiScanner(NER_ENTITIES, min_score=0.9).scan(TEXT) == []


def test_long_texts_go_through_the_pipeline_in_pieces(ner: Path) -> None:
    # Over 100,000 characters: more than one piece, offsets still into the whole text.
    text = "word " * 30_000 + "Ada Lovelace\n" + "word " * 1000 + "in Paris"
    findings = PiiScanner(NER_ENTITIES).scan(text)
    assert [(f.entity_type, text[f.start : f.end]) for f in findings] == [
        ("PERSON", "Ada Lovelace"),
        ("LOCATION", "Paris"),
    ]


def test_pieces_cut_at_a_line_break_else_a_space_else_the_limit() -> None:
    text = "one two three\nfour five six seven eight nine\nten elevenlongwordwithoutspaces end"
    pieces = list(_pieces(text, 25))
    assert [p for _, p in pieces] == [
        "one two three",
        "\nfour five six seven",
        " eight nine",
        "\nten",
        " elevenlongwordwithoutspa",
        "ces end",
    ]
    assert all(text[o : o + len(p)] == p for o, p in pieces)
    assert list(_pieces("short", 25)) == [(0, "short")]


# --- redaction ------------------------------------------------------------------------------


def digest(value: str) -> str:
    return hashlib.sha256(SALT + value.encode()).hexdigest()[:16]


@pytest.mark.parametrize(
    ("action", "expected"),
    [
        (Action.REPLACE, "<PERSON> flew to <LOCATION>."),
        (Action.MASK, f"{'*' * 12} flew to {'*' * 8}."),
        (Action.HASH, f"{digest('Ada Lovelace')} flew to {digest('New York')}."),
        (Action.BLOCK, "<PERSON> flew to <LOCATION>."),
    ],
)
def test_each_action(ner: Path, action: Action, expected: str) -> None:
    out = PiiScanner(NER_ENTITIES).redact(
        "Ada Lovelace flew to New York.", dict.fromkeys(NER_ENTITIES, action), salt=SALT
    )
    assert out.text == expected
    assert out.counts == {"PERSON": 1, "LOCATION": 1}
    assert out.blocked == (NER_ENTITIES if action is Action.BLOCK else frozenset())


def test_ner_and_pattern_entities_in_one_text(ner: Path) -> None:
    entities = DEFAULT_ENTITIES | NER_ENTITIES
    text = (
        "Grace Hopper (grace@example.com, phone 212-555-0134) moved to Paris; "
        "card 4111 1111 1111 1111, key AKIAIOSFODNN7EXAMPLE."
    )
    out = PiiScanner(entities).redact(text, dict.fromkeys(entities, Action.REPLACE))
    assert out.text == (
        "<PERSON> (<EMAIL_ADDRESS>, phone <PHONE_NUMBER>) moved to <LOCATION>; "
        "card <CREDIT_CARD>, key <AWS_ACCESS_KEY>."
    )
    assert out.counts == dict.fromkeys(
        ["PERSON", "EMAIL_ADDRESS", "PHONE_NUMBER", "LOCATION", "CREDIT_CARD", "AWS_ACCESS_KEY"], 1
    )


def test_a_model_finding_on_a_pattern_entity_loses_to_the_higher_score(ner: Path) -> None:
    # Both are reported, as Presidio reports both; redaction keeps the e-mail (1.0 > 0.85).
    text = f"Mail {EMAIL_AS_PERSON} today"
    scanner = PiiScanner(DEFAULT_ENTITIES | NER_ENTITIES)
    assert {t for t, value, _ in found(scanner, text) if value == EMAIL_AS_PERSON} == {
        "EMAIL_ADDRESS",
        "PERSON",
    }
    both = {"EMAIL_ADDRESS": Action.REPLACE, "PERSON": Action.REPLACE}
    assert scanner.redact(text, both).text == "Mail <EMAIL_ADDRESS> today"
    assert scanner.redact(text, {"PERSON": Action.REPLACE}).text == "Mail <PERSON> today"


# --- streams --------------------------------------------------------------------------------

STREAM_TEXT = (
    "Dear Ada Lovelace, the train from New York to Zurich leaves at nine. Grace Hopper and "
    "Linus Torvalds meet you at Lake Geneva; mail grace@example.com. Bye"
)
STREAM_ACTIONS = {
    "PERSON": Action.REPLACE,
    "LOCATION": Action.MASK,
    "EMAIL_ADDRESS": Action.REPLACE,
}
# Every word of every name: none may ever be emitted, whatever the chunks.
NAME_WORDS = {word for texts in NAMES.values() for text in texts for word in text.split()} - {
    "Acme",
    "Corp",
}


def stream(chunks: list[str], window: int) -> tuple[str, dict[str, int]]:
    scanner = PiiScanner(frozenset(STREAM_ACTIONS))
    redactor = StreamRedactor(scanner, STREAM_ACTIONS, window_chars=window)
    out = "".join(redactor.feed(c) for c in chunks) + redactor.finish()
    return out, dict(redactor.counts)


def test_stream_split_at_every_boundary_equals_whole_text_redaction(ner: Path) -> None:
    whole = PiiScanner(frozenset(STREAM_ACTIONS)).redact(STREAM_TEXT, STREAM_ACTIONS)
    assert whole.counts == {"PERSON": 3, "LOCATION": 3, "EMAIL_ADDRESS": 1}
    for i in range(1, len(STREAM_TEXT)):
        for j in (i + 1, i + 9):
            chunks = [STREAM_TEXT[:i], STREAM_TEXT[i:j], STREAM_TEXT[j:]]
            assert stream(chunks, window=48) == (whole.text, whole.counts), (i, j)


@pytest.mark.parametrize("window", [None, 128])
def test_stream_char_by_char_never_emits_part_of_a_name(ner: Path, window: int | None) -> None:
    scanner = PiiScanner(frozenset(STREAM_ACTIONS))
    whole = scanner.redact(STREAM_TEXT, STREAM_ACTIONS)
    if window is None:
        # A window as long as the longest entity in the text (the e-mail) still catches all.
        window = max(f.end - f.start for f in scanner.scan(STREAM_TEXT))
        assert window == len("grace@example.com")
    redactor = StreamRedactor(scanner, STREAM_ACTIONS, window_chars=window)
    emitted = ""
    for c in STREAM_TEXT:
        emitted += redactor.feed(c)
        assert not {w for w in NAME_WORDS if w in emitted}, emitted
    emitted += redactor.finish()
    assert emitted == whole.text
    assert not {w for w in NAME_WORDS if w in emitted}


def test_stream_block_is_reported(ner: Path) -> None:
    scanner = PiiScanner(NER_ENTITIES)
    redactor = StreamRedactor(scanner, {"PERSON": Action.BLOCK}, window_chars=32)
    text = "".join(redactor.feed(c) for c in "hi Alan Turing, bye") + redactor.finish()
    assert redactor.blocked == frozenset({"PERSON"})
    assert text == "hi <PERSON>, bye"


# --- configuration --------------------------------------------------------------------------


def test_without_a_model_ner_types_are_refused_naming_the_setting() -> None:
    configure_ner("")
    assert not ner_available()
    assert supported_entities() == SUPPORTED_ENTITIES
    with pytest.raises(ValueError, match="GATEZ_PII_NER_MODEL") as caught:
        PiiScanner(frozenset({"EMAIL_ADDRESS", "PERSON"}))
    assert "PERSON" in str(caught.value)


def test_the_setting_is_read_from_the_environment() -> None:
    assert Settings.from_env({}).pii_ner_model == ""
    env = {"GATEZ_PII_NER_MODEL": " en_core_web_sm "}
    assert Settings.from_env(env).pii_ner_model == "en_core_web_sm"


def broken_pipeline(path: Path) -> Path:
    path.mkdir()
    (path / "config.cfg").write_text("[nlp]\nlang = \nthis is not a spaCy config\n")
    return path


def blank_pipeline(path: Path) -> Path:
    spacy.blank("en").to_disk(path)
    return path


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda tmp: tmp / "nowhere", "is neither an installed spaCy package nor the directory"),
        (lambda tmp: tmp, "is neither an installed spaCy package nor the directory"),
        (lambda tmp: Path("gatez_no_such_spacy_model"), "is neither an installed spaCy package"),
        (lambda tmp: broken_pipeline(tmp / "broken"), "did not load"),
        (lambda tmp: blank_pipeline(tmp / "blank"), "has no component labelling persons"),
    ],
    ids=["missing-path", "not-a-pipeline", "not-a-package", "broken", "no-ner"],
)
def test_a_model_that_does_not_load_fails_at_configure_time(
    tiny_model: Path, tmp_path: Path, make: Callable[[Path], Path], words: str
) -> None:
    model = make(tmp_path)
    with ner_configured(tiny_model):
        with pytest.raises(NerModelError, match="GATEZ_PII_NER_MODEL") as caught:
            configure_ner(str(model))
        assert words in str(caught.value)
        # The model configured before stays.
        assert ner_available()
        assert PiiScanner(NER_ENTITIES).scan("Paris")[0].entity_type == "LOCATION"


def test_without_loading_the_model_is_only_found_and_loads_on_first_use(
    tmp_path: Path,
) -> None:
    # The control service's way: it validates policies and never scans.
    with pytest.raises(NerModelError):
        configure_ner(str(tmp_path / "nowhere"), load=False)
    with ner_configured(""):
        configure_ner(str(broken_pipeline(tmp_path / "broken")), load=False)
        assert ner_available()
        scanner = PiiScanner(NER_ENTITIES)
        with pytest.raises(NerModelError, match="did not load"):
            scanner.scan("Ada Lovelace")


def test_a_scanner_keeps_the_model_it_was_built_with(ner: Path) -> None:
    scanner = PiiScanner(NER_ENTITIES)
    configure_ner("")
    assert [f.entity_type for f in scanner.scan("Zurich")] == ["LOCATION"]
