"""`python -m bench.answer_cache`: what an answer-cache lookup costs, per tier.

- exact: the stage's whole lookup of a hit — request fingerprint, one Redis round trip (a
  private redis-server over its Unix socket), the answer decoded and encoded in the client's
  schema — timed from `on_request_body` to its verdict, one lookup at a time.
- semantic: the stage's lookup of a paraphrase answered by a similar question — the exact miss,
  the question embedded (wordllama), the nearest points in local Qdrant, the guards, the
  entry read from Redis, the answer encoded — with N other points in the tenant's collection,
  and with the same N spread over ten tenants.
- the layout not taken: one collection for every tenant, a payload filter on tenant and scope
  (local mode evaluates it in Python, point by point).
- a local upsert, per point.

    python -m bench.answer_cache [--points 1000 10000] [--lookups 300]
"""

from __future__ import annotations

import argparse
import hashlib
import random
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import orjson
import uvloop
from qdrant_client import QdrantClient
from qdrant_client import models as qm

from extproc.redis_pipe import PipelinedRedis
from extproc.stages.cache import AnswerCache
from extproc.stages.model_route import ModelRouting
from gatez.answer_cache import Fingerprint
from gatez.embeddings import WordLlamaEmbedder
from gatez.pipeline import CONTINUE, Flow, Principal, Respond
from gatez.policy import CompiledPolicy, compile_policy
from gatez.semantic_cache import SemanticIndex, point_vector
from gatez.translate.model import ChatResponse, StopReason, Text, Usage
from gatez.v1 import policy_pb2
from tests.support.flows import make_flow, run_stage
from tests.support.redis import RedisServer

QUESTION = "How do I reset my password on the Zendesk portal?"
PARAPHRASE = "How can I reset the password for the Zendesk portal?"
VERBS = [
    "reset",
    "change",
    "export",
    "import",
    "delete",
    "rename",
    "share",
    "archive",
    "restore",
    "sync",
    "configure",
]
NOUNS = [
    "password",
    "invoice",
    "report",
    "account",
    "profile",
    "workspace",
    "calendar",
    "backup",
    "token",
    "webhook",
]
PLACES = [
    "portal",
    "dashboard",
    "app",
    "console",
    "settings",
    "page",
    "admin",
    "panel",
    "mobile",
    "client",
    "API",
]


def policy() -> CompiledPolicy:
    return compile_policy(
        policy_pb2.PolicySnapshot(
            version=1,
            tenants=[policy_pb2.Tenant(id="acme")],
            providers=[
                policy_pb2.Provider(
                    name="openai",
                    kind=policy_pb2.PROVIDER_KIND_OPENAI,
                    base_url="https://api.openai.com/v1",
                )
            ],
            model_routes=[
                policy_pb2.ModelRoute(alias="fast", provider="openai", upstream_model="gpt-4o-mini")
            ],
            cache_policies=[policy_pb2.CachePolicy(tenant_id="acme", enabled=True)],
        )
    )


def routed_flow(
    compiled: CompiledPolicy, question: str, headers: dict[str, str] | None = None
) -> Flow:
    body = {
        "model": "fast",
        "messages": [
            {"role": "system", "content": "You are the help desk of Acme."},
            {"role": "user", "content": question},
        ],
    }
    flow = make_flow(compiled, headers=headers, body=orjson.dumps(body))
    flow.principal = Principal("acme", "key-acme", "bench")
    routing = ModelRouting()
    routing.on_request_headers(flow)
    routing.on_request_body(flow)
    flow.take_pending()
    return flow


