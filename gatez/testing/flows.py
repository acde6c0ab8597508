"""Building Flows for stage unit tests, the way an adapter would."""

from __future__ import annotations

import time
import uuid

from extproc.flow import Flow
from gatez.policy import CompiledPolicy


def make_flow(
    policy: CompiledPolicy | None,
    *,
    method: str = "POST",
    path: str = "/v1/chat/completions",
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
) -> Flow:
    """A Flow as it stands after the request headers arrived (and the body, when given)."""
    flow = Flow(
        request_id=uuid.uuid4().hex,
        policy=policy,
        started_ns=time.monotonic_ns(),
        started_at=time.time(),
        method=method,
        path=path,
        request_headers={k.lower(): v for k, v in (headers or {}).items()},
        request_has_body=body is not None,
    )
    if body is not None:
        flow.request_body = body
    return flow
