"""A held request through a real Envoy: the data plane's override_message_timeout keeps Envoy
waiting far past its message timeout, and the decision is what the client gets."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from extproc.envoy_adapter import ExternalProcessor
from extproc.grpc_h2 import GrpcServer
from gatez.envoy_config import render
from gatez.pipeline import (
    Continue,
    Dispatcher,
    Flow,
    Hold,
    NoPolicy,
    NoRoute,
    Pipeline,
    Respond,
    Stage,
    Verdict,
)
from gatez.policy import EMPTY_POLICY, RouteKind
from gatez.processes import free_port, require_binary, stop_process, wait_for_port

# Far shorter than the hold: without the override Envoy would answer 504 after it.
MESSAGE_TIMEOUT = "0.3s"
DECISION_AFTER_S = 1.5


class Approval(Stage):
    """Holds each request; an operator (the test's timer) approves with a reply after a while."""

    def on_request_headers(self, flow: Flow) -> Verdict:
        loop = asyncio.get_running_loop()
        decision: asyncio.Future[Continue | Respond] = loop.create_future()
        reply = Respond(200, b'{"approved":true}', reason="approved")
        loop.call_later(DECISION_AFTER_S, decision.set_result, reply)
        return Hold(decision, timeout_s=30)


@dataclass
class Proxy:
    url: str


@pytest.fixture
async def proxy(tmp_path: Path) -> AsyncIterator[Proxy]:
    socket = tmp_path / "extproc.sock"
    dispatcher = Dispatcher(
        lambda: EMPTY_POLICY,
        {RouteKind.LLM: Pipeline([Approval()])},
        unrouted=Pipeline([NoRoute()]),
        unavailable=Pipeline([NoPolicy()]),
    )
    server = GrpcServer(ExternalProcessor(dispatcher).methods())
    await server.listen(f"unix:{socket}")
    port = free_port()
    config = tmp_path / "envoy.yaml"
    config.write_text(
        render(
            listen_port=port,
            admin_port=free_port(),
            extproc_socket=str(socket),
            message_timeout=MESSAGE_TIMEOUT,
        )
    )
    argv = [require_binary("envoy"), "-c", str(config), "--log-level", "warn",
            "--base-id", str(port), "--concurrency", "1"]  # fmt: skip
    envoy = await asyncio.to_thread(
        subprocess.Popen, argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        await asyncio.to_thread(wait_for_port, port, 30)
        yield Proxy(f"http://127.0.0.1:{port}")
    finally:
        await asyncio.to_thread(stop_process, envoy)
        await server.stop(None)


async def test_envoy_waits_for_a_held_request_past_its_message_timeout(proxy: Proxy) -> None:
    async with httpx.AsyncClient(timeout=20) as client:
        started = asyncio.get_running_loop().time()
        response = await client.get(f"{proxy.url}/v1/models")
        waited = asyncio.get_running_loop().time() - started
    assert response.status_code == 200, response.text
    assert response.json() == {"approved": True}
    assert waited >= DECISION_AFTER_S * 0.9
