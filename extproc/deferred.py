"""The one door to a deferred Redis check: a script sent now, judged when its reply arrives,
while the request goes on (`Flow.defer`: the pipeline settles it before anything reaches the
upstream). On Envoy the round trip overlaps Envoy sending the body; a stage author writes the
judgement, not the future plumbing."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

from extproc.redis_pipe import Arg, Script, ScriptClient
from gatez.errors import GatewayError
from gatez.pipeline import Decision, Flow, Stage


def defer_script(
    flow: Flow,
    stage: Stage,
    redis: ScriptClient,
    script: Script,
    keys: Sequence[Arg],
    args: Sequence[Arg],
    judge: Callable[[Any], Decision],
    unavailable: Callable[[], GatewayError],
) -> None:
    """Runs `script` and defers `judge(reply)` as `stage`'s check of `flow`; `judge` may raise a
    `GatewayError` to refuse. A Redis failure refuses with `unavailable()` (fail closed)."""
    decision: asyncio.Future[Decision] = asyncio.get_running_loop().create_future()

    def arrived(reply: asyncio.Future[Any]) -> None:
        if decision.done():
            return
        if reply.cancelled() or reply.exception() is not None:
            decision.set_exception(unavailable())
            return
        try:
            decision.set_result(judge(reply.result()))
        except GatewayError as error:
            decision.set_exception(error)

    redis.submit_script(script, keys, args).add_done_callback(arrived)
    flow.defer(stage, decision)
