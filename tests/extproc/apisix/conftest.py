"""Fixtures for the APISIX adapter: the runner in-process on a Unix socket with the real pipeline
(real Redis, chDB log store, the fake OpenAI upstream as provider), a probe route whose stage
answers what a test scripts, and APISIX's two sides of a runner connection
(`tests.support.apisix`: ext-plugin's and the Gatez plugin's)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis

from extproc.apisix.runner import ExtPluginRunner
from extproc.jwks import JwksCache
from extproc.logsink import ClickHouseLogWriter, LogSink
from extproc.redis_pipe import PipelinedRedis
from extproc.server import build_dispatcher
from gatez import keys
from gatez.logrows import AiLogRow, RequestLogRow
from gatez.logstore import LogStore
from gatez.pipeline import CONTINUE, Dispatcher, Flow, Pipeline, Stage, Verdict
from gatez.policy import CompiledPolicy, compile_policy
from gatez.v1 import policy_pb2
from tests.fakes.openai_upstream import UpstreamServer
from tests.support.apisix import PluginConnection, RunnerConnection
from tests.support.redis import RedisServer

API_KEY = "gz-apisix-test-key-0000000000000"
PROVIDER_KEY = "sk-provider-secret-apisix"
PROVIDER = "openai"
# A provider behind TLS, never called: its UPSTREAM_REQUEST target is what tests look at.
SECURE_PROVIDER = "secure"
SECURE_PROVIDER_KEY = "sk-provider-secret-secure"
SECURE_BASE_URL = "https://llm.example.test:8443/openai/v1"


def policy(base_url: str) -> CompiledPolicy:
    return compile_policy(
        policy_pb2.PolicySnapshot(
            version=1,
            tenants=[policy_pb2.Tenant(id="acme")],
            api_keys=[
                policy_pb2.ApiKey(id="key-1", tenant_id="acme", secret_sha256=keys.digest(API_KEY))
            ],
            providers=[
                policy_pb2.Provider(
                    name=PROVIDER, kind=policy_pb2.PROVIDER_KIND_OPENAI, base_url=base_url
                ),
                policy_pb2.Provider(
                    name=SECURE_PROVIDER,
                    kind=policy_pb2.PROVIDER_KIND_OPENAI,
                    base_url=SECURE_BASE_URL,
                ),
            ],
            provider_credentials=[
                policy_pb2.ProviderCredential(provider=PROVIDER, api_key=PROVIDER_KEY),
                policy_pb2.ProviderCredential(
                    provider=SECURE_PROVIDER, api_key=SECURE_PROVIDER_KEY
                ),
            ],
            model_routes=[
                policy_pb2.ModelRoute(
                    alias="fast", provider=PROVIDER, upstream_model="gpt-4o-mini"
                ),
                policy_pb2.ModelRoute(
                    alias="secure", provider=SECURE_PROVIDER, upstream_model="gpt-4o"
                ),
            ],
        )
    )


@dataclass(eq=False)
class ProbeRequest(Stage):
    """A stage that records the Flows it sees and runs what the test scripted for each request
    phase (a pipeline with it alone does not ask for the response)."""

    flows: list[Flow] = field(default_factory=list)
    headers_verdict: Callable[[Flow], Verdict] = lambda flow: CONTINUE
    body_verdict: Callable[[Flow], Verdict] = lambda flow: CONTINUE
    response_verdict: Callable[[Flow], Verdict] = lambda flow: CONTINUE
    response_body_verdict: Callable[[Flow], Verdict] = lambda flow: CONTINUE
    done: list[Flow] = field(default_factory=list)

    async def on_request_headers(self, flow: Flow) -> Verdict:
        self.flows.append(flow)
        return self.headers_verdict(flow)

    async def on_request_body(self, flow: Flow) -> Verdict:
        return self.body_verdict(flow)

    async def on_done(self, flow: Flow) -> None:
        self.done.append(flow)


class ProbeResponse(Stage):
    """The probe's response phases, in a pipeline of its own after `ProbeRequest`."""

    def __init__(self, probe: ProbeRequest) -> None:
        self.probe = probe

    async def on_response_headers(self, flow: Flow) -> Verdict:
        return self.probe.response_verdict(flow)

    async def on_response_body(self, flow: Flow) -> Verdict:
        return self.probe.response_body_verdict(flow)


