"""Fallback chains behind Envoy, the proxy-native way (docs/envoy-fallback.md): a call that fails
before its first byte reached the client moves on to the chain's next target within the request.

- **Clusters.** When a policy arrives, the data plane writes one Envoy cluster per chain, and
  per suffix of one (`gatez-chain-<digest>`), to the file Envoy watches (file-based CDS; a new
  file renamed over the old). A cluster's targets are endpoints at priorities 0..n, each named
  in its endpoint metadata (`gatez.target`: the target's circuit, "provider/model") and, over
  TLS, matched to a transport socket with its SNI and certificate name check. Its upstream HTTP
  filters are an ext_proc to this data plane and the codec.
- **Routing.** Model routing picks a chain's targets by circuit state (one Redis round trip)
  and routes the first as for any alias; with another target left it points `x-gatez-cluster`
  at the cluster of the chain's suffix that starts there (`EnvoyChains.route_chain`) and bounds
  Envoy's retries to the targets left (`x-envoy-max-retries`). The flow is kept here by
  request id until it ends. A suffix, not the picked targets: a target in the middle whose
  circuit is open is still tried if those before it fail (an upstream filter cannot pass over
  an attempt: its own answer would be final).
- **Attempts.** Envoy's route retries a 429, 5xx, reset or refused connection on the next
  priority. The cluster's ext_proc (`AttemptStream`, told apart from the downstream filter by
  its gRPC metadata) runs once per attempt: the first goes as routed; a later one records the
  previous as failed (its status, seen in that attempt's response headers, or "connect") and
  routes the flow to the attempt's target by running the request-body phase again, exactly as
  the APISIX runner does (`extproc.stages.fallback.fail_over`). Its answer removes every
  provider's credential and version headers (an attempt starts from the headers the last one
  left), sets the new target's path, authority and headers, and replaces the body. The
  downstream response side then decodes with the final target's schema (`flow.llm`).

Aliases without a chain never reach this module: their hot path is unchanged.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext_proc
from google.protobuf.message import DecodeError

from extproc.grpc_h2 import GRPC_INTERNAL, CallStream
from extproc.stages.fallback import fail_over
from extproc.stages.upstream import CLUSTER_HEADER
from gatez.envoy_config import CDS_FILE, CHAIN_CLUSTER_PREFIX
from gatez.pipeline import CONTINUE, Continue, Decision, Flow, Outcome, Respond, settle
from gatez.policy import UPSTREAM_CLUSTER_TLS, CompiledPolicy, ModelTarget

log = logging.getLogger("gatez.envoy.chains")

# The gRPC metadata the chain clusters' upstream ext_proc sends: its streams are attempts.
ATTEMPT_STREAM_HEADER: Final = "x-gatez-upstream-attempt"
# The picked endpoint's target, as the upstream ext_proc's request attribute (a CEL path: the
# whole metadata would arrive as protobuf text).
TARGET_ATTRIBUTE: Final = "xds.upstream_host_metadata.filter_metadata['gatez']['target']"
ATTRIBUTES_KEY: Final = "envoy.filters.http.ext_proc"
MAX_RETRIES_HEADER: Final = "x-envoy-max-retries"
REQUEST_ID_HEADER: Final = "x-request-id"
# Every header a provider request may be given (`extproc.providers`: credentials, version and
# SigV4 headers): an attempt starts from the headers the previous one left, so each attempt
# removes all of them before setting its own — else one provider's key would reach another.
PER_PROVIDER_HEADERS: Final = (
    "authorization",
    "x-api-key",
    "x-goog-api-key",
    "api-key",
    "anthropic-version",
    "anthropic-beta",
    "x-amz-date",
    "x-amz-security-token",
    "x-amz-content-sha256",
)
# Set for Envoy's routing by the first attempt's mutations; never sent to a provider.
_ROUTING_HEADERS: Final = frozenset({CLUSTER_HEADER, MAX_RETRIES_HEADER})
OVERWRITE: Final = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
# A connection failure or reset, as the AI-log row's attempts list says it.
NO_ANSWER: Final = "connect"
# Envoy reads the clusters file a moment after it is replaced (a directory watch): a cluster
# new in it is routed to only this long after the write. A request naming a cluster Envoy has
# not loaded would get Envoy's 503 (and count against the chain's first target); in the
# meantime the chain's first target is called alone, as without a chain cluster.
NEW_CLUSTER_SETTLE_S: Final = 0.25


def cluster_name(circuits: tuple[str, ...]) -> str:
    """The cluster that tries these targets in order: named by them, so chains with the same
    targets share it, and a policy change that keeps them keeps its name."""
    digest = hashlib.sha256("\n".join(circuits).encode()).hexdigest()[:20]
    return CHAIN_CLUSTER_PREFIX + digest


def chain_cluster(
    name: str, targets: tuple[ModelTarget, ...], ca_bundle: str, *, message_timeout_s: float = 5.0
) -> dict[str, Any]:
    """One chain's (or suffix's) Envoy cluster: target i at priority i, named in its endpoint
    metadata; TLS targets with their SNI and a check of their certificate against `ca_bundle`
    and their host name; the per-attempt ext_proc in the upstream HTTP filters."""
    endpoints: list[dict[str, Any]] = []
    sockets: list[dict[str, Any]] = []
    for priority, target in enumerate(targets):
        provider = target.provider
        tls = provider.cluster == UPSTREAM_CLUSTER_TLS
        address = urlsplit(f"//{provider.authority}")
        host = address.hostname or ""
        metadata: dict[str, Any] = {"gatez": {"target": target.circuit}}
        if tls:
            metadata["envoy.transport_socket_match"] = {"tls": target.circuit}
            sockets.append(
                {
                    "name": f"tls-{priority}",
                    "match": {"tls": target.circuit},
                    "transport_socket": {
                        "name": "envoy.transport_sockets.tls",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.transport_sockets"
                            ".tls.v3.UpstreamTlsContext",
                            "sni": host,
                            "common_tls_context": {
                                "validation_context": {
                                    "trusted_ca": {"filename": ca_bundle},
                                    "match_typed_subject_alt_names": [
                                        {"san_type": "DNS", "matcher": {"exact": host}}
                                    ],
                                }
                            },
                        },
                    },
                }
            )
        socket_address = {"address": host, "port_value": address.port or (443 if tls else 80)}
        endpoints.append(
            {
                "priority": priority,
                "lb_endpoints": [
                    {
                        "endpoint": {"address": {"socket_address": socket_address}},
                        "metadata": {"filter_metadata": metadata},
                    }
                ],
            }
        )
    return {
        "@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster",
        "name": name,
        "type": "STRICT_DNS",
        "dns_lookup_family": "V4_PREFERRED",
        "connect_timeout": "5s",
        "load_assignment": {"cluster_name": name, "endpoints": endpoints},
        "transport_socket_matches": sockets,
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3"
                ".HttpProtocolOptions",
                "explicit_http_config": {"http_protocol_options": {}},
                # They run once per attempt, after the endpoint is picked.
                "http_filters": [
                    {
                        "name": "envoy.filters.http.ext_proc",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.http"
                            ".ext_proc.v3.ExternalProcessor",
                            "grpc_service": {
                                "envoy_grpc": {"cluster_name": "gatez_extproc"},
                                "initial_metadata": [{"key": ATTEMPT_STREAM_HEADER, "value": "1"}],
                            },
                            "failure_mode_allow": False,
                            "message_timeout": f"{message_timeout_s}s",
                            # :authority is a routing header: changed only when allowed.
                            "mutation_rules": {"allow_all_routing": True},
                            "request_attributes": [TARGET_ATTRIBUTE],
                            "processing_mode": {
                                "request_header_mode": "SEND",
                                # The attempt's status and Retry-After, for the next one.
                                "response_header_mode": "SEND",
                                # The body is replaced in the headers' answer: the data plane
                                # holds the client's.
                                "request_body_mode": "NONE",
                                "response_body_mode": "NONE",
                                "request_trailer_mode": "SKIP",
                                "response_trailer_mode": "SKIP",
                            },
                        },
                    },
                    {
                        "name": "envoy.filters.http.upstream_codec",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.http"
                            ".upstream_codec.v3.UpstreamCodec"
                        },
                    },
                ],
            }
        },
    }


def chain_clusters(policy: CompiledPolicy, ca_bundle: str) -> dict[tuple[str, ...], dict[str, Any]]:
    """Every chain's clusters: one per suffix of two targets or more, by the suffix's circuits."""
    clusters: dict[tuple[str, ...], dict[str, Any]] = {}
    for route in policy.model_routes.values():
        chain = route.chain
        for start in range(len(chain) - 1):
            suffix = chain[start:]
            circuits = tuple(target.circuit for target in suffix)
            if circuits not in clusters:
                clusters[circuits] = chain_cluster(cluster_name(circuits), suffix, ca_bundle)
    return clusters


@dataclass(slots=True)
class ChainFlow:
    """A chain call in flight: its flow, the targets of its cluster in order, and what the
    current attempt's response headers said (status 0: none seen)."""

    flow: Flow
    targets: tuple[ModelTarget, ...]
    status: int = 0
    retry_after: str | None = None


