"""Questions embedded by a provider's embeddings API, for the answer cache's semantic tier when a
route's CachePolicy says `embeddings: PROVIDER`.

**Which provider.** The policy names a model alias of the tenant (`embedding_model`). It is
resolved as a chat request for it would be, through the tenant's own model routes
(`CompiledPolicy.resolve_model`), and must reach an OPENAI or AZURE_OPENAI provider, the kinds
with an embeddings API. An unknown alias or another kind: the route has no semantic tier (its
exact tier still answers), logged once per compiled policy. An alias's fallbacks are not tried:
another model's vectors would land in collections of their own, never compared with these.

**The request** is the provider's own `POST …/embeddings` (OpenAI's, or Azure's deployment
path), built by `extproc.providers.provider_request`: its path and headers, the provider's
credential included — never the client's, which never reaches this module. The data plane
sends it itself, over the one aiohttp session it shares, verifying HTTPS providers against the
CA bundle Envoy's provider clusters trust (`GATEZ_UPSTREAM_CA_BUNDLE`, `upstream_ssl_context`).
Rows come back normalised to unit length (cosine = dot product, as the index compares them).

**Failures.** A request is bounded by `timeout_s` (2 s by default, far above the local
embedder's milliseconds); an error status, a timeout or a body that is not embeddings raises
`EmbeddingFailed`, which the caller counts as a miss. After a failure, that provider's model is
not asked again for `retry_after_s`: calls in between raise `EmbedderUnavailable` at once, so
a provider that hangs costs one request its timeout, not every request. At most
`max_in_flight` requests are under way at once (beyond: `EmbedderUnavailable`).

The embeddings calls are not charged to the tenant's budget nor written to the AI log.
"""

from __future__ import annotations

import hashlib
import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import aiohttp
import numpy as np
import orjson

from extproc.providers import EMBEDDINGS, provider_request
from gatez.embeddings import Embeddings
from gatez.policy import UPSTREAM_CLUSTER_TLS, CompiledPolicy, ModelTarget, ProviderKind
from gatez.semantic_cache import EmbedderUnavailable

log = logging.getLogger("gatez.cache")

DEFAULT_TIMEOUT_S: Final = 2.0
DEFAULT_RETRY_AFTER_S: Final = 5.0
DEFAULT_MAX_IN_FLIGHT: Final = 64
# A batch of 16 questions at 3,072 dimensions is ~1 MB of JSON; far more is not an answer.
MAX_RESPONSE_BYTES: Final = 8 * 1024 * 1024
# Of an error body, what goes to the log.
ERROR_EXCERPT_CHARS: Final = 200
_EMBEDDING_KINDS: Final = frozenset({ProviderKind.OPENAI, ProviderKind.AZURE_OPENAI})


class EmbeddingFailed(Exception):
    """The provider was asked and gave no embeddings (error status, timeout, unreadable body)."""


def upstream_ssl_context(ca_bundle: str) -> ssl.SSLContext:
    """The TLS client context for providers: certificates checked against `ca_bundle` (the data
    plane's `upstream_ca_bundle`, what Envoy's provider clusters trust); the system's CAs when
    that file does not exist (logged: a data plane starts without its cache's provider
    embeddings being able to reach a private CA's providers). Reads the file: build it once,
    at start."""
    if not Path(ca_bundle).is_file():
        log.warning(
            "upstream CA bundle %s not found: provider embeddings check certificates against "
            "the system's CAs",
            ca_bundle,
        )
        return ssl.create_default_context()
    return ssl.create_default_context(cafile=ca_bundle)


@dataclass(frozen=True, slots=True)
class ProviderEmbedder:
    """One provider model that embeds questions (a `gatez.semantic_cache.RemoteEmbedder`).
    Made by `ProviderEmbeddings.embedder`; `id` names the provider and the model."""

    id: str
    target: ModelTarget
    # scheme://authority, which the request's path is joined to.
    origin: str
    client: ProviderEmbeddings = field(repr=False, compare=False)

    async def embed(self, texts: list[str]) -> Embeddings:
        """The texts' embeddings, one unit-length row each (EmbeddingFailed,
        EmbedderUnavailable)."""
        return await self.client.embed(self, texts)


def embedder_id(target: ModelTarget) -> str:
    """Names a provider model in collection names: its kind and a digest of the provider's
    name and the upstream model (names may hold what a collection name may not)."""
    provider = target.provider
    digest = hashlib.sha256(f"{provider.name}\0{target.upstream_model}".encode()).hexdigest()
    return f"{provider.kind.value}-{digest[:16]}"


