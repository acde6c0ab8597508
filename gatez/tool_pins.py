"""Tool pins: each tool definition a tenant's MCP servers describe is pinned by digest the first
time the tenant sees it, and a later, different definition is held until an operator approves
it ("rug pull" defence). Shared by the data plane (`observe` on every tools/list answer,
`verdict` on every tools/call) and the control service (`list`, `approve`).

The data plane computes each definition's digest and what the poisoning scan found; this module
only decides and records, in one Lua script per tools/list (one Redis round trip, and no write
at all while nothing changed).

Key layout (every key carries the tenant as a Redis Cluster hash tag, so one script may touch
them all):
- `toolpins:{<tenant>}:owners` — hash: tool name → the server that first showed it (it owns the
  name in the tenant: the same name on another server is a COLLISION).
- `toolpins:{<tenant>}:servers` — set: the servers with pins, for listing.
- `toolpins:{<tenant>}:server:<server>` — hash, per tool `<name>`:
  - `s:<name>`: the verdict line, a JSON array
    `[state, pinned_digest, observed_digest, owner, pin_ms, observe_ms]` (owner: for a
    COLLISION, the server owning the name; times: Unix milliseconds as strings, "" when none).
    `verdict` reads this field only (`VERDICT_SCRIPT`, or `HGET <pins_key> s:<name>`).
  - `p:<name>`: the pinned definition (JSON text), `o:<name>`: the observed one when it differs
    from the pin, `f:<name>`: the scan's findings on the observed definition, `c:<name>`: the
    changes from the pinned to the observed definition (JSON arrays of strings), `a:<name>`:
    who approved the pin (absent for pins made on first sight).
  - `n`: how many tools the server has here (bounded by `max_tools`).

Transitions: first sight, no findings → PINNED; first sight with findings → POISONED (held, no
pin). A pinned tool observed with another digest → CHANGED (the pin kept, the observed
definition recorded); observed with the pinned digest again → PINNED. A name another server of
the tenant showed first → COLLISION. `approve` turns the observed definition of a CHANGED or
POISONED tool into the pin; a COLLISION cannot be approved: the operator removes or renames one
of the servers (`forget_server` releases a removed server's names).

For the data plane: `verdict` is None for a tool no tools/list answer showed through Gatez (or
one refused as out of bounds): refuse its calls. REFUSED verdicts are never stored. The store
computes the diff of a newly changed definition itself, with the `diff` it was given (JSON texts
in: adapt `agent.poisoning.definition_diff` to that), once per new observed digest.
Bounds: definitions stored clipped to 64 KiB (the digest is the caller's, of the whole one), at
most 1000 tools per server, names of 1 to 128 characters, 32 findings and 200 change lines of at
most 1000 characters each.
"""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import orjson
from redis.exceptions import NoScriptError

from gatez.errors import FailedPrecondition, InvalidRequest, NotFound, quoted
from gatez.redis_client import RedisClient

MAX_TOOLS_PER_SERVER: Final = 1000
# MCP says tool names SHOULD be 1 to 128 characters; a longer one is refused, not clipped, so two
# long names can never share a pin.
MAX_TOOL_NAME: Final = 128
MAX_DEFINITION_BYTES: Final = 64 * 1024
MAX_FINDINGS: Final = 32
MAX_CHANGES: Final = 200
MAX_LINE: Final = 1000
MAX_APPROVER: Final = 256
_HEX_DIGITS: Final = frozenset("0123456789abcdef")

log = logging.getLogger("gatez.tool_pins")

Arg = bytes | str | int
Clock = Callable[[], float]
# (pinned definition, observed definition), both JSON text → one line per difference.
DefinitionDiff = Callable[[str, str], Sequence[str]]


@dataclass(frozen=True, slots=True)
class LuaScript:
    """A Lua script, run by its SHA-1 (EVALSHA) and loaded on the first NOSCRIPT. Same shape as
    the data plane's `extproc.redis_pipe.Script`."""

    source: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.source.encode()).hexdigest())


