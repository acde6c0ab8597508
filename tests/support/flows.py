"""Building Flows for stage unit tests, the way an adapter would."""

from __future__ import annotations

import inspect
import time
import uuid
from collections.abc import Callable

from extproc.stages.client_api import ClientApi
from gatez.pipeline import Decision, Flow, Respond, StageResult, Verdict
from gatez.policy import EMPTY_POLICY, CompiledPolicy, RouteKind


def make_flow(
    policy: CompiledPolicy | None,
    *,
    method: str = "POST",
    path: str = "/v1/chat/completions",
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
) -> Flow:
    """A Flow as it stands after the request headers arrived (and the body, when given)."""
    policy = policy or EMPTY_POLICY
    flow = Flow(
        request_id=uuid.uuid4().hex,
        policy=policy,
        route=policy.routes.match(path),
        started_ns=time.monotonic_ns(),
        started_at=time.time(),
        method=method,
        path=path,
        request_headers={k.lower(): v for k, v in (headers or {}).items()},
        request_has_body=body is not None,
    )
    if body is not None:
        flow.request_body = body
    if flow.route is not None and flow.route.kind is RouteKind.LLM:
        # As the LLM pipeline's first stage does: the client's API, from the path.
        ClientApi().on_request_headers(flow)
    return flow


async def run_stage(method: Callable[[Flow], StageResult], flow: Flow) -> Verdict:
    """Calls one stage's phase method as the pipeline would, awaiting what it must, and settles
    the checks it deferred: their refusals are raised, as the stage would have raised them."""
    result = method(flow)
    verdict: Verdict = await result if inspect.isawaitable(result) else result
    deferred, flow.deferred = flow.deferred, []
    for _, check in deferred:
        checked: Decision = await check
        if isinstance(checked, Respond):
            return checked
    return verdict