class EnvoyChains:
    """The chain clusters file, the chain calls in flight, and their attempts' ext_proc streams.

    `body_phase` is the LLM pipeline's request-body phase, run again to route an attempt."""

    def __init__(self, directory: Path, ca_bundle: str) -> None:
        self.directory = directory
        self.ca_bundle = ca_bundle
        self.body_phase: Callable[[Flow], Outcome] | None = None
        # The clusters in the file Envoy was last given, by their targets' circuits, with the
        # monotonic time from which they are routed to.
        self._names: dict[tuple[str, ...], tuple[str, float]] = {}
        self._flows: dict[str, ChainFlow] = {}

    @property
    def path(self) -> Path:
        return self.directory / CDS_FILE

    def write(self, policy: CompiledPolicy | None) -> None:
        """Writes `policy`'s chain clusters for Envoy (none without a policy): a new file
        renamed over the watched one, which Envoy reads as one change."""
        clusters = chain_clusters(policy, self.ca_bundle) if policy is not None else {}
        self.directory.mkdir(parents=True, exist_ok=True)
        scratch = self.directory / f".{CDS_FILE}.new"
        scratch.write_text(json.dumps({"resources": list(clusters.values())}))
        os.replace(scratch, self.path)
        settled = time.monotonic() + NEW_CLUSTER_SETTLE_S
        known = {name: since for name, since in self._names.values()}
        self._names = {
            circuits: (cluster["name"], known.get(cluster["name"], settled))
            for circuits, cluster in clusters.items()
        }

    def route_chain(self, flow: Flow, targets: tuple[ModelTarget, ...]) -> None:
        """Model routing's hook for a chain call with `targets` to try in order (the first
        routed already): sent to their cluster, kept here until it ends. Left as routed (to
        the first target alone) when the cluster is not written."""
        cluster = self._names.get(tuple(target.circuit for target in targets))
        if cluster is None:
            return
        name, since = cluster
        if since > time.monotonic():
            return
        flow.set_upstream_header(CLUSTER_HEADER, name)
        flow.set_upstream_header(MAX_RETRIES_HEADER, str(len(targets) - 1))
        self._flows[flow.request_id] = ChainFlow(flow, targets)

    def forget(self, request_id: str) -> None:
        """The exchange is over."""
        self._flows.pop(request_id, None)

    def flow_of(self, request_id: str) -> Flow | None:
        chain = self._flows.get(request_id)
        return chain.flow if chain is not None else None

    @property
    def in_flight(self) -> int:
        return len(self._flows)

    def open(self, stream: CallStream) -> AttemptStream:
        return AttemptStream(self, stream)

    def attempt(self, request_id: str, target: str) -> Outcome | None:
        """An attempt of chain call `request_id` to `target` (a circuit) is about to be sent:
        None when it goes as the flow is routed; else the outcome of routing the flow to it
        (its pending changes are the attempt's). Raises LookupError when the call or the
        target is unknown."""
        chain = self._flows[request_id]
        flow = chain.flow
        llm = flow.llm
        assert llm is not None
        circuits = [t.circuit for t in chain.targets]
        if target == llm.circuit:
            return None
        if llm.circuit not in circuits or target not in circuits:
            raise LookupError(f"attempt to {target} after {llm.circuit or 'a refused target'}")
        at, to = circuits.index(llm.circuit), circuits.index(target)
        if to < at:
            raise LookupError(f"attempt to {target} after {llm.circuit}")
        return self._steps(chain, chain.targets[at + 1 : to + 1])

    def _steps(self, chain: ChainFlow, targets: tuple[ModelTarget, ...]) -> Outcome:
        """Routes the flow to each of `targets` in turn: all but the last are attempts whose
        request never reached this filter (a refused connection can end one first), routed
        only to be recorded as failed."""
        outcome: Outcome = CONTINUE
        for index, target in enumerate(targets):
            if index:
                chain.flow.take_pending()
            outcome = self._move_on(chain, target)
            if isinstance(outcome, Respond):
                return outcome
            if not isinstance(outcome, Continue):
                return self._steps_later(chain, outcome, targets[index + 1 :])
        return outcome

    async def _steps_later(
        self, chain: ChainFlow, outcome: Outcome, targets: tuple[ModelTarget, ...]
    ) -> Decision:
        verdict = await settle(outcome)
        if isinstance(verdict, Respond) or not targets:
            return verdict
        chain.flow.take_pending()
        return await settle(self._steps(chain, targets))

    def _move_on(self, chain: ChainFlow, target: ModelTarget) -> Outcome:
        flow = chain.flow
        llm = flow.llm
        assert llm is not None and self.body_phase is not None
        # The plan from `target` on: its pick flags when the pick allowed it; a target whose
        # circuit was open is tried all the same (the cluster holds it), as one with failures.
        plan = llm.plan
        index = next((i for i, entry in enumerate(plan) if entry[0] is target), None)
        if index is None:
            llm.plan = ((target, False, True), *plan)
            skipped = f"{target.circuit}=skipped"
            if skipped in llm.tried:
                llm.tried.remove(skipped)
        else:
            llm.plan = plan[index:]
        status = chain.status
        fail_over(flow, str(status) if status else NO_ANSWER, chain.retry_after)
        chain.status, chain.retry_after = 0, None
        return self.body_phase(flow)

    def answered(self, request_id: str, status: int, retry_after: str | None) -> None:
        """An attempt's response headers: kept for the next attempt, which follows a failure."""
        chain = self._flows.get(request_id)
        if chain is not None:
            chain.status, chain.retry_after = status, retry_after

    def refused(self, request_id: str) -> None:
        """The attempt's target could not take the request (the gateway answers instead): the
        answer, in the client's schema already, goes to it untranslated."""
        chain = self._flows.get(request_id)
        llm = chain.flow.llm if chain is not None else None
        if llm is not None:
            llm.provider_schema = llm.client_schema


