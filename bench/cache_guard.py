"""Semantic-cache matching quality: wordllama similarity, with and without the guards.

Reads the labelled pairs in tests/gatez/data/cache_pairs.jsonl (label 1: the same question, so
a cached answer may be served; label 0: a near miss) and prints precision, recall and false-hit
rate for thresholds 0.80 to 0.95, then the pairs misjudged at the chosen threshold.

    python -m bench.cache_guard [--threshold 0.90] [--errors]
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson

from gatez.cache_guard import DEFAULT_THRESHOLD, compare_questions
from gatez.embeddings import WordLlamaEmbedder

PAIRS_FILE = Path(__file__).resolve().parent.parent / "tests/gatez/data/cache_pairs.jsonl"
THRESHOLDS = (0.80, 0.825, 0.85, 0.875, 0.90, 0.925, 0.95)


@dataclass(frozen=True, slots=True)
class ScoredPair:
    """One labelled pair with its embedding similarity."""

    a: str
    b: str
    label: bool
    kind: str
    similarity: float


@dataclass(frozen=True, slots=True)
class Quality:
    """Confusion counts of a matcher over the labelled pairs, and the rates derived from them."""

    true_hits: int
    false_hits: int
    true_misses: int
    false_misses: int

    @property
    def precision(self) -> float:
        """Of the pairs served from the cache, the share that were the same question."""
        served = self.true_hits + self.false_hits
        return self.true_hits / served if served else 1.0

    @property
    def recall(self) -> float:
        """Of the same-question pairs, the share served from the cache."""
        same = self.true_hits + self.false_misses
        return self.true_hits / same if same else 1.0

    @property
    def false_hit_rate(self) -> float:
        """Of the near misses, the share wrongly served from the cache."""
        different = self.false_hits + self.true_misses
        return self.false_hits / different if different else 0.0


def load_pairs(embedder: WordLlamaEmbedder, path: Path = PAIRS_FILE) -> list[ScoredPair]:
    """The labelled pairs, each scored with the embedder's cosine similarity."""
    rows = [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]
    vectors_a = embedder.embed([row["a"] for row in rows])
    vectors_b = embedder.embed([row["b"] for row in rows])
    similarities = (vectors_a * vectors_b).sum(axis=1)
    return [
        ScoredPair(row["a"], row["b"], row["label"] == 1, row["kind"], float(similarity))
        for row, similarity in zip(rows, similarities, strict=True)
    ]


def predict(pair: ScoredPair, threshold: float, *, guards: bool) -> bool:
    """Whether the matcher would serve `pair.b` the cached answer of `pair.a`."""
    if not guards:
        return pair.similarity >= threshold
    return compare_questions(pair.a, pair.b, pair.similarity, threshold).hit


def measure(pairs: Sequence[ScoredPair], threshold: float, *, guards: bool) -> Quality:
    """Confusion counts of the matcher at `threshold`, with or without the guards."""
    counts = {(True, True): 0, (True, False): 0, (False, True): 0, (False, False): 0}
    for pair in pairs:
        counts[(predict(pair, threshold, guards=guards), pair.label)] += 1
    return Quality(
        true_hits=counts[(True, True)],
        false_hits=counts[(True, False)],
        true_misses=counts[(False, False)],
        false_misses=counts[(False, True)],
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Print the quality table and, with --errors, the misjudged pairs."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD)
    parser.add_argument("--errors", action="store_true", help="list misjudged pairs")
    args = parser.parse_args(argv)

    pairs = load_pairs(WordLlamaEmbedder.load())
    positives = sum(p.label for p in pairs)
    print(f"{len(pairs)} pairs: {positives} same question, {len(pairs) - positives} near misses")
    print(f"{'threshold':>9} | {'similarity only':^26} | {'similarity + guards':^26}")
    print(
        f"{'':>9} | {'prec':>7} {'recall':>7} {'falsehit':>9} | {'prec':>7} {'recall':>7} "
        f"{'falsehit':>9}"
    )
    for threshold in THRESHOLDS:
        plain = measure(pairs, threshold, guards=False)
        guarded = measure(pairs, threshold, guards=True)
        print(
            f"{threshold:>9.3f} | {plain.precision:>7.3f} {plain.recall:>7.3f} "
            f"{plain.false_hit_rate:>9.3f} | {guarded.precision:>7.3f} {guarded.recall:>7.3f} "
            f"{guarded.false_hit_rate:>9.3f}"
        )
    if args.errors:
        print(f"\nmisjudged at {args.threshold}:")
        for pair in pairs:
            verdict = compare_questions(pair.a, pair.b, pair.similarity, args.threshold)
            if verdict.hit != pair.label:
                kind = "FALSE HIT " if verdict.hit else "false miss"
                print(
                    f"{kind} {pair.kind:<26} sim={pair.similarity:.3f} "
                    f"{verdict.reason.value}:{verdict.detail}\n    {pair.a}\n    {pair.b}"
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
