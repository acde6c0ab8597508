"""Model routing: the model a client names → a provider, its upstream model and credential, and
the client's request in the provider's schema.

It asks for the request body only on LLM API paths (`flow.api`, found by `ClientApi`), parses it
once, and then either:
- passes it through when the provider speaks the client's schema: only the model name is
  rewritten (and an OpenAI stream asks for usage), the body re-serialised so duplicate keys
  cannot reach the provider; or
- translates it through the shared model (`gatez.translate`): the client's schema decoded,
  the provider's encoded. A feature the provider's schema cannot express is a 400 in the
  client's own error format, never a silent drop.
Then it points the proxy at the provider: cluster by header + route cache clearing,
`:authority`, `:path`, and the provider's credential where that provider wants it
(`extproc.providers`). The client's own credential was already stripped by authentication.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, Final, Protocol
from urllib.parse import parse_qsl, unquote, urlencode

import orjson

from extproc.circuit import CircuitBreaker
from extproc.providers import provider_request, provider_schema
from extproc.stages.client_api import Endpoint, Operation
from extproc.stages.upstream import route_to
from gatez.errors import InvalidRequest, NotFound, Unavailable, quoted
from gatez.pipeline import CONTINUE, BodyMode, Flow, LlmCall, Respond, Stage, Verdict
from gatez.policy import ModelTarget
from gatez.translate.model import Unsupported
from gatez.translate.schemas import (
    ANTHROPIC_MESSAGES,
    GEMINI,
    OLLAMA_CHAT,
    OLLAMA_GENERATE,
    OPENAI_CHAT,
    WireSchema,
    with_model,
)

# Schemas whose body names the model (the others say it in the URL).
_MODEL_IN_BODY: Final = frozenset({OPENAI_CHAT.id, ANTHROPIC_MESSAGES.id, OLLAMA_CHAT.id})
MODEL_NAME_LIMIT: Final = 256


class ModelNotFound(NotFound):
    # As OpenAI answers an unknown model.
    kind = "invalid_request_error"
    code = "model_not_found"


class ProvidersCoolingDown(Unavailable):
    """Every target of a fallback chain has an open circuit: 503 with Retry-After."""

    code = "providers_cooling_down"


class ChainRetries(Protocol):
    """A proxy that moves a failed call on to the chain's next target itself (Envoy's retries,
    `extproc.envoy_chains`): told of each chain call with targets left to try."""

    def route_chain(self, flow: Flow, targets: tuple[ModelTarget, ...]) -> None:
        """`flow` was routed to `targets[0]`; the others follow it in order on failure."""
        ...


class ModelRouting(Stage):
    """Routes LLM API requests by model alias, translating between schemas; answers the model
    lists (`GET /v1/models`, Gemini's, Ollama's `/api/tags`)."""

    def __init__(
        self, circuits: CircuitBreaker | None = None, chains: ChainRetries | None = None
    ) -> None:
        # The shared circuit state that picks a fallback chain's target (None: the first).
        self._circuits = circuits
        # Behind Envoy: the chain's later targets reached by the proxy's retries.
        self._chains = chains

    def on_request_headers(self, flow: Flow) -> Verdict:
        api = flow.api
        path = flow.path.partition("?")[0]
        if not isinstance(api, Endpoint):
            raise NotFound(f"no route for {flow.method} {quoted(path, 128)}")
        if api.operation is Operation.LIST_MODELS:
            if flow.method != "GET":
                raise InvalidRequest(f"{quoted(path, 128)} accepts GET only")
            return _list_models(flow, api)
        if flow.method != "POST":
            raise InvalidRequest(f"{quoted(path, 128)} accepts POST only")
        if not flow.request_has_body:
            raise InvalidRequest("the request has no body; expected a JSON object")
        flow.request_body_mode = BodyMode.BUFFERED
        return CONTINUE

    def on_request_body(self, flow: Flow) -> Verdict | Awaitable[Verdict]:
        api = flow.api
        assert isinstance(api, Endpoint)
        previous = flow.llm
        if previous is not None and previous.plan:
            # The call failed before its first byte reached the client, and the adapter runs
            # this phase again (`fallback.fail_over`): the chain's next target.
            return _route_next(flow, api, previous)
        # Already parsed when a stage before it read the body (PII redaction), else here.
        body = flow.request_json
        if body is None:
            body = flow.request_json = _parse_object(flow.request_body)
        model = _model(api, body)
        target = flow.policy.resolve_model(flow.caller.tenant_id, model)
        if target is None:
            raise ModelNotFound(
                f"The model {quoted(model)} does not exist or you do not have access to it."
            )
        if target.fallbacks and self._circuits is not None:
            # A chain: one Redis round trip picks the first target whose circuit is not open.
            return self._pick_and_route(flow, api, body, target, self._circuits)
        return _route(flow, api, body, target)

    async def _pick_and_route(
        self,
        flow: Flow,
        api: Endpoint,
        body: dict[str, Any],
        target: ModelTarget,
        circuits: CircuitBreaker,
    ) -> Verdict:
        chain = target.chain
        picked = await circuits.pick([t.circuit for t in chain])
        if not picked.attempts:
            raise ProvidersCoolingDown(
                f"every provider of {quoted(target.alias)} is cooling down after failures",
                retry_after_s=picked.retry_after_s,
            )
        by_circuit = {t.circuit: t for t in chain}
        plan = tuple((by_circuit[a.target], a.probe, a.counted) for a in picked.attempts)
        client_body = flow.request_body
        (chosen, probe, counted), rest = plan[0], plan[1:]
        verdict = _route(flow, api, body, chosen)
        llm = flow.llm
        assert llm is not None
        llm.circuit, llm.probe, llm.counted, llm.plan = chosen.circuit, probe, counted, rest
        llm.client_body = client_body
        llm.tried = [f"{name}=skipped" for name in picked.skipped]
        if rest and self._chains is not None:
            # The chain from the chosen target on, for the proxy to move through.
            self._chains.route_chain(flow, chain[chain.index(chosen) :])
        return verdict


def _route_next(flow: Flow, api: Endpoint, previous: LlmCall) -> Verdict:
    """Routes the request to the next target of its chain's plan, carrying the chain's record
    over to the new call."""
    (target, probe, counted), rest = previous.plan[0], previous.plan[1:]
    body = _parse_object(previous.client_body)
    flow.request_json = body
    verdict = _route(flow, api, body, target)
    llm = flow.llm
    assert llm is not None
    llm.circuit, llm.probe, llm.counted, llm.plan = target.circuit, probe, counted, rest
    llm.client_body = previous.client_body
    llm.tried, llm.failed = previous.tried, previous.failed
    # The request's token budget hold is the call's, whichever target serves it: settled (or
    # released) once, even when the next target's call ends before the budget stage runs.
    llm.reservation = previous.reservation
    return verdict


def _route(flow: Flow, api: Endpoint, body: dict[str, Any], target: ModelTarget) -> Verdict:
    """Sends the request to `target`: the body in its provider's schema, the proxy pointed at
    it with its credential."""
    schema = provider_schema(target.provider)
    if api.operation is not Operation.CHAT:
        llm, encoded = _passthrough(api, schema, target, body)
    elif schema is api.schema:
        llm, encoded = _same_schema(api, target, body)
    else:
        llm, encoded = _translated(api, schema, target, flow.request_body)
    flow.llm = llm
    flow.replace_request_body(encoded)

    provider = target.provider
    call = provider_request(
        provider,
        model=target.upstream_model,
        stream=llm.stream,
        body=encoded,
        query=_forwarded_query(flow.path, api),
        operation=api.passthrough_path,
    )
    route_to(flow, cluster=provider.cluster, authority=provider.authority, path=call.path)
    for name, value in call.headers:
        flow.set_upstream_header(name, value)
    return CONTINUE


def _model(api: Endpoint, body: dict[str, Any]) -> str:
    if api.path_model is not None:
        model = unquote(api.path_model)
        # Gemini's SDKs may send "models/<name>" in the path as in the body.
        return model.removeprefix("models/")
    named = body.get("model")
    if not isinstance(named, str) or not named:
        raise InvalidRequest("'model' must be a non-empty string")
    return named


def _same_schema(api: Endpoint, target: ModelTarget, body: dict[str, Any]) -> tuple[LlmCall, bytes]:
    """The client's body for a provider of its own schema: the model renamed, nothing else
    changed but what metering needs (an OpenAI stream's usage)."""
    schema = api.schema
    stream = _stream(api, body)
    wants_usage = False
    if schema.id in _MODEL_IN_BODY or schema is OLLAMA_GENERATE:
        body["model"] = target.upstream_model
    if schema is OPENAI_CHAT:
        if not isinstance(body.get("messages"), list):
            raise InvalidRequest("'messages' must be an array")
        options = body.get("stream_options")
        wants_usage = isinstance(options, dict) and options.get("include_usage") is True
        if stream and not wants_usage:
            # Usage only comes in a stream when asked for; the meter hides it from the client.
            body["stream_options"] = {
                **(options if isinstance(options, dict) else {}),
                "include_usage": True,
            }
    # Always the body as parsed here, re-serialised: a key the client sent twice (orjson keeps
    # the last) reaches the provider once, with the value routing and limits saw — a provider
    # keeping the first could otherwise be sent another model than the one checked. Costs one
    # orjson.dumps (a few µs for a chat body).
    llm = LlmCall(target=target, stream=stream, client_wants_usage=wants_usage)
    llm.client_schema = llm.provider_schema = schema
    return llm, orjson.dumps(body)


def _translated(
    api: Endpoint, schema: WireSchema, target: ModelTarget, raw: bytes
) -> tuple[LlmCall, bytes]:
    """The client's request decoded into the shared model and encoded in the provider's."""
    request = api.schema.decode_request(raw, model=api.path_model or "", stream=api.path_stream)
    encoded = schema.encode_request(with_model(request, target.upstream_model))
    wants_usage = False
    if api.schema is OPENAI_CHAT and request.extras.schema == OPENAI_CHAT.id:
        options = request.extras.fields.get("stream_options")
        wants_usage = isinstance(options, dict) and options.get("include_usage") is True
    llm = LlmCall(target=target, stream=request.stream, client_wants_usage=wants_usage)
    llm.client_schema = api.schema
    llm.provider_schema = schema
    # Kept for the stages that read the request in the model (cache, budgets).
    llm.request = request
    return llm, encoded


def _passthrough(
    api: Endpoint, schema: WireSchema, target: ModelTarget, body: dict[str, Any]
) -> tuple[LlmCall, bytes]:
    """OpenAI's Responses and Embeddings APIs: only to providers that serve them."""
    if schema is not OPENAI_CHAT:
        raise Unsupported(
            f"the model {quoted(target.alias)} is served by a {schema.name} provider, which "
            f"has no {api.passthrough_path.strip('/')} API"
        )
    body["model"] = target.upstream_model
    llm = LlmCall(target=target, stream=body.get("stream") is True, client_wants_usage=True)
    llm.client_schema = llm.provider_schema = schema
    llm.passthrough = api.operation.value
    return llm, orjson.dumps(body)


def _stream(api: Endpoint, body: dict[str, Any]) -> bool:
    if api.path_model is not None:
        return api.path_stream
    value = body.get("stream")
    if api.schema in (OLLAMA_CHAT, OLLAMA_GENERATE):
        # Ollama streams unless told not to.
        return value is not False
    return value is True


def _forwarded_query(path: str, api: Endpoint) -> str:
    """The client's query string as the provider gets it: without the Gatez key some SDKs put
    there (Gemini's `?key=`), and without what the provider request sets itself (`alt`)."""
    query = path.partition("?")[2]
    if not query or api.schema is not GEMINI:
        return query
    kept = [(k, v) for k, v in parse_qsl(query, keep_blank_values=True) if k not in ("key", "alt")]
    return urlencode(kept)


def _list_models(flow: Flow, api: Endpoint) -> Respond:
    aliases = flow.policy.model_aliases(flow.caller.tenant_id)
    schema = api.schema
    body: dict[str, Any]
    if schema is ANTHROPIC_MESSAGES:
        models = [
            {
                "type": "model",
                "id": a,
                "display_name": a,
                "created_at": "1970-01-01T00:00:00Z",
            }
            for a in aliases
        ]
        body = {
            "data": models,
            "has_more": False,
            "first_id": aliases[0] if aliases else None,
            "last_id": aliases[-1] if aliases else None,
        }
    elif schema is GEMINI:
        body = {
            "models": [
                {
                    "name": f"models/{a}",
                    "displayName": a,
                    "supportedGenerationMethods": ["generateContent", "streamGenerateContent"],
                }
                for a in aliases
            ]
        }
    elif schema is OLLAMA_CHAT:
        body = {
            "models": [
                {
                    "name": a,
                    "model": a,
                    "modified_at": "1970-01-01T00:00:00Z",
                    "size": 0,
                    "digest": "",
                    "details": {},
                }
                for a in aliases
            ]
        }
    else:
        listed = [{"id": a, "object": "model", "created": 0, "owned_by": "gatez"} for a in aliases]
        body = {"object": "list", "data": listed}
    return Respond(200, orjson.dumps(body), reason="models_list")


def _parse_object(raw: bytes) -> dict[str, Any]:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        raise InvalidRequest(f"the request body is not valid JSON: {error}") from None
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    return body
