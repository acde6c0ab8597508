"""Model routing: the model a client names → a provider, its upstream model and credential.

It asks for the request body only on LLM paths, parses it once into the Flow, rewrites the model
name (and asks the provider for stream usage), forwards the body as it parsed it (re-serialised,
so duplicate keys cannot reach the provider), and points the proxy at the provider: cluster by
header + route cache clearing, `:authority`, `:path`, and the provider's key. The client's own
credential was already stripped by authentication.
"""

from __future__ import annotations

from typing import Any, Final

import orjson

from extproc.stages.upstream import route_to
from gatez.errors import InvalidRequest, NotFound, quoted
from gatez.pipeline import CONTINUE, BodyMode, Flow, LlmCall, Respond, Stage, Verdict

CHAT_COMPLETIONS_PATH: Final = "/v1/chat/completions"
MODELS_PATH: Final = "/v1/models"


class ModelNotFound(NotFound):
    # As OpenAI answers an unknown model.
    kind = "invalid_request_error"
    code = "model_not_found"


class ModelRouting(Stage):
    """Routes OpenAI Chat Completions requests by model alias; answers `GET /v1/models`."""

    def on_request_headers(self, flow: Flow) -> Verdict:
        path = flow.path.partition("?")[0]
        if path == CHAT_COMPLETIONS_PATH:
            if flow.method != "POST":
                raise InvalidRequest(f"{path} accepts POST only")
            if not flow.request_has_body:
                raise InvalidRequest("the request has no body; expected a JSON object")
            flow.request_body_mode = BodyMode.BUFFERED
            return CONTINUE
        if path == MODELS_PATH and flow.method == "GET":
            return self._list_models(flow)
        raise NotFound(f"no route for {flow.method} {quoted(path, 128)}")

    def on_request_body(self, flow: Flow) -> Verdict:
        body = _parse_object(flow.request_body)
        flow.request_json = body
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise InvalidRequest("'model' must be a non-empty string")
        if not isinstance(body.get("messages"), list):
            raise InvalidRequest("'messages' must be an array")
        target = flow.policy.resolve_model(flow.caller.tenant_id, model)
        if target is None:
            raise ModelNotFound(
                f"The model {quoted(model)} does not exist or you do not have access to it."
            )
        stream = body.get("stream") is True
        options = body.get("stream_options")
        client_wants_usage = isinstance(options, dict) and options.get("include_usage") is True
        flow.llm = LlmCall(target=target, stream=stream, client_wants_usage=client_wants_usage)

        body["model"] = target.upstream_model
        if stream and not client_wants_usage:
            # Usage only comes in a stream when asked for; the meter hides it from the client.
            body["stream_options"] = {
                **(options if isinstance(options, dict) else {}),
                "include_usage": True,
            }
        # Always the body as parsed here, re-serialised: a key the client sent twice (orjson keeps
        # the last) reaches the provider once, with the value routing and limits saw — a provider
        # keeping the first could otherwise be sent another model than the one checked. Costs one
        # orjson.dumps (a few µs for a chat body); the body is usually rewritten anyway (alias).
        flow.replace_request_body(orjson.dumps(body))

        provider = target.provider
        query = flow.path.partition("?")[2]
        upstream_path = provider.path_prefix + "/chat/completions"
        route_to(
            flow,
            cluster=provider.cluster,
            authority=provider.authority,
            path=f"{upstream_path}?{query}" if query else upstream_path,
        )
        if provider.api_key is not None:
            flow.set_upstream_header("authorization", f"Bearer {provider.api_key}")
        return CONTINUE

    @staticmethod
    def _list_models(flow: Flow) -> Respond:
        aliases = flow.policy.model_aliases(flow.caller.tenant_id)
        models = [{"id": a, "object": "model", "created": 0, "owned_by": "gatez"} for a in aliases]
        return Respond(200, orjson.dumps({"object": "list", "data": models}), reason="models_list")


def _parse_object(raw: bytes) -> dict[str, Any]:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        raise InvalidRequest(f"the request body is not valid JSON: {error}") from None
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    return body
