"""The answer cache's semantic tier: a question answered from a similar one's entry, by Qdrant.

**Who owns what.** Embedded Qdrant (`qdrant-client` local mode) is one process's: it keeps its
points in memory and in SQLite under `path`, locked for that process. A data plane opens the
local Qdrant of its state directory (`<state_dir>/qdrant`, `GATEZ_QDRANT_PATH`), and a state
directory already has one owner: the data plane locks its spool there, and a runner that
replaces another (APISIX reloads) waits for that lock — so the index is started after the spool
is taken, and a second process on the directory finds Qdrant locked and runs without the
semantic tier (logged). Data planes
share semantic entries only through a Qdrant server (`GATEZ_QDRANT_URL`); each one with a local
Qdrant knows only the questions it wrote itself. The exact tier, in Redis, is always shared,
and it holds every answer: a point only says which exact entry answers its question.

**Layout.** One collection per tenant and embedding model (`collection_name`), so a tenant's
entries are never scanned for another's question, and a tenant is purged by dropping its
collections. The embedder id names the model: `wordllama256` for the offline one; for a
provider's embeddings API (a `RemoteEmbedder`: CachePolicy `embeddings: PROVIDER`), the
provider and model digested, joined to the length of the vectors it returned. Vectors of two
models, or of one model at two sizes, thus never share a collection, and a collection is sized
by the first vectors written to it. A point's id is the UUID of the entry's exact digest; its
payload is `{tenant, scope, question, answer (the exact digest), expires_at}`; its vector is
the question's embedding (unit length) joined to a pseudo-random unit vector drawn from the
scope digest, weighted `SCOPE_WEIGHT`, and compared by dot product (= cosine, all vectors
being unit). A point of the same scope thus scores `SCOPE_WEIGHT + (1 - SCOPE_WEIGHT) *
cos(questions)`, and one of another scope `(1 - SCOPE_WEIGHT) * cos(questions)` plus
`SCOPE_WEIGHT` times a dot product of random unit vectors (standard deviation 1/8): the
nearest points of a query are those of its own scope, with no payload filter. That matters in
local mode, where qdrant-client evaluates a filter in Python point by point.

**Lookup**: the question embedded, the few nearest points of the tenant's collection, and the
first that has the same scope, is not expired, is similar enough (the route's threshold) and
that `gatez.cache_guard.compare_questions` does not object to (negation, numbers, entities…)
is a match; the caller then reads its exact entry from Redis (gone: a miss).

**Costs, measured** (`python -m bench.answer_cache`, 2-core VM shared with other work,
2026-12): a semantic hit through the stage — exact miss, embedding, nearest points, guards,
the entry read from Redis, the answer encoded — p50 1.0-1.8 ms with 1,000 points in the
tenant's collection, 3.3 ms with 10,000 (1.3 ms with 10,000 over ten tenants). The layout not
taken, one collection with a tenant and scope payload filter, cost 8.7 ms per query at 1,000
points and 125 ms at 10,000 (qdrant-client's local mode checks a filter in Python, point by
point, holding the GIL). A local write costs 1.3-1.7 ms per point (embedding and SQLite),
off the request path. Local Qdrant suits up to some ten thousand entries per tenant; beyond,
use a server.

**Threads.** Everything CPU-bound or blocking here — loading and running the embedder, every
call into local Qdrant (SQLite, NumPy) — runs in one worker thread of the index's own, so the
event loop only awaits it; local Qdrant's SQLite connections are that thread's alone. A remote
embedder is awaited on the event loop (an HTTP call), outside the bound on lookups waiting for
the thread. Until the embedder is loaded (`start`), the tier is skipped, never waited for.
Writes are queued (`add`) and made by a background task, each embedder's batch embedded
concurrently with the others'; expired points are deleted periodically (`sweep`).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeVar

import numpy as np

from gatez.answer_cache import Fingerprint
from gatez.cache_guard import compare_questions, question_features
from gatez.embeddings import EMBEDDING_DIM, Embeddings, WordLlamaEmbedder

if TYPE_CHECKING:
    from qdrant_client import AsyncQdrantClient, QdrantClient
    from qdrant_client import models as qm

log = logging.getLogger("gatez.cache")

T = TypeVar("T")

# The scope's part of a point's vector: its size, and its weight in the dot product.
SCOPE_DIM: Final = 64
SCOPE_WEIGHT: Final = 0.75
_QUESTION_SCALE: Final = float(np.sqrt(1 - SCOPE_WEIGHT))
_SCOPE_SCALE: Final = float(np.sqrt(SCOPE_WEIGHT))
# Changes with the point layout, so a new layout never reads old points.
LAYOUT: Final = "v1"
# "-lc": questions are embedded lower-cased (vectors of the earlier form live elsewhere).
WORDLLAMA_ID: Final = f"wordllama{EMBEDDING_DIM}-lc"
# Nearest points read per lookup; they are checked in order.
CANDIDATES: Final = 4
# Questions longer than this are left to the exact tier: embedding them costs milliseconds,
# and a long pasted text is rarely asked again in other words.
MAX_QUESTION_CHARS: Final = 4096
DEFAULT_SWEEP_INTERVAL_S: Final = 300.0
DEFAULT_QUEUE_SIZE: Final = 1024
# Lookups waiting for the worker thread at most: past this, the tier is skipped (a burst of
# lookups that timed out must not keep the thread busy for the next ones).
MAX_PENDING_LOOKUPS: Final = 16
WRITE_BATCH: Final = 16


class Embedder(Protocol):
    """Turns texts into unit-length rows (a zero row for a text with no known token)."""

    def embed(self, texts: list[str]) -> Embeddings: ...


class RemoteEmbedder(Protocol):
    """An embedder reached over the network (a provider's embeddings API), awaited on the event
    loop: unit-length rows, one per text, all of one length. Raises `EmbedderUnavailable` when
    it does not try at all, anything else when it tried and failed."""

    @property
    def id(self) -> str:
        """Names the model, so its vectors get collections of their own (letters, digits, '-',
        '_')."""
        ...

    async def embed(self, texts: list[str]) -> Embeddings: ...


class EmbedderUnavailable(Exception):
    """A remote embedder declined to try (its provider failed a moment ago, or too many calls
    are under way): the lookup is skipped and the write dropped, both only counted."""


@dataclass(frozen=True, slots=True)
class SemanticMatch:
    """A cached entry that may answer a question: its exact digest, and how similar its
    question is (cosine of the two questions' embeddings)."""

    exact: str
    similarity: float
    question: str


@dataclass(frozen=True, slots=True)
class _Entry:
    tenant: str
    fingerprint: Fingerprint
    expires_at: float
    # None: the index's own (local) embedder.
    embedder: RemoteEmbedder | None = None


COLLECTION_PREFIX: Final = f"gatez-answers-{LAYOUT}-"


def _tenant_digest(tenant_id: str) -> str:
    return hashlib.sha256(tenant_id.encode()).hexdigest()[:32]


def collection_name(tenant_id: str, embedder_id: str = WORDLLAMA_ID) -> str:
    """The collection holding a tenant's questions embedded by `embedder_id`."""
    return f"{COLLECTION_PREFIX}{embedder_id}-{_tenant_digest(tenant_id)}"


def remote_embedder_id(embedder: RemoteEmbedder, dim: int) -> str:
    """The embedder id of a remote embedder's vectors of length `dim`."""
    return f"{embedder.id}-{dim}"


def scope_vector(scope: str) -> np.ndarray[Any, np.dtype[np.float32]]:
    """A unit vector drawn from a scope digest: the same for one scope, nearly orthogonal for
    two (their dot product has a standard deviation of 1/8)."""
    rng = np.random.default_rng(int(scope[:32], 16))
    vector = rng.standard_normal(SCOPE_DIM).astype(np.float32)
    vector /= np.linalg.norm(vector)
    return vector


def point_vector(question: np.ndarray[Any, Any], scope: str) -> list[float]:
    """A point's (or a query's) vector: the question's embedding and its scope's vector."""
    joined = np.concatenate(
        (question.astype(np.float32) * _QUESTION_SCALE, scope_vector(scope) * _SCOPE_SCALE)
    )
    values: list[float] = joined.tolist()
    return values


def question_similarity(score: float) -> float:
    """The questions' cosine similarity behind the score of a point of the query's scope."""
    return (score - SCOPE_WEIGHT) / (1 - SCOPE_WEIGHT)


def point_id(exact: str) -> str:
    return str(uuid.UUID(bytes=bytes.fromhex(exact)[:16]))


class _Vectors(Protocol):
    """The Qdrant calls the index makes, local or remote."""

    async def collections(self) -> set[str]: ...

    async def create(self, collection: str, dim: int) -> None: ...

    async def search(
        self,
        collection: str,
        vector: list[float],
        *,
        limit: int,
        score_threshold: float,
        scope: str,
    ) -> list[qm.ScoredPoint]: ...

    async def upsert(self, collection: str, points: list[qm.PointStruct]) -> None: ...

    async def delete_expired(self, collection: str, now: float) -> None: ...

    async def drop(self, collection: str) -> None: ...

    async def close(self) -> None: ...


def _qdrant() -> ModuleType:
    """qdrant-client, imported on first use: it costs ~0.45 s to import, which a data plane
    (an APISIX runner restarting) would otherwise pay before serving its first request; the
    local index first uses it in its worker thread, a server client when it is built."""
    import qdrant_client
    import qdrant_client.http.exceptions

    return qdrant_client


def _models() -> ModuleType:
    """`qdrant_client.models` (see `_qdrant`)."""
    models: ModuleType = _qdrant().models
    return models


def _expired(now: float) -> qm.FilterSelector:
    m = _models()
    selector: qm.FilterSelector = m.FilterSelector(
        filter=m.Filter(must=[m.FieldCondition(key="expires_at", range=m.Range(lt=now))])
    )
    return selector


class _LocalQdrant:
    """qdrant-client's local mode, every call made in the index's worker thread."""

    def __init__(self, path: Path, worker: ThreadPoolExecutor) -> None:
        self._path = path
        self._worker = worker
        self._client: QdrantClient | None = None

    async def _call(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._worker, partial(function, *args, **kwargs))

    @property
    def client(self) -> QdrantClient:
        if self._client is None:
            raise RuntimeError("local Qdrant is not open")
        return self._client

    async def collections(self) -> set[str]:
        if self._client is None:
            # Opened in the worker thread: SQLite connections belong to the thread that made
            # them. Fails when another process holds the directory.
            self._client = await self._call(_qdrant().QdrantClient, path=str(self._path))
        response = await self._call(self.client.get_collections)
        return {c.name for c in response.collections}

    async def create(self, collection: str, dim: int) -> None:
        m = _models()
        params = m.VectorParams(size=dim, distance=m.Distance.DOT)
        await self._call(self.client.create_collection, collection, vectors_config=params)

    async def search(
        self,
        collection: str,
        vector: list[float],
        *,
        limit: int,
        score_threshold: float,
        scope: str,
    ) -> list[qm.ScoredPoint]:
        # No filter: local mode would evaluate it in Python for every point (module doc).
        response = await self._call(
            self.client.query_points,
            collection,
            query=vector,
            limit=limit,
            score_threshold=score_threshold,
            with_payload=True,
        )
        return response.points

    async def upsert(self, collection: str, points: list[qm.PointStruct]) -> None:
        await self._call(self.client.upsert, collection, points=points)

    async def delete_expired(self, collection: str, now: float) -> None:
        await self._call(self.client.delete, collection, points_selector=_expired(now))

    async def drop(self, collection: str) -> None:
        await self._call(self.client.delete_collection, collection)

    async def close(self) -> None:
        if self._client is not None:
            await self._call(self._client.close)
            self._client = None


class _RemoteQdrant:
    """A Qdrant server: shared by every data plane pointed at it. Payload indexes make the
    scope filter and the expiry sweep cheap there."""

    def __init__(self, url: str, api_key: str | None, timeout_s: int) -> None:
        self._client: AsyncQdrantClient = _qdrant().AsyncQdrantClient(
            url=url, api_key=api_key, timeout=timeout_s
        )

    async def collections(self) -> set[str]:
        response = await self._client.get_collections()
        return {c.name for c in response.collections}

    async def create(self, collection: str, dim: int) -> None:
        m = _models()
        params = m.VectorParams(size=dim, distance=m.Distance.DOT)
        if not await self._client.collection_exists(collection):
            try:
                await self._client.create_collection(collection, vectors_config=params)
            except _qdrant().http.exceptions.UnexpectedResponse:
                # Another data plane may have created it in between.
                if not await self._client.collection_exists(collection):
                    raise
        await self._client.create_payload_index(
            collection, "scope", field_schema=_models().PayloadSchemaType.KEYWORD
        )
        await self._client.create_payload_index(
            collection, "expires_at", field_schema=_models().PayloadSchemaType.FLOAT
        )

    async def search(
        self,
        collection: str,
        vector: list[float],
        *,
        limit: int,
        score_threshold: float,
        scope: str,
    ) -> list[qm.ScoredPoint]:
        m = _models()
        scoped = m.Filter(must=[m.FieldCondition(key="scope", match=m.MatchValue(value=scope))])
        try:
            response = await self._client.query_points(
                collection,
                query=vector,
                query_filter=scoped,
                limit=limit,
                score_threshold=score_threshold,
                with_payload=True,
            )
        except _qdrant().http.exceptions.UnexpectedResponse as error:
            if error.status_code == 404:
                return []  # no entry of this tenant yet
            raise
        return response.points

    async def upsert(self, collection: str, points: list[qm.PointStruct]) -> None:
        await self._client.upsert(collection, points=points)

    async def delete_expired(self, collection: str, now: float) -> None:
        await self._client.delete(collection, points_selector=_expired(now))

    async def drop(self, collection: str) -> None:
        await self._client.delete_collection(collection)

    async def close(self) -> None:
        await self._client.close()


class SemanticIndex:
    """The semantic tier (see the module doc). Build with `local` or `remote`, `start()` it
    on the event loop, `close()` it at the end."""

    def __init__(
        self,
        vectors: _Vectors,
        load_embedder: Callable[[], Embedder],
        worker: ThreadPoolExecutor,
        *,
        local: bool,
        embedder_id: str = WORDLLAMA_ID,
        clock: Callable[[], float] = time.time,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        sweep_interval_s: float = DEFAULT_SWEEP_INTERVAL_S,
    ) -> None:
        self._vectors = vectors
        self._load_embedder = load_embedder
        self._worker = worker
        # Local Qdrant is this process's alone: the collections it knows are all there are.
        self._local = local
        self._embedder_id = embedder_id
        self._clock = clock
        self._sweep_interval_s = sweep_interval_s
        self._embedder: Embedder | None = None
        self._collections: set[str] = set()
        self._queue: asyncio.Queue[_Entry] = asyncio.Queue(queue_size)
        self._tasks: list[asyncio.Task[None]] = []
        self._loading: asyncio.Task[None] | None = None
        self._pending_lookups = 0
        # Counters for a metrics collector.
        self.points_written = 0
        self.writes_dropped = 0
        self.write_errors = 0
        self.lookups_skipped = 0
        self.sweeps = 0
        # Remote embedders that declined to try (EmbedderUnavailable).
        self.remote_unavailable = 0

    @classmethod
    def local(
        cls,
        path: Path,
        *,
        embedder_cache: Path | None = None,
        load_embedder: Callable[[], Embedder] | None = None,
        **options: Any,
    ) -> SemanticIndex:
        """An index in local Qdrant at `path` (the state directory's `qdrant/`), embedding
        with wordllama (its tokenizer copied to `embedder_cache`, see gatez.embeddings) unless
        `load_embedder` gives another (or an already loaded one)."""
        worker = ThreadPoolExecutor(1, thread_name_prefix="gatez-semantic")
        return cls(
            _LocalQdrant(path, worker),
            load_embedder or partial(WordLlamaEmbedder.load, embedder_cache),
            worker,
            local=True,
            **options,
        )

    @classmethod
    def remote(
        cls,
        url: str,
        *,
        api_key: str | None = None,
        timeout_s: int = 5,
        embedder_cache: Path | None = None,
        load_embedder: Callable[[], Embedder] | None = None,
        **options: Any,
    ) -> SemanticIndex:
        """An index in the Qdrant server at `url`, shared by every data plane using it."""
        worker = ThreadPoolExecutor(1, thread_name_prefix="gatez-semantic")
        return cls(
            _RemoteQdrant(url, api_key, timeout_s),
            load_embedder or partial(WordLlamaEmbedder.load, embedder_cache),
            worker,
            local=False,
            **options,
        )

    @property
    def ready(self) -> bool:
        """The embedder is loaded and Qdrant open: lookups and writes are made."""
        return self._embedder is not None

    def start(self) -> None:
        """Loads the embedder and opens Qdrant in the worker thread; returns at once."""
        if self._loading is None:
            self._loading = asyncio.create_task(self._load(), name="gatez-semantic-load")

    async def wait_ready(self) -> bool:
        """Waits for `start`'s loading; whether the tier is ready (False: it failed)."""
        if self._loading is not None:
            await asyncio.shield(self._loading)
        return self.ready

    async def _load(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            embedder = await loop.run_in_executor(self._worker, self._load_embedder)
            self._collections = await self._vectors.collections()
        except Exception:
            log.exception("the semantic cache is off: its embedder or Qdrant failed to open")
            return
        self._embedder = embedder
        self._tasks = [
            asyncio.create_task(self._write_queued(), name="gatez-semantic-writes"),
            asyncio.create_task(self._sweep_periodically(), name="gatez-semantic-sweep"),
        ]

    # --- lookups ---------------------------------------------------------------------------

    async def lookup(
        self,
        tenant_id: str,
        fingerprint: Fingerprint,
        threshold: float,
        *,
        embedder: RemoteEmbedder | None = None,
    ) -> SemanticMatch | None:
        """The entry of the tenant that may answer this question in its scope, if any, its
        question embedded by `embedder` (None: the index's own). Not ready, busy, or a question
        it does not compare: None at once. A remote embedder's failure is raised."""
        question = fingerprint.question
        local_embedder = self._embedder
        if local_embedder is None or not question or len(question) > MAX_QUESTION_CHARS:
            return None
        vector: list[float] | None = None
        if embedder is None:
            collection = collection_name(tenant_id, self._embedder_id)
            if self._local and collection not in self._collections:
                return None
        else:
            # Awaited before taking a place among the lookups bound for the worker thread:
            # an HTTP call that may take a second must not keep local lookups out.
            found = await self._remote_query_vector(embedder, tenant_id, fingerprint)
            if found is None:
                return None
            collection, vector = found
        if self._pending_lookups >= MAX_PENDING_LOOKUPS:
            self.lookups_skipped += 1
            return None
        self._pending_lookups += 1
        try:
            if vector is None:
                loop = asyncio.get_running_loop()
                vector = await loop.run_in_executor(
                    self._worker, _query_vector, local_embedder, question, fingerprint.scope
                )
                if vector is None:
                    return None
            points = await self._vectors.search(
                collection,
                vector,
                limit=CANDIDATES,
                # A little under: the score is a float32 product.
                score_threshold=SCOPE_WEIGHT + (1 - SCOPE_WEIGHT) * threshold - 1e-6,
                scope=fingerprint.scope,
            )
        finally:
            self._pending_lookups -= 1
        return self._match(tenant_id, fingerprint, threshold, points)

    async def _remote_query_vector(
        self, embedder: RemoteEmbedder, tenant_id: str, fingerprint: Fingerprint
    ) -> tuple[str, list[float]] | None:
        """The collection to search and the query vector, from a remote embedder's row of the
        question (an HTTP call, then ~30 µs of NumPy on the event loop); None when there is
        nothing to search."""
        try:
            rows = await embedder.embed([fingerprint.question])
        except EmbedderUnavailable:
            self.remote_unavailable += 1
            return None
        row = rows[0]
        # Known only now: a collection is named by the length of the provider's vectors.
        collection = collection_name(tenant_id, remote_embedder_id(embedder, len(row)))
        if (self._local and collection not in self._collections) or not row.any():
            return None
        return collection, point_vector(row, fingerprint.scope)

    def _match(
        self,
        tenant_id: str,
        fingerprint: Fingerprint,
        threshold: float,
        points: list[qm.ScoredPoint],
    ) -> SemanticMatch | None:
        question = fingerprint.question
        now = self._clock()
        features = None
        for point in points:
            payload = point.payload or {}
            if (
                payload.get("tenant") != tenant_id
                or payload.get("scope") != fingerprint.scope
                or not isinstance(payload.get("expires_at"), int | float)
                or payload["expires_at"] <= now
            ):
                continue
            cached = payload.get("question")
            exact = payload.get("answer")
            if not isinstance(cached, str) or not isinstance(exact, str):
                continue
            similarity = min(question_similarity(point.score), 1.0)
            features = features or question_features(question)
            if compare_questions(cached, features, similarity, threshold).hit:
                return SemanticMatch(exact, similarity, cached)
        return None

    # --- writes ----------------------------------------------------------------------------

    def add(
        self,
        tenant_id: str,
        fingerprint: Fingerprint,
        expires_at: float,
        *,
        embedder: RemoteEmbedder | None = None,
    ) -> bool:
        """Queues the entry's question for indexing, to be embedded by `embedder` (None: the
        index's own); False when it is not (not ready, no question to compare, or the queue is
        full)."""
        question = fingerprint.question
        if self._embedder is None or not question or len(question) > MAX_QUESTION_CHARS:
            return False
        try:
            self._queue.put_nowait(_Entry(tenant_id, fingerprint, expires_at, embedder))
        except asyncio.QueueFull:
            self.writes_dropped += 1
            return False
        return True

    async def flush(self) -> None:
        """Waits until every queued entry is written (or failed)."""
        await self._queue.join()

    async def _write_queued(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < WRITE_BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self._write(batch)
            except Exception:
                self.write_errors += 1
                log.exception("writing %d answers to the semantic cache failed", len(batch))
            finally:
                for _ in batch:
                    self._queue.task_done()

    async def _write(self, batch: list[_Entry]) -> None:
        # One call per embedder, made together: a slow provider delays only its own entries
        # (and the batch behind them).
        groups: dict[str, list[_Entry]] = {}
        for entry in batch:
            groups.setdefault(entry.embedder.id if entry.embedder else "", []).append(entry)
        embedded = await asyncio.gather(
            *(self._embed(entries) for entries in groups.values()), return_exceptions=True
        )
        by_collection: dict[str, list[qm.PointStruct]] = {}
        # Each collection's vector size, from the vectors themselves: a provider's are known
        # from its answer.
        sizes: dict[str, int] = {}
        for entries, result in zip(groups.values(), embedded, strict=True):
            if isinstance(result, EmbedderUnavailable):
                self.writes_dropped += len(entries)
                continue
            if isinstance(result, BaseException):
                self.write_errors += 1
                log.warning(
                    "embedding %d answers for the semantic cache failed: %r", len(entries), result
                )
                continue
            embedder_id, rows = result
            for entry, row in zip(entries, rows, strict=True):
                if not row.any():
                    continue  # no known word: nothing to compare by
                fingerprint = entry.fingerprint
                collection = collection_name(entry.tenant, embedder_id)
                sizes[collection] = len(row) + SCOPE_DIM
                by_collection.setdefault(collection, []).append(
                    _models().PointStruct(
                        id=point_id(fingerprint.exact),
                        vector=point_vector(row, fingerprint.scope),
                        payload={
                            "tenant": entry.tenant,
                            "scope": fingerprint.scope,
                            "question": fingerprint.question,
                            "answer": fingerprint.exact,
                            "expires_at": entry.expires_at,
                        },
                    )
                )
        for collection, points in by_collection.items():
            if collection not in self._collections:
                await self._vectors.create(collection, sizes[collection])
                self._collections.add(collection)
            await self._vectors.upsert(collection, points)
            self.points_written += len(points)

    async def _embed(self, entries: list[_Entry]) -> tuple[str, Embeddings]:
        """The entries' questions embedded by their embedder, and the embedder id of the rows."""
        questions = [entry.fingerprint.question for entry in entries]
        remote = entries[0].embedder
        if remote is not None:
            rows = await remote.embed(questions)
            return remote_embedder_id(remote, rows.shape[1]), rows
        embedder = self._embedder
        assert embedder is not None
        loop = asyncio.get_running_loop()
        rows = await loop.run_in_executor(self._worker, embedder.embed, questions)
        return self._embedder_id, rows

    # --- expiry and purge ------------------------------------------------------------------

    async def sweep(self) -> None:
        """Deletes the points whose entries expired, in every collection of this index."""
        collections = self._collections if self._local else await self._vectors.collections()
        now = self._clock()
        # Every embedder's: local and provider embeddings alike.
        for collection in sorted(collections):
            if collection.startswith(COLLECTION_PREFIX):
                await self._vectors.delete_expired(collection, now)
        self.sweeps += 1

    async def _sweep_periodically(self) -> None:
        while True:
            await asyncio.sleep(self._sweep_interval_s)
            try:
                await self.sweep()
            except Exception:
                log.exception("sweeping expired semantic cache entries failed")

    async def drop_tenant(self, tenant_id: str) -> None:
        """Deletes every question of a tenant, whatever embedded it (its answers in Redis are
        the caller's)."""
        collections = self._collections if self._local else await self._vectors.collections()
        suffix = "-" + _tenant_digest(tenant_id)
        for collection in sorted(collections):
            if collection.startswith(COLLECTION_PREFIX) and collection.endswith(suffix):
                await self._vectors.drop(collection)
                self._collections.discard(collection)

    async def close(self) -> None:
        """Stops the background tasks (queued writes are dropped) and closes Qdrant."""
        tasks = [*self._tasks, *([self._loading] if self._loading is not None else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks = []
        self._embedder = None
        try:
            await self._vectors.close()
        finally:
            self._worker.shutdown(wait=False)


def _query_vector(embedder: Embedder, question: str, scope: str) -> list[float] | None:
    """Runs in the worker thread: the query vector of a question in its scope (None when the
    question has no known word)."""
    row = embedder.embed([question])[0]
    if not row.any():
        return None
    return point_vector(row, scope)