class ScriptRunner(Protocol):
    """What the store needs from Redis: run a script on keys of one hash slot, get its reply
    (bulk strings as bytes)."""

    async def run_script(self, script: LuaScript, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        """The script's reply."""
        ...


class RedisPyScripts:
    """A `ScriptRunner` over a redis-py client (one server or a cluster) replying with bytes."""

    def __init__(self, redis: RedisClient) -> None:
        self._redis = redis

    async def run_script(self, script: LuaScript, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        """EVALSHA, and EVAL when Redis does not know the script yet."""
        try:
            return await self._redis.evalsha(script.sha, len(keys), *keys, *args)
        except NoScriptError:
            return await self._redis.eval(script.source, len(keys), *keys, *args)


class PinState(enum.StrEnum):
    """Where a tool stands; only PINNED tools may be listed and called."""

    PINNED = "pinned"
    CHANGED = "changed"
    POISONED = "poisoned"
    COLLISION = "collision"
    # Never stored: outside the bounds (name too long, too many tools on the server, or listed
    # twice with different definitions). Held, and not approvable.
    REFUSED = "refused"


@dataclass(frozen=True, slots=True)
class ObservedTool:
    """One tool of a tools/list answer: its name, the digest of its definition (SHA-256, hex),
    the definition as JSON text, and what the poisoning scan found in it."""

    name: str
    digest: str
    definition: str
    findings: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class PinVerdict:
    """What the data plane does with a tool: run it only when `allowed`."""

    state: PinState
    pinned_digest: str = ""
    observed_digest: str = ""
    # COLLISION: the server that owns the name.
    owner: str = ""
    # REFUSED: why.
    reason: str = ""

    @property
    def allowed(self) -> bool:
        return self.state is PinState.PINNED


@dataclass(frozen=True, slots=True)
class ToolPin:
    """A tool's whole record, for operators."""

    tenant_id: str
    server: str
    tool: str
    state: PinState
    pinned_digest: str
    observed_digest: str
    pinned_definition: str
    observed_definition: str
    changes: tuple[str, ...]
    findings: tuple[str, ...]
    pin_time: dt.datetime | None
    observe_time: dt.datetime | None
    owner: str = ""
    approver: str = ""


def owners_key(tenant_id: str) -> str:
    """Tool name → owning server; `{tenant_id}` is a Redis Cluster hash tag, kept literally."""
    return f"toolpins:{{{tenant_id}}}:owners"


def servers_key(tenant_id: str) -> str:
    """The set of the tenant's servers that have pins."""
    return f"toolpins:{{{tenant_id}}}:servers"


def pins_key(tenant_id: str, server: str) -> str:
    """The server's tools, in the tenant's hash slot."""
    return f"toolpins:{{{tenant_id}}}:server:{server}"


def verdict_field(tool: str) -> str:
    """The field of `pins_key` holding a tool's verdict line."""
    return f"s:{tool}"


# Shared by the scripts: the verdict line's encoding.
_LUA_LINE = """
local function line(state, pinned, observed, owner, pin_ms, observe_ms)
  return cjson.encode({state, pinned, observed, owner, pin_ms, observe_ms})
end
"""

# KEYS: owners, servers, pins. ARGV: server, now (ms), max tools, then per tool: name, digest,
# definition, findings (JSON array text, "" when none). Replies per tool: state, pinned digest,
# owner (collisions), and the pinned definition when the changes still need recording.
OBSERVE_SCRIPT: Final = LuaScript(
    _LUA_LINE
    + """
local owners, servers, pins = KEYS[1], KEYS[2], KEYS[3]
local server, now, max_tools = ARGV[1], ARGV[2], tonumber(ARGV[3])

local function set_findings(name, findings)
  if findings == '' then
    redis.call('HDEL', pins, 'f:' .. name)
  else
    redis.call('HSET', pins, 'f:' .. name, findings)
  end
end

-- A clean definition is pinned; a flagged one is held without a pin.
local function first_sight(name, digest, definition, findings)
  redis.call('HDEL', pins, 'c:' .. name, 'a:' .. name)
  set_findings(name, findings)
  if findings == '' then
    redis.call('HSET', pins, 's:' .. name, line('pinned', digest, digest, '', now, now),
      'p:' .. name, definition)
    redis.call('HDEL', pins, 'o:' .. name)
    return 'pinned', digest
  end
  redis.call('HSET', pins, 's:' .. name, line('poisoned', '', digest, '', '', now),
    'o:' .. name, definition)
  redis.call('HDEL', pins, 'p:' .. name)
  return 'poisoned', ''
end

local out = {}
for i = 4, #ARGV, 4 do
  local name, digest, definition, findings = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local stored = redis.call('HGET', pins, 's:' .. name)
  local held = stored and cjson.decode(stored)
  local owner = redis.call('HGET', owners, name)
  local state, pinned, holder, base = '', '', '', ''
  if not held and tonumber(redis.call('HGET', pins, 'n') or '0') >= max_tools then
    state = 'refused'
  elseif owner and owner ~= server then
    state, holder = 'collision', owner
    if not (held and held[1] == 'collision' and held[3] == digest and held[4] == owner) then
      if not held then
        redis.call('HINCRBY', pins, 'n', 1)
        redis.call('SADD', servers, server)
      end
      redis.call('HSET', pins, 's:' .. name, line('collision', '', digest, owner, '', now),
        'o:' .. name, definition)
      redis.call('HDEL', pins, 'p:' .. name, 'c:' .. name, 'a:' .. name)
      set_findings(name, findings)
    end
  else
    if not owner then
      redis.call('HSET', owners, name, server)
    end
    if not held then
      redis.call('HINCRBY', pins, 'n', 1)
      redis.call('SADD', servers, server)
      state, pinned = first_sight(name, digest, definition, findings)
    elseif held[1] == 'collision' then
      -- The owner was forgotten: this server shows the name first now.
      state, pinned = first_sight(name, digest, definition, findings)
    elseif held[1] == 'poisoned' then
      state = 'poisoned'
      if held[3] ~= digest then
        redis.call('HSET', pins, 's:' .. name, line('poisoned', '', digest, '', '', now),
          'o:' .. name, definition)
        set_findings(name, findings)
      end
    else
      pinned = held[2]
      if digest == pinned then
        state = 'pinned'
        if held[1] ~= 'pinned' then
          -- Back to the pinned definition.
          redis.call('HSET', pins, 's:' .. name, line('pinned', pinned, pinned, '', held[5], now))
          redis.call('HDEL', pins, 'o:' .. name, 'c:' .. name)
          set_findings(name, findings)
        end
      else
        state = 'changed'
        if held[3] ~= digest then
          redis.call('HSET', pins, 's:' .. name,
            line('changed', pinned, digest, '', held[5], now), 'o:' .. name, definition)
          redis.call('HDEL', pins, 'c:' .. name)
          set_findings(name, findings)
        end
        if redis.call('HEXISTS', pins, 'c:' .. name) == 0 then
          base = redis.call('HGET', pins, 'p:' .. name) or ''
        end
      end
    end
  end
  out[#out + 1] = state
  out[#out + 1] = pinned
  out[#out + 1] = holder
  out[#out + 1] = base
end
return out
"""
)

# KEYS: pins. ARGV per tool: name, observed digest, changes (JSON array text). Records the
# changes only while that digest is still the observed one.
RECORD_CHANGES_SCRIPT: Final = LuaScript("""
local pins = KEYS[1]
for i = 1, #ARGV, 3 do
  local stored = redis.call('HGET', pins, 's:' .. ARGV[i])
  if stored then
    local held = cjson.decode(stored)
    if held[1] == 'changed' and held[3] == ARGV[i + 1] then
      redis.call('HSET', pins, 'c:' .. ARGV[i], ARGV[i + 2])
    end
  end
end
return 0
""")

# KEYS: pins. ARGV: tool. The verdict line, or nil. The data plane may fold this HGET into a
# script of its own: `redis.call('HGET', <pins_key>, 's:' .. <tool>)`, decoded by `parse_verdict`.
VERDICT_SCRIPT: Final = LuaScript("return redis.call('HGET', KEYS[1], 's:' .. ARGV[1])")

# KEYS: owners, pins. ARGV: server, tool, digest, approver, now (ms).
# Replies {'ok'}, {'missing'}, {'collision', owner} or {'stale', observed digest}.
APPROVE_SCRIPT: Final = LuaScript(
    _LUA_LINE
    + """
local owners, pins = KEYS[1], KEYS[2]
local server, name, digest, approver, now = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local stored = redis.call('HGET', pins, 's:' .. name)
if not stored then
  return {'missing'}
end
local held = cjson.decode(stored)
if held[1] == 'collision' then
  return {'collision', held[4]}
end
local owner = redis.call('HGET', owners, name)
if owner and owner ~= server then
  return {'collision', owner}
end
if held[3] ~= digest then
  return {'stale', held[3]}
end
if held[1] ~= 'pinned' then
  local definition = redis.call('HGET', pins, 'o:' .. name) or ''
  redis.call('HSET', pins, 's:' .. name, line('pinned', digest, digest, '', now, held[6]),
    'p:' .. name, definition, 'a:' .. name, approver)
  redis.call('HDEL', pins, 'o:' .. name, 'c:' .. name)
end
if not owner then
  redis.call('HSET', owners, name, server)
end
return {'ok'}
""",
)

# KEYS: pins. ARGV: tool. The tool's fields: s, p, o, f, c, a.
READ_TOOL_SCRIPT: Final = LuaScript("""
local name = ARGV[1]
return redis.call('HMGET', KEYS[1], 's:' .. name, 'p:' .. name, 'o:' .. name, 'f:' .. name,
  'c:' .. name, 'a:' .. name)
""")

# KEYS: pins. Every field of the server's hash.
READ_SERVER_SCRIPT: Final = LuaScript("return redis.call('HGETALL', KEYS[1])")

# KEYS: servers.
READ_SERVERS_SCRIPT: Final = LuaScript("return redis.call('SMEMBERS', KEYS[1])")

# KEYS: owners, servers, pins. ARGV: server. Drops the server's pins and frees its names.
FORGET_SERVER_SCRIPT: Final = LuaScript("""
local owners, servers, pins, server = KEYS[1], KEYS[2], KEYS[3], ARGV[1]
for _, key in ipairs(redis.call('HKEYS', pins)) do
  if string.sub(key, 1, 2) == 's:' then
    local name = string.sub(key, 3)
    if redis.call('HGET', owners, name) == server then
      redis.call('HDEL', owners, name)
    end
  end
end
redis.call('DEL', pins)
redis.call('SREM', servers, server)
return 0
""")

# KEYS: every key of the tenant.
FORGET_TENANT_SCRIPT: Final = LuaScript("return redis.call('DEL', unpack(KEYS))")


class ToolPinStore:
    """The tenant's tool pins in Redis. `diff` describes how a definition changed from its pin
    (JSON texts in, lines out); without it changed tools are recorded with no changes listed."""

    def __init__(
        self,
        redis: ScriptRunner,
        *,
        diff: DefinitionDiff | None = None,
        clock: Clock = time.time,
        max_tools: int = MAX_TOOLS_PER_SERVER,
    ) -> None:
        self._redis = redis
        self._diff = diff
        self._clock = clock
        self._max_tools = max_tools

    async def observe(
        self, tenant_id: str, server: str, tools: Sequence[ObservedTool]
    ) -> dict[str, PinVerdict]:
        """Records a tools/list answer and returns each tool's verdict by name. One Redis round
        trip, plus one when a definition changed since the last answer (to record the diff)."""
        verdicts: dict[str, PinVerdict] = {}
        by_name: dict[str, list[ObservedTool]] = {}
        for tool in tools:
            _check_digest(tool.digest)
            by_name.setdefault(tool.name, []).append(tool)
        stored: dict[str, ObservedTool] = {}
        for name, listed in by_name.items():
            refusal = _refusal(listed)
            if refusal is None:
                stored[name] = listed[0]
            else:
                verdicts[name] = refusal
        if not stored:
            return verdicts
        args: list[Arg] = [server, self._now_ms(), self._max_tools]
        for tool in stored.values():
            args += (
                tool.name,
                tool.digest,
                _clip(tool.definition),
                _lines(tool.findings, MAX_FINDINGS),
            )
        reply = await self._redis.run_script(
            OBSERVE_SCRIPT,
            (owners_key(tenant_id), servers_key(tenant_id), pins_key(tenant_id, server)),
            args,
        )
        to_record: list[Arg] = []
        for tool, (state, pinned, owner, base) in zip(stored.values(), _quads(reply), strict=True):
            verdict = PinVerdict(
                PinState(_text(state)), _text(pinned), tool.digest, owner=_text(owner)
            )
            if verdict.state is PinState.REFUSED:
                verdict = PinVerdict(
                    PinState.REFUSED,
                    observed_digest=tool.digest,
                    reason=f"the server has more than {self._max_tools} tools",
                )
            verdicts[tool.name] = verdict
            if verdict.state is PinState.CHANGED and base:
                changes = self._changes(_text(base), tool.definition)
                to_record += (tool.name, tool.digest, _lines(changes, MAX_CHANGES) or "[]")
        if to_record:
            await self._redis.run_script(
                RECORD_CHANGES_SCRIPT, (pins_key(tenant_id, server),), to_record
            )
        return verdicts

    async def verdict(self, tenant_id: str, server: str, tool: str) -> PinVerdict | None:
        """The tool's verdict for a tools/call; None when no tools/list ever showed it."""
        line = await self._redis.run_script(VERDICT_SCRIPT, (pins_key(tenant_id, server),), (tool,))
        return None if line is None else parse_verdict(line)

    async def approve(
        self, tenant_id: str, server: str, tool: str, digest: str, approver: str
    ) -> ToolPin:
        """Pins the tool's observed definition, which must still have `digest`. Raises NotFound
        for a tool never seen, FailedPrecondition when the definition changed again, or for a
        name another server owns (approving cannot settle a collision)."""
        if not approver or len(approver) > MAX_APPROVER:
            raise InvalidRequest(f"approver must be 1 to {MAX_APPROVER} characters")
        reply = await self._redis.run_script(
            APPROVE_SCRIPT,
            (owners_key(tenant_id), pins_key(tenant_id, server)),
            (server, tool, digest, approver, self._now_ms()),
        )
        outcome = _text(reply[0])
        if outcome == "missing":
            raise NotFound(f"no tool {quoted(tool)} seen on server {quoted(server)}")
        if outcome == "collision":
            raise FailedPrecondition(
                f"the tool name {quoted(tool)} belongs to server {quoted(_text(reply[1]))} of "
                "this tenant; remove or rename one of the servers (a collision cannot be approved)"
            )
        if outcome == "stale":
            raise FailedPrecondition(
                f"the definition of {quoted(tool)} is now {_text(reply[1])}, not "
                f"{quoted(digest)}: review it again"
            )
        pin = await self.get(tenant_id, server, tool)
        if pin is None:  # forgotten in between
            raise NotFound(f"no tool {quoted(tool)} seen on server {quoted(server)}")
        return pin

    async def get(self, tenant_id: str, server: str, tool: str) -> ToolPin | None:
        """One tool's record."""
        reply = await self._redis.run_script(
            READ_TOOL_SCRIPT, (pins_key(tenant_id, server),), (tool,)
        )
        if reply[0] is None:
            return None
        fields = dict(zip("spofca", reply, strict=True))
        return _record(tenant_id, server, tool, fields)

    async def list_pins(self, tenant_id: str, server: str = "") -> list[ToolPin]:
        """The tenant's tools (of one server when `server` is set), by server and name."""
        if server:
            servers = [server]
        else:
            members = await self._redis.run_script(
                READ_SERVERS_SCRIPT, (servers_key(tenant_id),), ()
            )
            servers = sorted(_text(member) for member in members)
        pins: list[ToolPin] = []
        for name in servers:
            reply = await self._redis.run_script(
                READ_SERVER_SCRIPT, (pins_key(tenant_id, name),), ()
            )
            by_tool: dict[str, dict[str, Any]] = {}
            for key, value in zip(reply[::2], reply[1::2], strict=True):
                prefix, colon, tool = _text(key).partition(":")
                if colon:
                    by_tool.setdefault(tool, {})[prefix] = value
            pins += (
                _record(tenant_id, name, tool, fields)
                for tool, fields in sorted(by_tool.items())
                if fields.get("s") is not None
            )
        return pins

    async def forget_server(self, tenant_id: str, server: str) -> None:
        """Drops a server's pins and frees the names it owned (when the server is removed)."""
        await self._redis.run_script(
            FORGET_SERVER_SCRIPT,
            (owners_key(tenant_id), servers_key(tenant_id), pins_key(tenant_id, server)),
            (server,),
        )

    async def forget_tenant(self, tenant_id: str) -> None:
        """Drops every pin of the tenant (when the tenant is deleted)."""
        members = await self._redis.run_script(READ_SERVERS_SCRIPT, (servers_key(tenant_id),), ())
        keys = [owners_key(tenant_id), servers_key(tenant_id)]
        keys += (pins_key(tenant_id, _text(member)) for member in members)
        await self._redis.run_script(FORGET_TENANT_SCRIPT, keys, ())

    def _changes(self, pinned: str, observed: str) -> list[str]:
        if self._diff is None:
            return []
        try:
            return list(self._diff(pinned, observed))
        except Exception as error:  # a definition clipped to the bound is no longer JSON
            log.warning("could not diff a tool definition: %r", error)
            return [f"(could not compare the definitions: {type(error).__name__})"]

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)


def parse_verdict(line: bytes | str) -> PinVerdict:
    """A verdict line (the `s:<tool>` field) as a `PinVerdict`."""
    state, pinned, observed, owner, _, _ = orjson.loads(line)
    return PinVerdict(PinState(state), pinned, observed, owner)


def _refusal(listed: Sequence[ObservedTool]) -> PinVerdict | None:
    """Why a tool (every entry of one name in a tools/list answer) is refused without asking
    Redis, if it is."""
    name, digest = listed[0].name, listed[-1].digest
    if not name or len(name) > MAX_TOOL_NAME:
        reason = f"a tool name must be 1 to {MAX_TOOL_NAME} characters"
    elif any(tool.digest != digest for tool in listed):
        # Whichever we pinned, the client would see the other one too.
        reason = "the server lists this tool twice, with different definitions"
    else:
        return None
    return PinVerdict(PinState.REFUSED, observed_digest=digest, reason=reason)


def _check_digest(digest: str) -> None:
    # The digest lands in verdict lines and messages: the caller's bug, not the server's.
    if len(digest) != 64 or not _HEX_DIGITS.issuperset(digest):
        raise ValueError(f"a tool digest must be SHA-256 in lower-case hex, not {digest!r:.80}")


def _clip(definition: str) -> str:
    encoded = definition.encode()
    if len(encoded) <= MAX_DEFINITION_BYTES:
        return definition
    return encoded[:MAX_DEFINITION_BYTES].decode(errors="ignore")


def _lines(lines: Sequence[str], limit: int) -> str:
    """At most `limit` lines of at most MAX_LINE characters, as a JSON array; "" for none."""
    if not lines:
        return ""
    clipped = [line if len(line) <= MAX_LINE else line[: MAX_LINE - 1] + "…" for line in lines]
    if len(clipped) > limit:
        clipped = [*clipped[: limit - 1], f"… and {len(clipped) - limit + 1} more"]
    return orjson.dumps(clipped).decode()


def _quads(reply: Sequence[Any]) -> list[tuple[Any, Any, Any, Any]]:
    return [(reply[i], reply[i + 1], reply[i + 2], reply[i + 3]) for i in range(0, len(reply), 4)]


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode()
    return str(value)


def _time(ms: str) -> dt.datetime | None:
    return dt.datetime.fromtimestamp(int(ms) / 1000, dt.UTC) if ms else None


def _record(tenant_id: str, server: str, tool: str, fields: dict[str, Any]) -> ToolPin:
    state, pinned, observed, owner, pin_ms, observe_ms = orjson.loads(fields["s"])
    pinned_definition = _text(fields.get("p"))
    return ToolPin(
        tenant_id=tenant_id,
        server=server,
        tool=tool,
        state=PinState(state),
        pinned_digest=pinned,
        observed_digest=observed,
        pinned_definition=pinned_definition,
        observed_definition=_text(fields.get("o")) or pinned_definition,
        changes=tuple(orjson.loads(fields["c"])) if fields.get("c") else (),
        findings=tuple(orjson.loads(fields["f"])) if fields.get("f") else (),
        pin_time=_time(pin_ms),
        observe_time=_time(observe_ms),
        owner=owner,
        approver=_text(fields.get("a")),
    )
