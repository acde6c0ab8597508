"""How the gateway reaches each kind of provider: the path and headers of its request.

(Lead's placeholder for OpenAI-kind providers; the provider kinds replace it.)
"""

from __future__ import annotations

from dataclasses import dataclass

from gatez.policy import ProviderTarget
from gatez.translate.schemas import OPENAI_CHAT, WireSchema


@dataclass(frozen=True, slots=True)
class ProviderRequest:
    path: str
    headers: tuple[tuple[str, str], ...]


def provider_schema(provider: ProviderTarget) -> WireSchema:
    return OPENAI_CHAT


def provider_request(
    provider: ProviderTarget, *, model: str, stream: bool, body: bytes, query: str, operation: str
) -> ProviderRequest:
    path = provider.path_prefix + (operation or "/chat/completions")
    headers: tuple[tuple[str, str], ...] = ()
    if provider.api_key is not None:
        headers = (("authorization", f"Bearer {provider.api_key}"),)
    return ProviderRequest(f"{path}?{query}" if query else path, headers)