def other_questions(count: int, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    return [
        f"How do I {rng.choice(VERBS)} the {rng.choice(NOUNS)} in the {rng.choice(PLACES)} "
        f"of team {rng.choice(NOUNS)}-{n}?"
        for n in range(count)
    ]


def fake_fingerprint(question: str, scope: str) -> Fingerprint:
    scope_digest = hashlib.sha256(scope.encode()).hexdigest()
    exact = hashlib.sha256(f"{scope}\0{question}".encode()).hexdigest()
    return Fingerprint(exact=exact, scope=scope_digest, question=question)


async def timed(
    lookups: int, make: Callable[[], Flow], run: Callable[[Flow], Awaitable[object]]
) -> list[float]:
    """Milliseconds per call, flows built outside the timing."""
    samples = []
    for _ in range(lookups):
        flow = make()
        began = time.perf_counter()
        await run(flow)
        samples.append((time.perf_counter() - began) * 1e3)
    return samples


def summary(name: str, samples: list[float]) -> None:
    ordered = sorted(samples)
    p50 = statistics.median(ordered)
    p90 = ordered[int(len(ordered) * 0.9)]
    print(f"{name:<58} p50 {p50:7.3f} ms   p90 {p90:7.3f} ms   n={len(ordered)}")


async def lookup(stage: AnswerCache, flow: Flow, kind: str) -> None:
    verdict = await run_stage(stage.on_request_body, flow)
    assert isinstance(verdict, Respond), verdict
    assert flow.llm is not None and flow.llm.cache_hit == kind, flow.llm


async def semantic_lookup(stage: AnswerCache, flow: Flow) -> None:
    await lookup(stage, flow, "semantic")


async def fill_entry(stage: AnswerCache, compiled: CompiledPolicy) -> None:
    """The answer to QUESTION, written as the stage writes it after a provider's answer (its
    lookup skipped: another stage on the same Redis may have written it)."""
    flow = routed_flow(compiled, QUESTION, {"cache-control": "no-cache"})
    assert stage.on_request_body(flow) is CONTINUE
    assert flow.llm is not None
    flow.llm.response = ChatResponse(
        "chatcmpl-1",
        "gpt-4o-mini-2024-07-18",
        (Text("Open Settings, choose Security, then click Reset password."),),
        StopReason.END_TURN,
        Usage(31, 12),
    )
    flow.upstream_reached, flow.response_status = True, 200
    stage.on_done(flow)
    await stage.flush()


async def bench_stage(
    redis_url: str, points: list[int], lookups: int, embedder: WordLlamaEmbedder
) -> None:
    compiled = policy()
    redis = PipelinedRedis.from_url(redis_url)
    exact_stage = AnswerCache(redis, None)
    await fill_entry(exact_stage, compiled)
    for _ in range(50):  # warm up (script loading, connection)
        await lookup(exact_stage, routed_flow(compiled, QUESTION), "exact")
    samples = await timed(
        lookups,
        lambda: routed_flow(compiled, QUESTION),
        lambda flow: lookup(exact_stage, flow, "exact"),
    )
    summary("exact hit, stage lookup (Redis over a Unix socket)", samples)

    for count in points:
        for tenants in (1, 10):
            with tempfile.TemporaryDirectory() as directory:
                index = SemanticIndex.local(
                    Path(directory) / "qdrant", load_embedder=lambda: embedder, queue_size=1 << 16
                )
                index.start()
                assert await index.wait_ready()
                stage = AnswerCache(redis, index)
                began = time.perf_counter()
                questions = other_questions(count)
                expires_at = time.time() + 3600
                for n, question in enumerate(questions):
                    # Other scopes of the tenant (other conversations), or other tenants.
                    tenant = "acme" if tenants == 1 else f"tenant-{n % tenants}"
                    if tenant == "tenant-0":
                        tenant = "acme"
                    index.add(tenant, fake_fingerprint(question, f"scope-{n % 50}"), expires_at)
                await index.flush()
                per_point = (time.perf_counter() - began) / count * 1e3
                await fill_entry(stage, compiled)
                for _ in range(20):
                    await lookup(stage, routed_flow(compiled, PARAPHRASE), "semantic")
                samples = await timed(
                    lookups,
                    lambda: routed_flow(compiled, PARAPHRASE),
                    partial(semantic_lookup, stage),
                )
                acme = count // tenants + 1
                summary(
                    f"semantic hit, stage lookup, {count} points / {tenants} tenant(s) "
                    f"({acme} acme)",
                    samples,
                )
                print(f"{'':<58} (indexing: {per_point:.2f} ms per point, embedding included)")
                await index.close()
    await redis.close()


def bench_filtered_layout(points: list[int], lookups: int, embedder: WordLlamaEmbedder) -> None:
    """The layout not taken: every tenant in one collection, filtered on tenant and scope."""
    for count in points:
        with tempfile.TemporaryDirectory() as directory:
            client = QdrantClient(path=directory)
            dim = embedder.embed(["x"]).shape[1] + 64
            client.create_collection(
                "answers", vectors_config=qm.VectorParams(size=dim, distance=qm.Distance.DOT)
            )
            questions = other_questions(count)
            rows = embedder.embed(questions)
            client.upsert(
                "answers",
                points=[
                    qm.PointStruct(
                        id=str(uuid.uuid4()),
                        vector=point_vector(row, hashlib.sha256(b"%d" % (n % 50)).hexdigest()),
                        payload={"tenant": f"tenant-{n % 10}", "scope": f"s{n % 50}"},
                    )
                    for n, (row, question) in enumerate(zip(rows, questions, strict=True))
                ],
            )
            query = point_vector(embedder.embed([PARAPHRASE])[0], "0" * 64)
            scoped = qm.Filter(
                must=[
                    qm.FieldCondition(key="tenant", match=qm.MatchValue(value="tenant-3")),
                    qm.FieldCondition(key="scope", match=qm.MatchValue(value="s3")),
                ]
            )
            samples = []
            for _ in range(max(lookups // 10, 10)):
                began = time.perf_counter()
                client.query_points("answers", query=query, query_filter=scoped, limit=4)
                samples.append((time.perf_counter() - began) * 1e3)
            summary(f"one collection, tenant+scope filter, {count} points (query)", samples)
            client.close()


async def main(points: list[int], lookups: int) -> None:
    embedder = WordLlamaEmbedder.load()
    with tempfile.TemporaryDirectory() as directory, RedisServer(Path(directory)) as server:
        await bench_stage(server.unix_url, points, lookups, embedder)
    bench_filtered_layout(points, lookups, embedder)


def parse(argv: list[str] | None = None) -> Any:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--lookups", type=int, default=300)
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse()
    uvloop.run(main(arguments.points, arguments.lookups))
