"""Provider headers: only allowlisted client headers reach an LLM provider.

A client's request carries much a provider must not see: cookies, `x-forwarded-for` and the
other forwarding headers the proxy added (`x-forwarded-proto`, `x-envoy-external-address`),
SDK telemetry (`x-stainless-*`), the client's own `openai-organization`. After model routing has
chosen the provider, every client header that is not in the provider's allowlist
(`ProviderTarget.forward_headers`: `gatez.policy.DEFAULT_FORWARD_HEADERS` plus the policy's
`forward_headers`) is removed. The headers the gateway itself sets for the provider (its key, the
routing headers) are kept, and so are the ones the proxy owns for routing and framing. REST routes
do not run this stage: an API gateway passes their headers through (credentials excepted).

On Envoy the router adds no `x-envoy-*` headers after this (`suppress_envoy_headers`).
"""

from __future__ import annotations

from typing import Final

from gatez.pipeline import CONTINUE, Flow, Stage, Verdict

REQUEST_ID_HEADER: Final = "x-request-id"
# The proxy's own: the upstream host and the body's framing (a removal would break the request).
PROXY_HEADERS: Final = frozenset({"host", "content-length", "transfer-encoding"})


class ProviderHeaders(Stage):
    """Removes the client headers the routed provider is not allowed to receive."""

    def on_request_body(self, flow: Flow) -> Verdict:
        llm = flow.llm
        if llm is None:
            return CONTINUE
        allowed = llm.target.provider.forward_headers
        ours = flow.pending.set_headers
        if flow.request_headers.get(REQUEST_ID_HEADER) != flow.request_id:
            # The id the provider sees is the log row's: Envoy's already (it never keeps a
            # client's), the runner's own behind APISIX.
            flow.set_upstream_header(REQUEST_ID_HEADER, flow.request_id)
        for name in flow.request_headers:
            if (
                name not in allowed
                and name not in ours
                and name not in PROXY_HEADERS
                and not name.startswith(":")
            ):
                flow.remove_header(name)
        return CONTINUE
