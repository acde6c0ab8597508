"""The offline wordllama embedder: loads with no network, unit rows, stable similarities."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import numpy as np
import pytest

from gatez.embeddings import EMBEDDING_DIM, WordLlamaEmbedder


def test_loads_without_network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading copies the bundled tokenizer into the cache dir and opens no connection."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the embedder tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    embedder = WordLlamaEmbedder.load(tmp_path)
    assert (tmp_path / "tokenizers" / "l2_supercat_tokenizer_config.json").is_file()
    assert embedder.embed(["hello"]).shape == (1, EMBEDDING_DIM)
    # A second load reuses the copy.
    WordLlamaEmbedder.load(tmp_path)


@pytest.fixture(scope="module")
def embedder() -> WordLlamaEmbedder:
    """One embedder for the module (loading reads the weights)."""
    return WordLlamaEmbedder.load()


def test_rows_are_unit_vectors(embedder: WordLlamaEmbedder) -> None:
    """Rows have unit length, so a dot product is the cosine; empty text is a zero row."""
    rows = embedder.embed(["How do I reverse a list?", "What is Kubernetes?", ""])
    assert rows.shape == (3, EMBEDDING_DIM)
    assert rows.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(rows[:2], axis=1), 1.0, rtol=1e-5)
    assert not rows[2].any()
    assert embedder.embed([]).shape == (0, EMBEDDING_DIM)


def test_paraphrase_scores_above_unrelated(embedder: WordLlamaEmbedder) -> None:
    """The embedding ranks a paraphrase above an unrelated question."""
    question = "How do I reverse a list in Python?"
    paraphrase = embedder.similarity(question, "How can I reverse a Python list?")
    unrelated = embedder.similarity(question, "What is the capital of Australia?")
    assert paraphrase > 0.9 > unrelated


def test_embed_time_of_a_200_character_prompt(embedder: WordLlamaEmbedder) -> None:
    """A 200-character prompt embeds well inside the 8 ms semantic-hit budget (~0.1 ms here)."""
    prompt = ("Can you explain how to configure a reverse proxy with TLS for my web app? " * 3)[
        :200
    ]
    embedder.embed([prompt])
    rounds = 200
    started = time.perf_counter()
    for _ in range(rounds):
        embedder.embed([prompt])
    per_embed_ms = (time.perf_counter() - started) / rounds * 1000
    assert per_embed_ms < 2.0, per_embed_ms
