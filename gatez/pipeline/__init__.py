"""The pipeline core every data-plane layer builds on: the per-request Flow, the verdicts, the
typed Stage contract, the phase runner, and the dispatcher that picks a pipeline by route kind.

It knows no proxy: the Envoy and APISIX adapters (`extproc/`) and the agent gateway (`agent/`)
build on it, never the other way round.
"""

from gatez.pipeline.dispatch import Dispatcher, NoPolicy, NoRoute
from gatez.pipeline.flow import (
    BodyMode,
    Flow,
    LlmCall,
    McpCall,
    Pending,
    Principal,
    TokenUsage,
)
from gatez.pipeline.observe import CallOutcome, FlowObserver, FlowTrace, StageCall, StageStats
from gatez.pipeline.runner import INTERNAL_ERROR, DecisionTimeout, Outcome, Pipeline, settle
from gatez.pipeline.stage import FailureMode, Phase, Stage, StageResult
from gatez.pipeline.verdicts import (
    CONTINUE,
    MAX_HOLD_S,
    Continue,
    Decision,
    Hold,
    Respond,
    Verdict,
)

__all__ = [
    "CONTINUE",
    "INTERNAL_ERROR",
    "MAX_HOLD_S",
    "BodyMode",
    "CallOutcome",
    "Continue",
    "Decision",
    "DecisionTimeout",
    "Dispatcher",
    "FailureMode",
    "Flow",
    "FlowObserver",
    "FlowTrace",
    "Hold",
    "LlmCall",
    "McpCall",
    "NoPolicy",
    "NoRoute",
    "Outcome",
    "Pending",
    "Phase",
    "Pipeline",
    "Principal",
    "Respond",
    "Stage",
    "StageCall",
    "StageResult",
    "StageStats",
    "TokenUsage",
    "Verdict",
    "settle",
]
