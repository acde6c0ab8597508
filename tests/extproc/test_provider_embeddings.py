"""ProviderEmbeddings against the fake OpenAI upstream (plain HTTP and HTTPS): which aliases embed,
what the provider receives, the rows it gives back, and how failures are bounded."""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from aiohttp import web

from extproc.provider_embeddings import (
    EmbeddingFailed,
    ProviderEmbedder,
    ProviderEmbeddings,
    embedder_id,
    upstream_ssl_context,
)
from gatez.policy import CompiledPolicy, compile_policy
from gatez.semantic_cache import EmbedderUnavailable
from gatez.v1 import policy_pb2
from tests.fakes.openai_upstream import EMBEDDINGS_PATH, UpstreamServer, embedding_vector
from tests.fakes.serving import bound_socket
from tests.support.tls import LocalCertificateAuthority

PROVIDER_KEY = "sk-provider-embeddings-0123456789"
EMBEDDING_MODEL = "text-embedding-3-small"
QUESTIONS = ["How do I reset my password?", "What are your opening hours?"]


class Clock:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def build_policy(openai_url: str, *, version: int = 1, key: str = PROVIDER_KEY) -> CompiledPolicy:
    """Tenant acme: `embed` and `embed-large` on an OpenAI provider at `openai_url`, `azure-embed`
    on an Azure deployment there, `claude` on Anthropic, and `shared-embed` for every tenant."""
    provider = policy_pb2.Provider
    route = policy_pb2.ModelRoute
    return compile_policy(
        policy_pb2.PolicySnapshot(
            version=version,
            tenants=[policy_pb2.Tenant(id="acme")],
            providers=[
                provider(name="openai", kind=policy_pb2.PROVIDER_KIND_OPENAI, base_url=openai_url),
                provider(
                    name="azure",
                    kind=policy_pb2.PROVIDER_KIND_AZURE_OPENAI,
                    base_url=openai_url.removesuffix("/v1"),
                    azure_api_version="2024-10-21",
                ),
                provider(
                    name="anthropic",
                    kind=policy_pb2.PROVIDER_KIND_ANTHROPIC,
                    base_url="https://api.anthropic.com",
                ),
            ],
            provider_credentials=[
                policy_pb2.ProviderCredential(provider="openai", api_key=key),
                policy_pb2.ProviderCredential(provider="azure", api_key="azure-key"),
            ],
            model_routes=[
                route(
                    alias="embed",
                    provider="openai",
                    upstream_model=EMBEDDING_MODEL,
                    tenant_id="acme",
                ),
                route(
                    alias="embed-large",
                    provider="openai",
                    upstream_model="text-embedding-3-large",
                    tenant_id="acme",
                ),
                route(alias="shared-embed", provider="openai", upstream_model=EMBEDDING_MODEL),
                route(
                    alias="azure-embed",
                    provider="azure",
                    upstream_model="embeddings-deployment",
                    tenant_id="acme",
                ),
                route(
                    alias="claude",
                    provider="anthropic",
                    upstream_model="claude-sonnet-4-5",
                    tenant_id="acme",
                ),
            ],
        )
    )


@pytest.fixture(scope="module")
def upstream() -> Iterator[UpstreamServer]:
    with UpstreamServer(api_key=PROVIDER_KEY) as server:
        yield server


@pytest.fixture
def fake(upstream: UpstreamServer) -> UpstreamServer:
    upstream.clear()
    return upstream


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def embeddings(session: aiohttp.ClientSession, clock: Clock) -> ProviderEmbeddings:
    return ProviderEmbeddings(session, timeout_s=0.3, clock=clock)