def _header(key: str, value: str) -> base_pb2.HeaderValueOption:
    option = base_pb2.HeaderValueOption(append_action=OVERWRITE)
    option.header.key = key
    option.header.raw_value = value.encode("latin-1")
    return option


def _serialised(response: ext_proc.ProcessingResponse) -> bytes:
    wire: bytes = response.SerializeToString()
    return wire


def _empty(phase: str) -> bytes:
    response = ext_proc.ProcessingResponse()
    getattr(response, phase).response.SetInParent()
    return _serialised(response)


GO_AS_ROUTED: Final = _empty("request_headers")
RESPONSE_HEADERS_SEEN: Final = _empty("response_headers")
NOTHING_TO_DO: Final = {
    "request_body": _empty("request_body"),
    "response_body": _empty("response_body"),
    "request_trailers": _serialised(
        ext_proc.ProcessingResponse(request_trailers=ext_proc.TrailersResponse())
    ),
    "response_trailers": _serialised(
        ext_proc.ProcessingResponse(response_trailers=ext_proc.TrailersResponse())
    ),
}


def _lost_answer() -> bytes:
    """An attempt of a call this process does not hold (it never could send it correctly):
    refused, never sent with the headers another target was given."""
    response = ext_proc.ProcessingResponse()
    immediate = response.immediate_response
    immediate.status.code = 503
    immediate.body = json.dumps(
        {
            "error": {
                "message": "the fallback attempt could not be prepared",
                "type": "service_unavailable",
                "param": None,
                "code": "fallback_lost",
            }
        }
    ).encode()
    immediate.details = "gatez_fallback_lost"
    immediate.headers.set_headers.append(_header("content-type", "application/json"))
    return _serialised(response)


