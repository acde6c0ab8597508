"""The semantic tier on a real local Qdrant (in tmp_path) with the real wordllama embedder:
paraphrases found, near misses and other scopes or tenants not, expiry, ownership."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gatez.answer_cache import Fingerprint
from gatez.embeddings import WordLlamaEmbedder
from gatez.semantic_cache import CANDIDATES, SemanticIndex

TTL_S = 3600.0
THRESHOLD = 0.85


class Clock:
    """A wall clock the test moves."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="session")
def embedder() -> WordLlamaEmbedder:
    return WordLlamaEmbedder.load()


@pytest.fixture
def clock() -> Clock:
    return Clock()


async def open_index(path: Path, embedder: WordLlamaEmbedder, clock: Clock) -> SemanticIndex:
    index = SemanticIndex.local(path, load_embedder=lambda: embedder, clock=clock)
    index.start()
    assert await index.wait_ready()
    return index


@pytest.fixture
async def index(
    tmp_path: Path, embedder: WordLlamaEmbedder, clock: Clock
) -> AsyncIterator[SemanticIndex]:
    index = await open_index(tmp_path / "qdrant", embedder, clock)
    yield index
    await index.close()


def fp(question: str, scope: str = "support-bot") -> Fingerprint:
    """A fingerprint as `gatez.answer_cache.fingerprint` makes them, for a question in a scope."""
    scope_digest = hashlib.sha256(scope.encode()).hexdigest()
    exact = hashlib.sha256(f"{scope}\0{question}".encode()).hexdigest()
    return Fingerprint(exact=exact, scope=scope_digest, question=question)


async def store(index: SemanticIndex, clock: Clock, tenant: str, *keys: Fingerprint) -> None:
    for key in keys:
        assert index.add(tenant, key, clock.now + TTL_S)
    await index.flush()


STORED = fp("How do I reset my password on the Zendesk portal?")


async def test_a_paraphrase_in_the_same_scope_finds_the_entry(
    index: SemanticIndex, clock: Clock
) -> None:
    await store(index, clock, "acme", STORED)

    match = await index.lookup(
        "acme", fp("How can I reset the password for the Zendesk portal?"), THRESHOLD
    )

    assert match is not None
    assert match.exact == STORED.exact
    assert match.question == STORED.question
    assert THRESHOLD <= match.similarity <= 1.0
    # The stored question itself scores (nearly) 1.
    same = await index.lookup("acme", STORED, THRESHOLD)
    assert same is not None and same.similarity == pytest.approx(1.0, abs=1e-4)
    assert index.points_written == 1


@pytest.mark.parametrize(
    "question",
    [
        "How do I not reset my password on the Zendesk portal?",
        "How do I reset my password on the Salesforce portal?",
        "How do I reset my 2 passwords on the Zendesk portal?",
        "Comment réinitialiser mon mot de passe sur le portail client ?",
        "What is the capital of France?",
    ],
    ids=["negation", "entity", "number", "language", "unrelated"],
)
async def test_near_misses_are_not_matches(
    index: SemanticIndex, clock: Clock, question: str
) -> None:
    await store(index, clock, "acme", STORED)
    assert await index.lookup("acme", fp(question), THRESHOLD) is None


async def test_another_scope_or_tenant_never_matches(index: SemanticIndex, clock: Clock) -> None:
    await store(index, clock, "acme", STORED)
    paraphrase = "How can I reset the password for the Zendesk portal?"

    assert await index.lookup("acme", fp(paraphrase, scope="sales-bot"), THRESHOLD) is None
    # Another tenant has no collection yet, then one of its own.
    assert await index.lookup("globex", fp(paraphrase), THRESHOLD) is None
    await store(index, clock, "globex", fp("What are your opening hours?"))
    assert await index.lookup("globex", fp(paraphrase), THRESHOLD) is None
    assert await index.lookup("globex", STORED, THRESHOLD) is None


async def test_the_own_scope_is_found_among_many_scopes_asking_the_same(
    index: SemanticIndex, clock: Clock
) -> None:
    """Follow-ups such as this one are asked in every conversation: the nearest points of a
    query must still be those of its own scope (the scope's part of the vector)."""
    asked = "Could you explain that in simpler terms?"
    # Other conversations hold the very words asked; this one a paraphrase (similarity 0.91).
    crowd = [fp(asked, scope=f"conversation-{n}") for n in range(40)]
    mine = fp("Can you explain that in simpler terms?", scope="conversation-mine")
    await store(index, clock, "acme", *crowd, mine)

    match = await index.lookup("acme", fp(asked, scope="conversation-mine"), THRESHOLD)

    assert len(crowd) > CANDIDATES
    assert match is not None and match.exact == mine.exact


async def test_expired_points_are_not_matches_and_the_sweep_deletes_them(
    index: SemanticIndex, clock: Clock
) -> None:
    await store(index, clock, "acme", STORED)
    clock.now += TTL_S + 1
    assert await index.lookup("acme", STORED, THRESHOLD) is None

    # Not yet swept: back in time, the point is there; swept: it is gone.
    clock.now -= TTL_S + 1
    assert await index.lookup("acme", STORED, THRESHOLD) is not None
    clock.now += TTL_S + 1
    await index.sweep()
    clock.now -= TTL_S + 1
    assert await index.lookup("acme", STORED, THRESHOLD) is None
    assert index.sweeps == 1


async def test_dropping_a_tenant_deletes_only_its_questions(
    index: SemanticIndex, clock: Clock
) -> None:
    await store(index, clock, "acme", STORED)
    await store(index, clock, "globex", STORED)

    await index.drop_tenant("acme")

    assert await index.lookup("acme", STORED, THRESHOLD) is None
    assert await index.lookup("globex", STORED, THRESHOLD) is not None


async def test_local_qdrant_keeps_its_points_and_has_one_owner(
    tmp_path: Path, embedder: WordLlamaEmbedder, clock: Clock
) -> None:
    path = tmp_path / "qdrant"
    first = await open_index(path, embedder, clock)
    await store(first, clock, "acme", STORED)

    # A second process (or index) on the same directory cannot open it: the tier stays off.
    second = SemanticIndex.local(path, load_embedder=lambda: embedder, clock=clock)
    second.start()
    assert not await second.wait_ready()
    assert await second.lookup("acme", STORED, THRESHOLD) is None
    assert not second.add("acme", STORED, clock.now + TTL_S)
    await second.close()

    await first.close()
    reopened = await open_index(path, embedder, clock)
    try:
        assert await reopened.lookup("acme", STORED, THRESHOLD) is not None
    finally:
        await reopened.close()


async def test_until_the_embedder_is_loaded_the_tier_is_skipped(
    tmp_path: Path, embedder: WordLlamaEmbedder, clock: Clock
) -> None:
    index = SemanticIndex.local(tmp_path / "qdrant", load_embedder=lambda: embedder, clock=clock)
    assert not index.ready
    assert await index.lookup("acme", STORED, THRESHOLD) is None
    assert not index.add("acme", STORED, clock.now + TTL_S)
    index.start()
    assert await index.wait_ready()
    await index.close()


async def test_questions_it_cannot_compare_are_left_to_the_exact_tier(
    index: SemanticIndex, clock: Clock
) -> None:
    no_question = Fingerprint(exact=STORED.exact, scope=STORED.scope, question="")
    too_long = fp("Summarise this: " + "lorem ipsum dolor " * 400)
    assert not index.add("acme", no_question, clock.now + TTL_S)
    assert not index.add("acme", too_long, clock.now + TTL_S)
    assert await index.lookup("acme", no_question, THRESHOLD) is None