@pytest.fixture
def hung_port() -> Iterator[int]:
    """A port that accepts connections (the kernel does, from the backlog) but never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield listener.getsockname()[1]


def embedder_of(
    embeddings: ProviderEmbeddings, policy: CompiledPolicy, alias: str = "embed"
) -> ProviderEmbedder:
    embedder = embeddings.embedder(policy, "acme", alias)
    assert embedder is not None
    return embedder


def unit(vector: list[float]) -> np.ndarray[tuple[int], np.dtype[np.float32]]:
    row = np.asarray(vector, dtype=np.float32)
    normalised: np.ndarray[tuple[int], np.dtype[np.float32]] = row / np.linalg.norm(row)
    return normalised


# --- what is asked, and what comes back ------------------------------------------------------


async def test_the_provider_gets_the_upstream_model_and_its_own_credential(
    fake: UpstreamServer, embeddings: ProviderEmbeddings
) -> None:
    embedder = embedder_of(embeddings, build_policy(fake.base_url))

    rows = await embedder.embed(QUESTIONS)

    (request,) = fake.requests
    assert (request.method, request.path) == ("POST", EMBEDDINGS_PATH)
    assert request.json == {"model": EMBEDDING_MODEL, "input": QUESTIONS}
    assert request.header("authorization") == f"Bearer {PROVIDER_KEY}"
    assert request.header("content-type") == "application/json"
    # The fake's vectors (8 dimensions by default), in input order, at unit length.
    assert rows.dtype == np.float32 and rows.shape == (2, 8)
    for row, question in zip(rows, QUESTIONS, strict=True):
        np.testing.assert_allclose(row, unit(embedding_vector(question, 8)), rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(rows, axis=1), [1.0, 1.0], rtol=1e-6)
    assert (embeddings.requests, embeddings.failures) == (1, 0)


async def test_an_azure_alias_asks_its_deployment_with_the_api_key_header(
    fake: UpstreamServer, embeddings: ProviderEmbeddings
) -> None:
    embedder = embedder_of(embeddings, build_policy(fake.base_url), "azure-embed")

    # The fake serves OpenAI's paths only: the request is what counts here.
    with pytest.raises(EmbeddingFailed, match="HTTP 404"):
        await embedder.embed(QUESTIONS[:1])

    (request,) = fake.requests
    assert request.path == "/openai/deployments/embeddings-deployment/embeddings"
    assert request.query_string == "api-version=2024-10-21"
    assert request.header("api-key") == "azure-key"
    assert request.header("authorization") is None


def test_ids_name_the_provider_and_model(fake: UpstreamServer) -> None:
    policy = build_policy(fake.base_url)
    small = policy.resolve_model("acme", "embed")
    shared = policy.resolve_model("acme", "shared-embed")
    large = policy.resolve_model("acme", "embed-large")
    azure = policy.resolve_model("acme", "azure-embed")
    assert small is not None and shared is not None and large is not None and azure is not None

    # Two aliases of one provider model share vectors; another model or provider does not.
    assert embedder_id(small) == embedder_id(shared)
    assert len({embedder_id(small), embedder_id(large), embedder_id(azure)}) == 3
    assert embedder_id(small).startswith("openai-")
    assert embedder_id(azure).startswith("azure_openai-")


# --- aliases that do not embed ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("alias", "said"),
    [("no-such-alias", "none of its model routes has"), ("claude", "has no embeddings API")],
    ids=["unknown-alias", "anthropic-provider"],
)
async def test_an_alias_that_cannot_embed_gives_no_embedder_logged_once_per_policy(
    fake: UpstreamServer,
    embeddings: ProviderEmbeddings,
    caplog: pytest.LogCaptureFixture,
    alias: str,
    said: str,
) -> None:
    policy = build_policy(fake.base_url)
    with caplog.at_level(logging.WARNING, logger="gatez.cache"):
        for _ in range(3):
            assert embeddings.embedder(policy, "acme", alias) is None
        assert [r.getMessage() for r in caplog.records if said in r.getMessage()] != []
        assert len(caplog.records) == 1
        # A new policy is looked at afresh.
        assert embeddings.embedder(build_policy(fake.base_url, version=2), "acme", alias) is None
        assert len(caplog.records) == 2
    assert fake.requests == []


async def test_an_embedder_follows_the_policy_it_was_resolved_under(
    fake: UpstreamServer, embeddings: ProviderEmbeddings
) -> None:
    first = build_policy(fake.base_url)
    assert embeddings.embedder(first, "acme", "embed") is embeddings.embedder(
        first, "acme", "embed"
    )
    # A tenant-less alias is every tenant's; a tenant's own is not another's.
    assert embeddings.embedder(first, "globex", "shared-embed") is not None
    assert embeddings.embedder(first, "globex", "embed") is None
    moved = build_policy("http://127.0.0.1:9/v1", version=2)
    embedder = embedder_of(embeddings, moved)
    assert embedder.origin == "http://127.0.0.1:9"


# --- failures --------------------------------------------------------------------------------


async def test_an_error_fails_and_the_provider_rests_before_it_is_asked_again(
    fake: UpstreamServer, embeddings: ProviderEmbeddings, clock: Clock
) -> None:
    embedder = embedder_of(embeddings, build_policy(fake.base_url))
    fake.queue_error(500, path=EMBEDDINGS_PATH)

    with pytest.raises(EmbeddingFailed, match="HTTP 500"):
        await embedder.embed(QUESTIONS)
    # Resting: not asked at all.
    clock.now += 4.9
    with pytest.raises(EmbedderUnavailable):
        await embedder.embed(QUESTIONS)
    assert len(fake.requests) == 1
    # Rested: asked again, and it answers.
    clock.now += 0.2
    rows = await embedder.embed(QUESTIONS)
    assert rows.shape == (2, 8)
    assert len(fake.requests) == 2
    assert (embeddings.requests, embeddings.failures) == (2, 1)


async def test_a_provider_that_does_not_answer_costs_the_timeout_once(
    fake: UpstreamServer, embeddings: ProviderEmbeddings, hung_port: int
) -> None:
    embedder = embedder_of(embeddings, build_policy(f"http://127.0.0.1:{hung_port}/v1"))
    loop = asyncio.get_running_loop()

    began = loop.time()
    with pytest.raises(EmbeddingFailed, match=r"no answer within 0\.3 s"):
        await embedder.embed(QUESTIONS)
    assert 0.25 <= loop.time() - began < 1.0

    began = loop.time()
    with pytest.raises(EmbedderUnavailable):
        await embedder.embed(QUESTIONS)
    assert loop.time() - began < 0.05


async def test_a_credential_the_provider_refuses_fails(
    fake: UpstreamServer, embeddings: ProviderEmbeddings
) -> None:
    embedder = embedder_of(embeddings, build_policy(fake.base_url, key="sk-revoked"))
    with pytest.raises(EmbeddingFailed, match="HTTP 401"):
        await embedder.embed(QUESTIONS)


@pytest.fixture
async def serve_once() -> AsyncIterator[Callable[[bytes], Awaitable[str]]]:
    """Serves a fixed 200 body at /v1/embeddings; gives the base URL."""
    runners: list[web.AppRunner] = []

    async def start(body: bytes) -> str:
        async def answer(_: web.Request) -> web.Response:
            return web.Response(body=body, content_type="application/json")

        app = web.Application()
        app.router.add_post(EMBEDDINGS_PATH, answer)
        runner = web.AppRunner(app)
        await runner.setup()
        runners.append(runner)
        sock = bound_socket("127.0.0.1", 0)
        await web.SockSite(runner, sock).start()
        return f"http://127.0.0.1:{sock.getsockname()[1]}/v1"

    yield start
    for runner in runners:
        await runner.cleanup()


@pytest.mark.parametrize(
    ("body", "said"),
    [
        (b'{"object": "list", "data": []}', r"\(0,\) vectors for 2 inputs"),
        (b'{"object": "list", "data": [{"index": 0, "embedding": [1, 0]}]}', "for 2 inputs"),
        (b"<html>busy</html>", "not an embeddings answer"),
        (b'{"data": [{"index": 0, "embedding": "AAAA"}, {"index": 1}]}', "not an embeddings"),
    ],
    ids=["no-vectors", "too-few", "not-json", "not-vectors"],
)
async def test_answers_that_are_not_embeddings_fail(
    embeddings: ProviderEmbeddings,
    serve_once: Callable[[bytes], Awaitable[str]],
    body: bytes,
    said: str,
) -> None:
    embedder = embedder_of(embeddings, build_policy(await serve_once(body)))
    with pytest.raises(EmbeddingFailed, match=said):
        await embedder.embed(QUESTIONS)


async def test_calls_beyond_the_bound_are_not_made(
    session: aiohttp.ClientSession, hung_port: int
) -> None:
    embeddings = ProviderEmbeddings(session, timeout_s=5.0, max_in_flight=1)
    embedder = embedder_of(embeddings, build_policy(f"http://127.0.0.1:{hung_port}/v1"))
    pending = asyncio.create_task(embedder.embed(QUESTIONS))
    await asyncio.sleep(0.05)
    try:
        with pytest.raises(EmbedderUnavailable, match="too many"):
            await embedder.embed(QUESTIONS)
    finally:
        pending.cancel()
        await asyncio.gather(pending, return_exceptions=True)


# --- HTTPS -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[UpstreamServer, Path]]:
    """The fake over HTTPS with a certificate of a test CA, and a CA bundle trusting it."""
    authority = LocalCertificateAuthority(Path(tmp_path_factory.mktemp("provider-ca")))
    files = authority.issue("provider", ip_addresses=["127.0.0.1"])
    with UpstreamServer(
        api_key=PROVIDER_KEY, certfile=files.cert_file, keyfile=files.key_file
    ) as server:
        yield server, authority.bundle()


async def test_https_providers_are_checked_against_the_upstream_ca_bundle(
    tls_upstream: tuple[UpstreamServer, Path], session: aiohttp.ClientSession
) -> None:
    server, bundle = tls_upstream
    server.clear()
    policy = build_policy(server.base_url)
    assert server.base_url.startswith("https://")

    trusting = ProviderEmbeddings(session, ssl_context=upstream_ssl_context(str(bundle)))
    rows = await embedder_of(trusting, policy).embed(QUESTIONS)
    assert rows.shape == (2, 8)

    # The system's CAs alone do not know the test CA: refused, never sent in clear.
    system = ProviderEmbeddings(session)
    with pytest.raises(EmbeddingFailed, match=r"[Cc]ertificate"):
        await embedder_of(system, policy).embed(QUESTIONS)
    assert len(server.requests) == 1


def test_a_missing_ca_bundle_leaves_the_systems_cas(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="gatez.cache"):
        context = upstream_ssl_context(str(tmp_path / "no-such-bundle.pem"))
    assert context.verify_mode is ssl.CERT_REQUIRED and context.check_hostname
    assert "not found" in caplog.text
