"""`python -m bench.pii_ner`: what PERSON and LOCATION (spaCy NER) add to PII scanning.

CPU time (`time.process_time_ns`) of `PiiScanner.redact` on English prose of 1 KB and 16 KB
with a few entities per KB (e-mails, phone numbers, cards, names, places), every call on a text
of its own: the default pattern types alone, the NER types alone, and both; then the cost per
step of a `StreamRedactor` (window 128, steps of 32 characters, as `extproc/stages/pii.py`
feeds it) with and without the NER types.

By default the model is the tiny pipeline the tests use (`tests/support/ner.py`: the blank
English tokenizer and an entity ruler): its cost is a lower bound, the tokenizer's and spaCy's
per-call overhead. A statistical model costs far more. `--statistical` builds spaCy's own
CPU-efficiency NER pipeline (tok2vec and ner, the architecture of `en_core_web_sm`'s NER)
with untrained weights: what it finds is meaningless, what it costs is a trained one's (no
model can be downloaded here). Measure the one you deploy with `--model en_core_web_sm` (an
installed package) or `--model /path/to/pipeline`.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import spacy
from spacy.cli.init_config import init_config

from gatez.pii import DEFAULT_ENTITIES, NER_ENTITIES, Action, PiiScanner, StreamRedactor
from tests.support.ner import NAMES, ner_configured, save_tiny_ner_pipeline

PROSE = (
    "the customer asked whether the order could still be changed before it ships and we "
    "explained that the warehouse picks items in the morning, so any change made today will "
    "be applied; she also wanted to know about returns, which are free within thirty days"
)
WORDS = PROSE.split(" ")
ENTITIES = (
    "jane.doe@example.com",
    "call 415-555-0132",
    "card 4111 1111 1111 1111",
    *(f"with {name}" for name in NAMES["PERSON"] + NAMES["PER"]),
    *(f"in {place}" for place in NAMES["GPE"] + NAMES["LOC"]),
)


def prose(size: int, rng: random.Random, entities_per_kb: int = 4) -> str:
    """About `size` characters of text with `entities_per_kb` entities per KB."""
    words: list[str] = []
    length = 0
    every = max(1, 1024 // (entities_per_kb * 7))  # words between entities (~7 chars a word)
    while length < size:
        pool = ENTITIES if len(words) % every == every - 1 else WORDS
        word = rng.choice(pool)
        words.append(word)
        length += len(word) + 1
    return " ".join(words)[:size]


def cpu_per_call_us(call: Callable[[], object], calls: int, rounds: int = 5) -> float:
    """The median over `rounds` of CPU microseconds per call."""
    results = []
    for _ in range(rounds):
        began = time.process_time_ns()
        for _ in range(calls):
            call()
        results.append((time.process_time_ns() - began) / calls / 1000)
    return statistics.median(results)


def redact_each(entities: frozenset[str], texts: list[str]) -> Callable[[], object]:
    """A call that redacts the next of `texts` (each call its own text)."""
    scanner = PiiScanner(entities)
    actions = dict.fromkeys(entities, Action.REPLACE)
    pending = iter(texts)
    return lambda: scanner.redact(next(pending), actions)


def bench_redact(size: int, calls: int) -> None:
    rng = random.Random(size)
    texts = [prose(size, rng) for _ in range(calls * 5)]
    kb = size / 1024
    line = [f"redact {size:6d} B:"]
    for label, entities in (
        ("patterns", DEFAULT_ENTITIES),
        ("NER", NER_ENTITIES),
        ("both", DEFAULT_ENTITIES | NER_ENTITIES),
    ):
        us = cpu_per_call_us(redact_each(entities, texts), calls)
        line.append(f"{label} {us / 1000 / kb:.3f} ms/KB")
    print("  ".join(line))


def stream_us_per_step(entities: frozenset[str], text: str, rounds: int) -> float:
    actions = dict.fromkeys(entities, Action.REPLACE)
    steps = [text[i : i + 32] for i in range(0, len(text), 32)]
    results = []
    for _ in range(rounds):
        redactor = StreamRedactor(PiiScanner(entities), actions, window_chars=128)
        began = time.process_time_ns()
        for step in steps:
            redactor.feed(step)
        redactor.finish()
        results.append((time.process_time_ns() - began) / len(steps) / 1000)
    return statistics.median(results)


def bench_stream(size: int, rounds: int) -> None:
    text = prose(size, random.Random(7))
    without = stream_us_per_step(DEFAULT_ENTITIES, text, rounds)
    with_ner = stream_us_per_step(DEFAULT_ENTITIES | NER_ENTITIES, text, rounds)
    print(
        f"stream {size} chars in steps of 32: {without:.1f} µs/step patterns only,"
        f" {with_ner:.1f} with NER: +{with_ner - without:.1f} µs per step"
    )


def save_untrained_statistical_pipeline(path: Path) -> Path:
    """spaCy's default English NER pipeline for CPU efficiency, untrained (random weights)."""
    config = init_config(lang="en", pipeline=["ner"], optimize="efficiency", gpu=False)
    nlp = spacy.util.load_model_from_config(config, auto_fill=True, validate=True)
    ner = nlp.get_pipe("ner")
    for label in ("PERSON", "GPE", "LOC", "ORG"):
        ner.add_label(label)  # type: ignore[attr-defined]
    nlp.initialize()
    nlp.to_disk(path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--model", default="", help="spaCy package or path (default: tiny)")
    parser.add_argument(
        "--statistical", action="store_true", help="an untrained small statistical NER"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.model:
            model, name = args.model, args.model
        elif args.statistical:
            model = str(save_untrained_statistical_pipeline(Path(tmp) / "statistical"))
            name = "untrained tok2vec+ner (efficiency)"
        else:
            model, name = str(save_tiny_ner_pipeline(Path(tmp) / "tiny")), "tiny entity ruler"
        began = time.perf_counter()
        with ner_configured(model):
            print(f"model {name}: loaded in {time.perf_counter() - began:.2f} s")
            for size in (1024, 16 * 1024):
                bench_redact(size, args.calls if size <= 1024 else max(10, args.calls // 8))
            bench_stream(8 * 1024, 5)


if __name__ == "__main__":
    main()
