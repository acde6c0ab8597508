"""The stage contract: a small class with one method per phase it acts in.

Like mitmproxy's hooks, the phases are a fixed set of method names; a stage defines the ones it
cares about and the pipeline calls only those. A method whose name starts with `on_` but is not a
phase (`on_request_header`, a typo) is refused when the class is defined, so it cannot become a
stage that silently never runs. Failure mode and `close` are part of the contract.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Awaitable
from typing import TYPE_CHECKING, ClassVar, Final

from gatez.pipeline.verdicts import CONTINUE, Verdict

if TYPE_CHECKING:
    from gatez.pipeline.flow import Flow


class Phase(enum.Enum):
    """Where a request is; each value names the stage method that acts there."""

    REQUEST_HEADERS = "on_request_headers"
    REQUEST_BODY = "on_request_body"
    RESPONSE_HEADERS = "on_response_headers"
    RESPONSE_BODY = "on_response_body"
    DONE = "on_done"


# The phases that come before anything reaches the upstream.
REQUEST_PHASES: Final = frozenset({Phase.REQUEST_HEADERS, Phase.REQUEST_BODY})
PHASE_METHODS: Final = frozenset(phase.value for phase in Phase)


class FailureMode(enum.Enum):
    """What an unexpected error in a stage means. A `GatewayError` always answers with itself."""

    # The request is answered with a generic 500 (the default: a broken check must not pass).
    CLOSED = "closed"
    # The error is logged and the request goes on as if the stage had continued.
    OPEN = "open"


# A phase method's result: the verdict, or an awaitable of it when the stage must wait.
StageResult = Verdict | Awaitable[Verdict]


class Stage:
    """Base class of every pipeline stage.

    Subclasses define any of the phase methods below; `phases` lists the ones they define and
    the pipeline calls nothing else. `name` (snake case of the class name unless set) names the
    stage in logs, traces and metrics. `failure_mode` may be set per instance (a policy saying
    the rate limit fails open). `close` gives back what the stage holds outside the process.
    """

    name: ClassVar[str] = "stage"
    phases: ClassVar[frozenset[Phase]] = frozenset()
    failure_mode: FailureMode = FailureMode.CLOSED

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        misspelt = sorted(
            attribute
            for klass in cls.__mro__
            if klass is not Stage and issubclass(klass, Stage)
            for attribute in vars(klass)
            if attribute.startswith("on_") and attribute not in PHASE_METHODS
        )
        if misspelt:
            raise TypeError(
                f"{cls.__qualname__} defines {', '.join(misspelt)}, which are not phases; "
                f"phases are {', '.join(sorted(PHASE_METHODS))}"
            )
        if "name" not in vars(cls):
            cls.name = _snake_case(cls.__name__)
        cls.phases = frozenset(
            phase for phase in Phase if getattr(cls, phase.value) is not getattr(Stage, phase.value)
        )

    def on_request_headers(self, flow: Flow) -> StageResult:
        """The request line and headers have arrived."""
        return CONTINUE

    def on_request_body(self, flow: Flow) -> StageResult:
        """The whole request body has arrived (only when a stage asked for it)."""
        return CONTINUE

    def on_response_headers(self, flow: Flow) -> StageResult:
        """The upstream's status and headers have arrived."""
        return CONTINUE

    def on_response_body(self, flow: Flow) -> StageResult:
        """A response body chunk (streamed) or the whole body (buffered): `flow.response_chunk`."""
        return CONTINUE

    def on_done(self, flow: Flow) -> Awaitable[None] | None:
        """The exchange is over, however it ended; fires exactly once. Must not raise."""
        return None

    async def close(self) -> None:
        """The data plane is stopping: give back what the stage holds outside the process."""


def _snake_case(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()