class ProviderEmbeddings:
    """Resolves a route's embedding alias to a `ProviderEmbedder` and sends its requests (see
    the module doc). `session`: the data plane's shared aiohttp session (the caller closes
    it); `ssl_context`: for HTTPS providers (None: the system's CAs)."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        ssl_context: ssl.SSLContext | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        retry_after_s: float = DEFAULT_RETRY_AFTER_S,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._session = session
        self._ssl: ssl.SSLContext | bool = ssl_context if ssl_context is not None else True
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._timeout_s = timeout_s
        self._retry_after_s = retry_after_s
        self._max_in_flight = max_in_flight
        self._clock = clock
        # The policy the resolutions below were made under; a new one starts afresh.
        self._policy: CompiledPolicy | None = None
        self._resolved: dict[tuple[str, str], ProviderEmbedder | None] = {}
        # Embedder id → until when it is not asked (after a failure).
        self._resting_until: dict[str, float] = {}
        self._in_flight = 0
        # Counters for a metrics collector.
        self.requests = 0
        self.failures = 0
        self.unresolved = 0

    def embedder(
        self, policy: CompiledPolicy, tenant_id: str, alias: str
    ) -> ProviderEmbedder | None:
        """The embedder of the tenant's model alias `alias`, or None (logged once per policy)
        when the alias is unknown or routed to a provider without an embeddings API."""
        if policy is not self._policy:
            self._policy = policy
            self._resolved = {}
        key = (tenant_id, alias)
        try:
            return self._resolved[key]
        except KeyError:
            pass
        embedder = self._resolve(policy, tenant_id, alias)
        self._resolved[key] = embedder
        return embedder

    def _resolve(
        self, policy: CompiledPolicy, tenant_id: str, alias: str
    ) -> ProviderEmbedder | None:
        target = policy.resolve_model(tenant_id, alias)
        if target is None:
            self.unresolved += 1
            log.warning(
                "answer cache: tenant %s embeds with model alias %r, which none of its model "
                "routes has: its provider-embedding routes use exact matches only (policy %d)",
                tenant_id,
                alias,
                policy.version,
            )
            return None
        provider = target.provider
        if provider.kind not in _EMBEDDING_KINDS:
            self.unresolved += 1
            log.warning(
                "answer cache: tenant %s embeds with model alias %r, routed to provider %s "
                "(%s), which has no embeddings API: its provider-embedding routes use exact "
                "matches only (policy %d)",
                tenant_id,
                alias,
                provider.name,
                provider.kind.name,
                policy.version,
            )
            return None
        scheme = "https" if provider.cluster == UPSTREAM_CLUSTER_TLS else "http"
        return ProviderEmbedder(
            embedder_id(target), target, f"{scheme}://{provider.authority}", client=self
        )

    async def embed(self, embedder: ProviderEmbedder, texts: list[str]) -> Embeddings:
        """Asks `embedder`'s provider for the texts' embeddings (see the module doc)."""
        if self._clock() < self._resting_until.get(embedder.id, 0.0):
            raise EmbedderUnavailable(f"{embedder.id} failed a moment ago")
        if self._in_flight >= self._max_in_flight:
            raise EmbedderUnavailable("too many embeddings requests under way")
        self._in_flight += 1
        self.requests += 1
        try:
            rows = await self._request(embedder, texts)
        except EmbeddingFailed:
            self._failed(embedder)
            raise
        finally:
            self._in_flight -= 1
        self._resting_until.pop(embedder.id, None)
        return rows

    def _failed(self, embedder: ProviderEmbedder) -> None:
        self.failures += 1
        self._resting_until[embedder.id] = self._clock() + self._retry_after_s

    async def _request(self, embedder: ProviderEmbedder, texts: list[str]) -> Embeddings:
        target = embedder.target
        body = orjson.dumps({"model": target.upstream_model, "input": texts})
        request = provider_request(
            target.provider,
            model=target.upstream_model,
            stream=False,
            body=body,
            operation=EMBEDDINGS,
        )
        what = f"embeddings from {target.provider.name} ({target.upstream_model})"
        try:
            async with self._session.post(
                embedder.origin + request.path,
                data=body,
                headers=request.headers,
                ssl=self._ssl,
                timeout=self._timeout,
                allow_redirects=False,
            ) as response:
                raw = await _read(response)
                status = response.status
        except TimeoutError:
            raise EmbeddingFailed(f"{what}: no answer within {self._timeout_s:g} s") from None
        except aiohttp.ClientError as error:
            raise EmbeddingFailed(f"{what}: {error!r}") from None
        if status != 200:
            excerpt = raw[:ERROR_EXCERPT_CHARS].decode(errors="replace")
            raise EmbeddingFailed(f"{what}: HTTP {status}: {excerpt}")
        return _rows(raw, len(texts), what)


async def _read(response: aiohttp.ClientResponse) -> bytes:
    body = bytearray()
    async for chunk in response.content.iter_chunked(64 * 1024):
        body += chunk
        if len(body) > MAX_RESPONSE_BYTES:
            raise EmbeddingFailed(f"an embeddings answer of more than {MAX_RESPONSE_BYTES} bytes")
    return bytes(body)


def _rows(raw: bytes, count: int, what: str) -> Embeddings:
    """The rows of an embeddings `list` object, in input order, at unit length."""
    try:
        answer: Any = orjson.loads(raw)
        data = sorted(answer["data"], key=lambda item: item["index"])
        rows = np.asarray([item["embedding"] for item in data], dtype=np.float32)
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise EmbeddingFailed(f"{what}: not an embeddings answer ({error!r})") from None
    if rows.ndim != 2 or rows.shape[0] != count or rows.shape[1] == 0:
        raise EmbeddingFailed(f"{what}: {rows.shape} vectors for {count} inputs")
    if not np.isfinite(rows).all():
        raise EmbeddingFailed(f"{what}: vectors that are not finite")
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    np.divide(rows, norms, out=rows, where=norms > 0)
    return rows