LOST: Final = _lost_answer()


def routed_attempt(flow: Flow) -> bytes:
    """The answer to an attempt's request headers that sends it to the target `flow` was just
    routed to: every provider header removed but the target's own, the routing headers
    left out, the path, authority and headers set, the body replaced."""
    pending = flow.take_pending()
    response = ext_proc.ProcessingResponse()
    common = response.request_headers.response
    mutation = common.header_mutation
    setting = pending.set_headers
    for name, value in setting.items():
        if name not in _ROUTING_HEADERS:
            mutation.set_headers.append(_header(name, value))
    mutation.remove_headers.extend(
        name
        for name in (*PER_PROVIDER_HEADERS, *pending.remove_headers)
        if name not in setting and name != CLUSTER_HEADER
    )
    if pending.body is not None:
        common.status = ext_proc.CommonResponse.CONTINUE_AND_REPLACE
        common.body_mutation.body = pending.body
    return _serialised(response)


def refused_attempt(flow: Flow, verdict: Respond) -> bytes:
    """The gateway's own answer in the attempt's place (the target cannot take the request)."""
    flow.take_pending()
    response = ext_proc.ProcessingResponse()
    immediate = response.immediate_response
    immediate.status.code = verdict.status
    immediate.body = verdict.body
    immediate.details = "gatez_" + (verdict.reason or "gateway_response")
    for name, value in verdict.headers:
        immediate.headers.set_headers.append(_header(name, value))
    return _serialised(response)


