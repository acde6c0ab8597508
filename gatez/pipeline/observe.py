"""What the pipeline tells whoever watches it: traces and request metrics, through one door.

The pipeline knows no telemetry library. It keeps per-stage counters itself (plain integers,
read by a metrics collector: `Pipeline.stage_stats`), tells a `FlowObserver` when a flow opens
and when it is finished, and — only for a flow the observer chose to trace — records each stage
call in `flow.trace`, to be turned into spans after the fact. `gatez.telemetry` implements the
observer with OpenTelemetry and prometheus-client.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from gatez.pipeline.stage import Phase

if TYPE_CHECKING:
    from gatez.pipeline.flow import Flow


class CallOutcome(enum.Enum):
    """How a stage call ended, as metrics and traces tell it."""

    CONTINUE = "continue"
    # Answered the client itself (a returned Respond, or a GatewayError such as a 401).
    RESPOND = "respond"
    # An unexpected exception: a 500, or passed over by a fail-open stage.
    ERROR = "error"


@dataclass(slots=True)
class StageCall:
    """One call of a stage's phase method in a traced flow (monotonic nanoseconds). A stage
    that had to wait ends when its verdict came; a deferred check is recorded as its own call,
    from the stage's return to the moment the pipeline saw the check settled."""

    stage: str
    phase: Phase
    started_ns: int
    ended_ns: int
    outcome: CallOutcome
    waited: bool = False
    deferred: bool = False


class FlowTrace(Protocol):
    """A traced flow's record: the stage calls so far, and how to end the trace."""

    calls: list[StageCall]

    def finish(self, flow: Flow) -> None:
        """The exchange is over: record its spans. Must not raise."""
        ...


class FlowObserver(Protocol):
    """Sees every flow open and finish, with the name of the pipeline it runs."""

    def opened(self, flow: Flow, pipeline: str, traceparent: str | None) -> None:
        """A flow was opened; sets `flow.trace` when the flow is to be traced. `traceparent` is
        the W3C trace context the proxy sent with the request, if any."""
        ...

    def finished(self, flow: Flow, pipeline: str) -> None:
        """The exchange is over (called exactly once per flow, after the on_done hooks)."""
        ...


@dataclass(frozen=True, slots=True)
class StageStats:
    """The counters of one stage in one phase of one pipeline, since the process started."""

    stage: str
    phase: Phase
    calls: int
    seconds: float
    responded: int
    failed: int
    waited: int

    @property
    def continued(self) -> int:
        return self.calls - self.responded - self.failed
