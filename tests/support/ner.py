"""A tiny real spaCy NER pipeline for tests and benchmarks: no model download.

`spacy.blank("en")` (the tokenizer) and an `entity_ruler` that labels a few names and places
as a statistical model would (PERSON, PER, GPE, LOC, FAC, and ORG, which Gatez does not offer),
saved with `nlp.to_disk` so it loads the way `GATEZ_PII_NER_MODEL` pointing at a directory does.
Its entities do not depend on context, unlike a statistical model's.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import spacy

from gatez.pii import configure_ner

# label → texts (each matched case-sensitively, token by token).
NAMES: dict[str, tuple[str, ...]] = {
    "PERSON": ("Ada Lovelace", "Grace Hopper", "Alan Turing"),
    "PER": ("Linus Torvalds",),
    "GPE": ("New York", "Zurich", "Paris"),
    "LOC": ("Lake Geneva",),
    "FAC": ("Golden Gate Bridge",),
    "ORG": ("Acme Corp",),
}
# A model that (wrongly) calls an e-mail address a person: the overlap goes to the higher score.
EMAIL_AS_PERSON = "ada.lovelace@example.com"


def save_tiny_ner_pipeline(path: Path) -> Path:
    """Saves the pipeline in `path` (a directory) and returns it."""
    nlp = spacy.blank("en")
    ruler: Any = nlp.add_pipe("entity_ruler")
    patterns: list[dict[str, Any]] = [
        {"label": label, "pattern": text} for label, texts in NAMES.items() for text in texts
    ]
    patterns.append({"label": "PERSON", "pattern": [{"LOWER": EMAIL_AS_PERSON}]})
    ruler.add_patterns(patterns)
    nlp.to_disk(path)
    return path


@contextmanager
def ner_configured(model: str | Path) -> Iterator[None]:
    """This process's NER model is `model` inside the block, and none after it."""
    configure_ner(str(model))
    try:
        yield
    finally:
        configure_ner("")