class AttemptStream:
    """The ext_proc stream of one upstream attempt of a chain call (a `grpc_h2` handler)."""

    __slots__ = ("_chains", "_request_id", "_stream", "_task")

    def __init__(self, chains: EnvoyChains, stream: CallStream) -> None:
        self._chains = chains
        self._stream = stream
        self._request_id = ""
        self._task: asyncio.Future[Any] | None = None

    def on_message(self, message: bytes) -> None:
        try:
            request = ext_proc.ProcessingRequest.FromString(message)
        except DecodeError:
            log.warning("ext_proc: undecodable ProcessingRequest on an attempt's stream")
            self._stream.finish(GRPC_INTERNAL, "undecodable ProcessingRequest")
            return
        phase = request.WhichOneof("request")
        if phase == "request_headers":
            self._request_headers(request)
        elif phase == "response_headers":
            status, retry_after = 0, None
            for header in request.response_headers.headers.headers:
                if header.key == ":status":
                    status = int(header.raw_value or header.value or 0)
                elif header.key == "retry-after":
                    retry_after = (header.raw_value or header.value.encode()).decode("latin-1")
            self._chains.answered(self._request_id, status, retry_after)
            self._stream.send_message(RESPONSE_HEADERS_SEEN)
        elif phase in NOTHING_TO_DO:
            self._stream.send_message(NOTHING_TO_DO[phase])

    def _request_headers(self, request: ext_proc.ProcessingRequest) -> None:
        attributes = request.attributes.get(ATTRIBUTES_KEY)
        target = attributes.fields[TARGET_ATTRIBUTE].string_value if attributes else ""
        request_id = next(
            (
                (h.raw_value or h.value.encode()).decode("latin-1")
                for h in request.request_headers.headers.headers
                if h.key == REQUEST_ID_HEADER
            ),
            "",
        )
        self._request_id = request_id
        try:
            outcome = self._chains.attempt(request_id, target)
        except (LookupError, ValueError):
            log.warning("a fallback attempt to %r of an unknown call was refused", target[:64])
            self._stream.send_message(LOST)
            return
        except Exception:
            log.exception("a fallback attempt could not be routed")
            self._stream.send_message(LOST)
            return
        if outcome is None:
            self._stream.send_message(GO_AS_ROUTED)
            return
        if isinstance(outcome, Continue | Respond):
            self._send(outcome)
            return
        self._task = asyncio.ensure_future(outcome)
        self._task.add_done_callback(self._settled)

    def _settled(self, outcome: asyncio.Future[Any]) -> None:
        self._task = None
        if outcome.cancelled():
            return
        if outcome.exception() is not None:
            log.error("a fallback attempt could not be routed", exc_info=outcome.exception())
            self._stream.send_message(LOST)
            return
        self._send(outcome.result())

    def _send(self, verdict: Continue | Respond) -> None:
        flow = self._chains.flow_of(self._request_id)
        if flow is None:
            self._stream.send_message(LOST)
            return
        if isinstance(verdict, Respond):
            self._chains.refused(self._request_id)
            self._stream.send_message(refused_attempt(flow, verdict))
            return
        self._stream.send_message(routed_attempt(flow))

    def on_end(self) -> None:
        self._stream.finish()

    def on_reset(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
