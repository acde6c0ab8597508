"""The LLM request in the shared model, for the stages after model routing that read it (the
answer cache's key, the budget's prompt estimate): decoded at most once per call.

Model routing already decoded it when it translated; when the provider speaks the client's
schema it passed the body through without decoding, and it is decoded here on first use (the
body model routing sent on, which is the client's with the model renamed).
"""

from __future__ import annotations

from extproc.stages.client_api import Endpoint
from gatez.pipeline import Flow
from gatez.translate.model import ChatRequest, TranslationError


def chat_request(flow: Flow) -> ChatRequest | None:
    """The call's request in the shared model; None for APIs passed through as they are
    (Responses, Embeddings) and for a body its own schema cannot decode."""
    llm = flow.llm
    if llm is None or llm.passthrough:
        return None
    if llm.request is None:
        schema = llm.provider_schema
        assert schema is not None
        api = flow.api
        path_model = (api.path_model if isinstance(api, Endpoint) else None) or ""
        try:
            llm.request = schema.decode_request(
                flow.request_body, model=path_model, stream=llm.stream
            )
        except TranslationError:
            return None
    return llm.request