Probe = ProbeRequest


class ProbeDispatcher(Dispatcher):
    """The data plane's real dispatcher for `/v1` (the LLM route), and for every other path the
    probe: request phases only, or with response phases too while `respond` is set."""

    def __init__(self, real: Dispatcher, probe: ProbeRequest) -> None:
        self.real = real
        self.respond = False
        # The trace context each flow was opened with.
        self.traceparents: list[str | None] = []
        self._probe = Pipeline([probe])
        self._probe_response = Pipeline([probe, ProbeResponse(probe)])

    def open(
        self,
        *,
        request_id: str,
        method: str,
        path: str,
        headers: dict[str, str],
        has_body: bool,
        traceparent: str | None = None,
    ) -> tuple[Flow, Pipeline]:
        self.traceparents.append(traceparent)
        flow, pipeline = self.real.open(
            request_id=request_id,
            method=method,
            path=path,
            headers=headers,
            has_body=has_body,
            traceparent=traceparent,
        )
        if path.startswith("/v1/"):
            return flow, pipeline
        return flow, self._probe_response if self.respond else self._probe


@pytest.fixture(scope="session")
def upstream() -> Iterator[UpstreamServer]:
    with UpstreamServer(api_key=PROVIDER_KEY) as server:
        yield server


@pytest.fixture(scope="module")
def log_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LogStore]:
    store = LogStore(f"chdb://{tmp_path_factory.mktemp('ch')}")
    yield store
    store.close()


@dataclass
class Runner:
    """The runner under test, serving on `socket`; `restart()` is a runner process restart."""

    socket: Path
    make: Callable[[], ExtPluginRunner]
    sink: LogSink
    store: LogStore
    probe: Probe
    dispatcher: ProbeDispatcher
    runner: ExtPluginRunner | None = None
    server: asyncio.Server | None = None

    async def start(self) -> None:
        self.runner = self.make()
        self.server = await asyncio.start_unix_server(
            self.runner.serve_connection, path=str(self.socket)
        )

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
        if self.runner is not None:
            await self.runner.close()

    async def restart(self) -> None:
        await self.stop()
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()
        await self.start()

    async def connect(self) -> RunnerConnection:
        return await RunnerConnection.open(self.socket)

    async def plugin(self) -> PluginConnection:
        return await PluginConnection.open(self.socket)

    def ai_rows(self, request_id: str) -> list[AiLogRow]:
        return [r for r in self.store.recent_ai_logs("acme", 1000) if r.request_id == request_id]

    def request_rows(self, request_id: str) -> list[RequestLogRow]:
        return [
            r for r in self.store.recent_request_logs("acme", 1000) if r.request_id == request_id
        ]

    async def probe_done(self, count: int = 1) -> list[Flow]:
        """The probe's finished flows, once `count` have finished (on_done runs as a task)."""
        for _ in range(100):
            if len(self.probe.done) >= count:
                break
            await asyncio.sleep(0.005)
        return self.probe.done

    async def drain_logs(self) -> None:
        """Lets finished flows' on_done run, then writes the sink's rows."""
        for _ in range(50):
            await asyncio.sleep(0.01)
            if self.sink._requests:
                break
        await self.sink.flush()


@pytest.fixture
async def runner(
    tmp_path: Path,
    redis_server: RedisServer,
    redis_client: aioredis.Redis,
    log_store: LogStore,
    upstream: UpstreamServer,
) -> AsyncIterator[Runner]:
    http = aiohttp.ClientSession()
    redis = PipelinedRedis.from_url(redis_server.url)
    sink = LogSink(ClickHouseLogWriter(log_store))
    compiled = policy(upstream.base_url)
    real = build_dispatcher(
        lambda: compiled, jwks=JwksCache(http), redis=redis, sink=sink, node_id="n1"
    )
    probe = Probe()
    dispatcher = ProbeDispatcher(real, probe)

    def make() -> ExtPluginRunner:
        return ExtPluginRunner(dispatcher, conf_expire_s=3600)

    harness = Runner(tmp_path / "runner.sock", make, sink, log_store, probe, dispatcher)
    await harness.start()
    yield harness
    await harness.stop()
    await http.close()
    await redis.close()
