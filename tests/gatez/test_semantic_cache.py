"""The semantic tier on a real local Qdrant (in tmp_path) with the real wordllama embedder:
paraphrases found, near misses and other scopes or tenants not, expiry, ownership; and remote
embedders (a provider's embeddings API) beside it, each in collections of its own."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from gatez.answer_cache import Fingerprint
from gatez.embeddings import Embeddings, WordLlamaEmbedder
from gatez.semantic_cache import CANDIDATES, EmbedderUnavailable, SemanticIndex

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


# --- remote embedders ------------------------------------------------------------------------


@dataclass
class RemoteWordLlama:
    """A remote embedder (`gatez.semantic_cache.RemoteEmbedder`) giving wordllama's vectors —
    cut to `dim` and made unit again, when set — under an id of its own; raising `failure`
    when set. What it finds, it can only have found in its own collections."""

    embedder: WordLlamaEmbedder
    id: str = "remote-test"
    dim: int | None = None
    failure: Exception | None = None
    calls: list[list[str]] = field(default_factory=list)

    async def embed(self, texts: list[str]) -> Embeddings:
        self.calls.append(list(texts))
        if self.failure is not None:
            raise self.failure
        rows = self.embedder.embed(texts)
        if self.dim is None:
            return rows
        cut = np.ascontiguousarray(rows[:, : self.dim])
        cut /= np.linalg.norm(cut, axis=1, keepdims=True)
        return cut


async def store_remote(
    index: SemanticIndex, clock: Clock, tenant: str, embedder: RemoteWordLlama, *keys: Fingerprint
) -> None:
    for key in keys:
        assert index.add(tenant, key, clock.now + TTL_S, embedder=embedder)
    await index.flush()


OTHER = fp("What are the opening hours of the Berlin office?")
OTHER_PARAPHRASE = fp("What are the opening times of the Berlin office?")


async def test_local_and_remote_embeddings_of_a_tenant_never_share_a_collection(
    index: SemanticIndex, clock: Clock, embedder: WordLlamaEmbedder
) -> None:
    remote = RemoteWordLlama(embedder)
    await store(index, clock, "acme", STORED)

    # The very vectors of the local embedder, but from another embedder: not in its collection.
    assert await index.lookup("acme", STORED, THRESHOLD, embedder=remote) is None
    await store_remote(index, clock, "acme", remote, OTHER)

    found = await index.lookup("acme", OTHER_PARAPHRASE, THRESHOLD, embedder=remote)
    assert found is not None and found.exact == OTHER.exact
    assert await index.lookup("acme", OTHER_PARAPHRASE, THRESHOLD) is None
    assert await index.lookup("acme", STORED, THRESHOLD, embedder=remote) is None
    local = await index.lookup("acme", STORED, THRESHOLD)
    assert local is not None and local.exact == STORED.exact
    # The remote embedder embedded: the lookups' questions, and the write's.
    assert remote.calls == [
        [STORED.question],
        [OTHER.question],
        [OTHER_PARAPHRASE.question],
        [STORED.question],
    ]
    assert (index.points_written, index.write_errors) == (2, 0)


async def test_remote_vectors_of_another_size_or_model_get_collections_of_their_own(
    index: SemanticIndex, clock: Clock, embedder: WordLlamaEmbedder
) -> None:
    full = RemoteWordLlama(embedder, id="model-a")
    cut = RemoteWordLlama(embedder, id="model-a", dim=128)
    other_model = RemoteWordLlama(embedder, id="model-b")
    await store_remote(index, clock, "acme", full, OTHER)
    await store_remote(index, clock, "acme", cut, STORED)

    # Each collection sized by its first vectors: no write refused for its size.
    assert (index.points_written, index.write_errors) == (2, 0)
    assert await index.lookup("acme", OTHER, THRESHOLD, embedder=cut) is None
    assert await index.lookup("acme", STORED, THRESHOLD, embedder=full) is None
    assert await index.lookup("acme", OTHER, THRESHOLD, embedder=other_model) is None
    found = await index.lookup("acme", STORED, THRESHOLD, embedder=cut)
    assert found is not None and found.exact == STORED.exact


async def test_one_batch_writes_each_embedders_entries_whatever_another_did(
    index: SemanticIndex, clock: Clock, embedder: WordLlamaEmbedder
) -> None:
    broken = RemoteWordLlama(embedder, id="broken", failure=RuntimeError("HTTP 500"))
    resting = RemoteWordLlama(embedder, id="resting", failure=EmbedderUnavailable("resting"))
    working = RemoteWordLlama(embedder, id="working")
    # Queued together, written as one batch.
    assert index.add("acme", fp("Is the broken provider up?"), clock.now + TTL_S, embedder=broken)
    assert index.add("acme", fp("Is the resting one up?"), clock.now + TTL_S, embedder=resting)
    assert index.add("acme", OTHER, clock.now + TTL_S, embedder=working)
    assert index.add("acme", STORED, clock.now + TTL_S)
    await index.flush()

    assert (index.points_written, index.write_errors, index.writes_dropped) == (2, 1, 1)
    assert await index.lookup("acme", OTHER, THRESHOLD, embedder=working) is not None
    assert await index.lookup("acme", STORED, THRESHOLD) is not None


async def test_a_remote_lookup_that_fails_raises_and_one_not_tried_is_skipped(
    index: SemanticIndex, clock: Clock, embedder: WordLlamaEmbedder
) -> None:
    remote = RemoteWordLlama(embedder)
    await store_remote(index, clock, "acme", remote, STORED)

    remote.failure = RuntimeError("HTTP 500")
    with pytest.raises(RuntimeError, match="HTTP 500"):
        await index.lookup("acme", STORED, THRESHOLD, embedder=remote)
    remote.failure = EmbedderUnavailable("resting")
    assert await index.lookup("acme", STORED, THRESHOLD, embedder=remote) is None
    assert index.remote_unavailable == 1


async def test_sweeping_and_dropping_a_tenant_reach_every_embedders_collections(
    index: SemanticIndex, clock: Clock, embedder: WordLlamaEmbedder
) -> None:
    remote = RemoteWordLlama(embedder)
    await store(index, clock, "acme", STORED)
    await store_remote(index, clock, "acme", remote, STORED)
    clock.now += TTL_S + 1
    await store(index, clock, "acme", OTHER)
    await store_remote(index, clock, "acme", remote, OTHER)

    await index.sweep()
    # Swept in both (seen back in time, when they had not expired): the expired points are
    # gone, the fresh ones are not.
    clock.now -= TTL_S + 1
    assert await index.lookup("acme", STORED, THRESHOLD) is None
    assert await index.lookup("acme", STORED, THRESHOLD, embedder=remote) is None
    clock.now += TTL_S + 1
    assert await index.lookup("acme", OTHER, THRESHOLD) is not None
    assert await index.lookup("acme", OTHER, THRESHOLD, embedder=remote) is not None

    await store(index, clock, "globex", OTHER)
    await store_remote(index, clock, "globex", remote, OTHER)
    await index.drop_tenant("acme")
    assert await index.lookup("acme", OTHER, THRESHOLD) is None
    assert await index.lookup("acme", OTHER, THRESHOLD, embedder=remote) is None
    assert await index.lookup("globex", OTHER, THRESHOLD) is not None
    assert await index.lookup("globex", OTHER, THRESHOLD, embedder=remote) is not None
