"""The tool pin store (`gatez.tool_pins`) as the data plane runs it: on the hot-path Redis
client, with the poisoning module's readable diff of a changed definition."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from agent.poisoning import definition_diff
from extproc.redis_pipe import Script, ScriptClient
from gatez.tool_pins import Arg, LuaScript, ToolPinStore

# A changed value is shown up to this many characters in a change line.
VALUE_LIMIT = 200


class HotPathScripts:
    """`gatez.tool_pins.ScriptRunner` over the data plane's pipelined Redis client."""

    def __init__(self, redis: ScriptClient) -> None:
        self._redis = redis
        self._scripts: dict[str, Script] = {}

    async def run_script(self, script: LuaScript, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        ours = self._scripts.get(script.sha)
        if ours is None:
            ours = self._scripts[script.sha] = Script(script.source)
        return await self._redis.submit_script(ours, keys, args)


def change_lines(pinned: str, observed: str) -> list[str]:
    """What changed from a pinned definition to the observed one (both JSON), a line per path."""
    lines = []
    for change in definition_diff(orjson.loads(pinned), orjson.loads(observed)):
        old = _shown(change.get("old"))
        new = _shown(change.get("new"))
        lines.append(f"{change['path']} {change['op']}: {old} -> {new}")
    return lines


def _shown(value: object) -> str:
    text = orjson.dumps(value).decode() if value is not None else "-"
    return text if len(text) <= VALUE_LIMIT else text[:VALUE_LIMIT] + "…"


def pin_store(redis: ScriptClient) -> ToolPinStore:
    """The data plane's pin store."""
    return ToolPinStore(HotPathScripts(redis), diff=change_lines)
