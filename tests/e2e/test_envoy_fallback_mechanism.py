"""Proxy-native fallback on the real Envoy (1.40): a prototype of the mechanism, not wired into
the data plane (see docs/envoy-fallback.md).

A fallback chain is one cluster, written to a watched file (file-based CDS, as the data plane
would write it when a policy arrives): an endpoint per target at priorities 0..n, each naming
its target in endpoint metadata and, for TLS targets, matched to a transport socket with the
target's SNI. The route retries on 429, 5xx, reset and connect failure, each retry moving to the
next priority (`previous_priorities`). An ext_proc filter in the cluster's upstream HTTP filters
runs once per attempt: it learns the attempt's target from `xds.upstream_host_metadata` and
rewrites the path, headers and body for that target. The client sees one response.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import string
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
import yaml
from aiohttp import web
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext_proc
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ext_proc_grpc
from envoy.type.v3 import http_status_pb2
from google.protobuf import json_format

from gatez.processes import free_port, require_binary, wait_for_port
from tests.support.tls import LocalCertificateAuthority

ATTRIBUTES = "envoy.filters.http.ext_proc"
CHAIN = "chain-demo"
TLS_NAME = "backup.provider.test"
# A CEL path into the picked endpoint's metadata: a plain string in `attributes` (the whole
# `xds.upstream_host_metadata` arrives as protobuf text, to be parsed).
TARGET_ATTRIBUTE = "xds.upstream_host_metadata.filter_metadata['gatez']['target']"


@dataclass
class SeenAttempt:
    """What the upstream ext_proc saw of one attempt."""

    target: str
    attempt: str
    path: str
    leftover_headers: list[str]
    body: bytes | None = None
    status: int | None = None


# Credentials and other per-target headers the translator may set: every attempt removes them
# all before setting its target's own, because an attempt's header mutations stay in the
# headers the next attempt starts from.
PER_TARGET_HEADERS = ("authorization", "x-api-key", "x-goog-api-key", "api-key")


class PerAttemptTranslator(ext_proc_grpc.ExternalProcessorServicer):  # type: ignore[misc]
    """The upstream ext_proc: once per attempt, the target from the picked endpoint's metadata,
    and the request rewritten for it (path, authority, credential header, body).

    `buffered_body`: the body comes in a body message per attempt and is rewritten there;
    otherwise it is replaced in the headers reply (CONTINUE_AND_REPLACE), one message less."""

    def __init__(self, *, buffered_body: bool) -> None:
        self.buffered_body = buffered_body
        self.attempts: list[SeenAttempt] = []
        # Targets whose circuit is open: their attempts are answered here, not sent.
        self.skip: set[str] = set()

    async def Process(
        self,
        requests: AsyncIterator[ext_proc.ProcessingRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[ext_proc.ProcessingResponse]:
        seen: SeenAttempt | None = None
        async for request in requests:
            phase = request.WhichOneof("request")
            if phase == "request_headers":
                attributes = json_format.MessageToDict(request.attributes[ATTRIBUTES])
                target = attributes[TARGET_ATTRIBUTE]
                headers = {
                    h.key: h.raw_value.decode() for h in request.request_headers.headers.headers
                }
                seen = SeenAttempt(
                    target,
                    headers.get("x-envoy-attempt-count", "?"),
                    headers[":path"],
                    sorted(name for name in headers if name in PER_TARGET_HEADERS),
                )
                self.attempts.append(seen)
                if target in self.skip:
                    yield ext_proc.ProcessingResponse(
                        immediate_response=ext_proc.ImmediateResponse(
                            status=http_status_pb2.HttpStatus(
                                code=http_status_pb2.ServiceUnavailable
                            ),
                            headers=ext_proc.HeaderMutation(
                                set_headers=[_header("x-gatez-skipped", target)]
                            ),
                        )
                    )
                    return
                mutation = ext_proc.HeaderMutation(
                    remove_headers=[*PER_TARGET_HEADERS, "x-gatez-cluster"],
                    set_headers=[
                        _header(":path", f"/{target}/v1/chat"),
                        _header(":authority", f"{target}.provider.test"),
                        _header(_credential_header(target), f"key-of-{target}"),
                    ],
                )
                if self.buffered_body:
                    yield _request_headers(ext_proc.CommonResponse(header_mutation=mutation))
                    continue
                body = _translated(target, seen.attempt)
                mutation.set_headers.append(_header("content-length", str(len(body))))
                yield _request_headers(
                    ext_proc.CommonResponse(
                        status=ext_proc.CommonResponse.CONTINUE_AND_REPLACE,
                        header_mutation=mutation,
                        body_mutation=ext_proc.BodyMutation(body=body),
                    )
                )
            elif phase == "request_body" and seen is not None:
                seen.body = request.request_body.body
                body = _translated(seen.target, seen.attempt)
                yield ext_proc.ProcessingResponse(
                    request_body=ext_proc.BodyResponse(
                        response=ext_proc.CommonResponse(
                            # Headers wait for a buffered body: its length is set here.
                            header_mutation=ext_proc.HeaderMutation(
                                set_headers=[_header("content-length", str(len(body)))]
                            ),
                            body_mutation=ext_proc.BodyMutation(body=body),
                        )
                    )
                )
            elif phase == "response_headers" and seen is not None:
                seen.status = int(
                    next(
                        h.raw_value.decode()
                        for h in request.response_headers.headers.headers
                        if h.key == ":status"
                    )
                )
                yield ext_proc.ProcessingResponse(
                    response_headers=ext_proc.HeadersResponse(
                        response=ext_proc.CommonResponse(
                            header_mutation=ext_proc.HeaderMutation(
                                set_headers=[_header("x-gatez-target", seen.target)]
                            )
                        )
                    )
                )


def _credential_header(target: str) -> str:
    # Different providers, different headers: what one attempt sets, the next must remove.
    return {"primary": "authorization", "second": "x-goog-api-key"}.get(target, "x-api-key")


def _translated(target: str, attempt: str) -> bytes:
    return json.dumps({"model": f"{target}-model", "attempt": attempt}).encode()


def _request_headers(response: ext_proc.CommonResponse) -> ext_proc.ProcessingResponse:
    return ext_proc.ProcessingResponse(request_headers=ext_proc.HeadersResponse(response=response))


def _header(key: str, value: str) -> base_pb2.HeaderValueOption:
    return base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key=key, raw_value=value.encode())
    )


@dataclass
class Provider:
    """A plain aiohttp upstream: answers `status` (with Retry-After when 429), or a streamed
    200; remembers what it received."""

    status: int
    received: list[dict[str, Any]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.received.append(
            {
                "path": request.path,
                "credentials": {
                    name: request.headers[name]
                    for name in PER_TARGET_HEADERS
                    if name in request.headers
                },
                "body": json.loads(body) if body else None,
                "host": request.headers.get("host"),
            }
        )
        if self.status != 200:
            headers = {"retry-after": "7"} if self.status == 429 else {}
            return web.json_response({"error": "busy"}, status=self.status, headers=headers)
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        for index in range(3):
            await response.write(f"data: chunk {index}\n\n".encode())
            await asyncio.sleep(0.01)
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response


async def serve(provider: Provider, tls: ssl.SSLContext | None = None) -> tuple[web.AppRunner, int]:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", provider.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=tls).start()
    return runner, port


# The test-only static bootstrap: the listener and the chain route, the ext_proc service.
# Chains' clusters come from the watched CDS file. $-fields are filled in by `bootstrap`.
BOOTSTRAP = string.Template("""
node: {id: gatez-fallback-test, cluster: gatez}
admin:
  address: {socket_address: {address: 127.0.0.1, port_value: $admin_port}}
dynamic_resources:
  cds_config:
    resource_api_version: V3
    path_config_source:
      path: $directory/cds.yaml
      watched_directory: {path: $directory}
static_resources:
  listeners:
  - name: gateway
    address: {socket_address: {address: 127.0.0.1, port_value: $listen_port}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: gateway
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              # x-envoy-attempt-count on each attempt: the upstream ext_proc sees which it is.
              include_request_attempt_count: true
              routes:
              - match:
                  prefix: /
                  headers: [{name: x-gatez-cluster, string_match: {prefix: chain-}}]
                route:
                  cluster_header: x-gatez-cluster
                  timeout: 10s
                  retry_policy:
                    retry_on: 5xx,reset,connect-failure,retriable-status-codes
                    retriable_status_codes: [429]
                    num_retries: 3
                    retry_priority:
                      name: envoy.retry_priorities.previous_priorities
                      typed_config:
                        "@type": type.googleapis.com/envoy.extensions.retry.priority.previous_priorities.v3.PreviousPrioritiesConfig
                        update_frequency: 1
                    # Moving to another provider needs no back-off (the default: 25 ms and up).
                    retry_back_off: {base_interval: 0.001s, max_interval: 0.002s}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: gatez_extproc
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {http2_protocol_options: {}}
    load_assignment:
      cluster_name: gatez_extproc
      endpoints:
      - lb_endpoints:
        - endpoint:
            address: {socket_address: {address: 127.0.0.1, port_value: $extproc_port}}
""")  # noqa: E501 (type URLs)

# A chain's cluster without its endpoints and TLS matches (filled in by `chain_cluster`).
CHAIN_CLUSTER = string.Template("""
"@type": type.googleapis.com/envoy.config.cluster.v3.Cluster
name: $name
type: STATIC
connect_timeout: 0.5s
load_assignment: {cluster_name: $name, endpoints: []}
transport_socket_matches: []
typed_extension_protocol_options:
  envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
    "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
    explicit_http_config: {http_protocol_options: {}}
    # Upstream HTTP filters: they run once per attempt, after the endpoint is picked.
    http_filters:
    - name: envoy.filters.http.ext_proc
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor
        grpc_service: {envoy_grpc: {cluster_name: gatez_extproc}, timeout: 2s}
        message_timeout: 1s
        # :authority is a routing header: changed only when allowed.
        mutation_rules: {allow_all_routing: true}
        request_attributes:
        - "xds.upstream_host_metadata.filter_metadata['gatez']['target']"
        - upstream.address
        - upstream.request_attempt_count
        - xds.cluster_name
        processing_mode:
          request_header_mode: SEND
          response_header_mode: SEND
          request_body_mode: $request_body_mode
          response_body_mode: NONE
          request_trailer_mode: SKIP
          response_trailer_mode: SKIP
    - name: envoy.filters.http.upstream_codec
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.filters.http.upstream_codec.v3.UpstreamCodec
""")

UPSTREAM_TLS = string.Template("""
name: envoy.transport_sockets.tls
typed_config:
  "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
  sni: $sni
  common_tls_context:
    validation_context:
      trusted_ca: {filename: $ca_bundle}
      match_typed_subject_alt_names: [{san_type: DNS, matcher: {exact: $sni}}]
""")


def bootstrap(directory: Path, listen_port: int, admin_port: int, extproc_port: int) -> str:
    """The test-only bootstrap's YAML."""
    return BOOTSTRAP.substitute(
        directory=directory,
        listen_port=listen_port,
        admin_port=admin_port,
        extproc_port=extproc_port,
    )


@dataclass(frozen=True)
class Target:
    """One target of a chain as the data plane would know it from the policy."""

    name: str
    port: int
    tls_name: str | None = None


def chain_cluster(
    name: str, targets: list[Target], ca_bundle: Path, *, buffered_body: bool = False
) -> dict[str, Any]:
    """The cluster of one fallback chain: target i at priority i, named in endpoint metadata;
    TLS targets matched to a transport socket with their SNI; the per-attempt ext_proc."""
    cluster: dict[str, Any] = yaml.safe_load(
        CHAIN_CLUSTER.substitute(
            name=name, request_body_mode="BUFFERED" if buffered_body else "NONE"
        )
    )
    for priority, target in enumerate(targets):
        metadata: dict[str, Any] = {"gatez": {"target": target.name}}
        if target.tls_name:
            # Picks the transport socket below whose `match` says the same.
            metadata["envoy.transport_socket_match"] = {"tls": target.name}
            cluster["transport_socket_matches"].append(
                {
                    "name": f"tls-{target.name}",
                    "match": {"tls": target.name},
                    "transport_socket": yaml.safe_load(
                        UPSTREAM_TLS.substitute(sni=target.tls_name, ca_bundle=ca_bundle)
                    ),
                }
            )
        address = {"socket_address": {"address": "127.0.0.1", "port_value": target.port}}
        cluster["load_assignment"]["endpoints"].append(
            {
                "priority": priority,
                "lb_endpoints": [
                    {"endpoint": {"address": address}, "metadata": {"filter_metadata": metadata}}
                ],
            }
        )
    return cluster


def write_clusters(directory: Path, clusters: list[dict[str, Any]]) -> None:
    """As the data plane would: write a new file and move it over the watched one (an atomic
    replace, which the directory watch sees as one change)."""
    scratch = directory / ".cds.yaml.new"
    scratch.write_text(yaml.safe_dump({"resources": clusters}))
    os.replace(scratch, directory / "cds.yaml")


def wait_for_cluster(admin_port: int, name: str, timeout_s: float = 10.0) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/clusters") as answer:
            if f"{name}::" in answer.read().decode():
                return
        time.sleep(0.05)
    raise TimeoutError(f"cluster {name} not loaded in {timeout_s}s")


@dataclass
class Rig:
    directory: Path
    listen_port: int
    admin_port: int
    translator: PerAttemptTranslator
    ca: LocalCertificateAuthority
    ca_bundle: Path


@pytest.fixture(params=["body-replaced-at-headers", "body-buffered-per-attempt"])
async def rig(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Rig]:
    translator = PerAttemptTranslator(buffered_body=request.param == "body-buffered-per-attempt")
    server = grpc.aio.server()
    ext_proc_grpc.add_ExternalProcessorServicer_to_server(translator, server)
    extproc_port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    config_dir = tmp_path / "xds"
    config_dir.mkdir()
    ca = LocalCertificateAuthority(tmp_path / "ca")
    write_clusters(config_dir, [])
    listen_port, admin_port = free_port(), free_port()
    envoy_yaml = tmp_path / "envoy.yaml"
    envoy_yaml.write_text(bootstrap(config_dir, listen_port, admin_port, extproc_port))
    with (tmp_path / "envoy.log").open("wb") as log:
        envoy = await asyncio.create_subprocess_exec(
            require_binary("envoy"), "-c", str(envoy_yaml), "--log-level", "warn",
            "--base-id", str(listen_port), "--concurrency", "1",
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        await asyncio.to_thread(wait_for_port, listen_port, 30)
        yield Rig(config_dir, listen_port, admin_port, translator, ca, ca.bundle())
    finally:
        envoy.terminate()
        await envoy.wait()
        await server.stop(None)


async def test_a_failing_target_falls_over_to_the_next_with_a_translated_streamed_answer(
    rig: Rig,
) -> None:
    busy, refused_port, backup = Provider(429), free_port(), Provider(200)
    busy_runner, busy_port = await serve(busy)
    tls = rig.ca.issue("backup", dns_names=[TLS_NAME]).server_context()
    backup_runner, backup_port = await serve(backup, tls)
    targets = [
        Target("primary", busy_port),
        Target("second", refused_port),  # nothing listens: connect failure
        Target("backup", backup_port, tls_name=TLS_NAME),
    ]
    write_clusters(
        rig.directory,
        [chain_cluster(CHAIN, targets, rig.ca_bundle, buffered_body=rig.translator.buffered_body)],
    )
    await asyncio.to_thread(wait_for_cluster, rig.admin_port, CHAIN)
    try:
        async with (
            aiohttp.ClientSession() as client,
            client.post(
                f"http://127.0.0.1:{rig.listen_port}/v1/chat/completions",
                json={"model": "alias", "stream": True},
                headers={"x-gatez-cluster": CHAIN},
            ) as answer,
        ):
            chunks = [line async for line in answer.content if line.strip()]
            status, target = answer.status, answer.headers.get("x-gatez-target")
    finally:
        await busy_runner.cleanup()
        await backup_runner.cleanup()
    assert status == 200
    assert target == "backup"
    assert chunks == [b"data: chunk 0\n", b"data: chunk 1\n", b"data: chunk 2\n", b"data: [DONE]\n"]
    seen = [(a.target, a.attempt, a.status) for a in rig.translator.attempts]
    # A connect failure races the ext_proc's headers message: it is seen, or not.
    assert [attempt for attempt in seen if attempt[0] != "second"] == [
        ("primary", "1", 429),
        ("backup", "3", 200),
    ]
    assert set(seen) - {("primary", "1", 429), ("backup", "3", 200)} <= {("second", "2", None)}
    assert busy.received == [
        {
            "path": "/primary/v1/chat",
            "credentials": {"authorization": "key-of-primary"},
            "body": {"model": "primary-model", "attempt": "1"},
            "host": "primary.provider.test",
        }
    ]
    assert backup.received == [
        {
            "path": "/backup/v1/chat",
            "credentials": {"x-api-key": "key-of-backup"},
            "body": {"model": "backup-model", "attempt": "3"},
            "host": "backup.provider.test",
        }
    ]
    backup_attempt = rig.translator.attempts[-1]
    # The next attempt starts from the headers the last one left (its rewritten path, its
    # credential): the translator must remove what any target may have been given.
    assert backup_attempt.path in ("/primary/v1/chat", "/second/v1/chat")
    assert backup_attempt.leftover_headers in (["authorization"], ["x-goog-api-key"])
    if rig.translator.buffered_body:
        # The body, though, is the client's own on every attempt: the router replays what it
        # buffered, not what an upstream filter made of it.
        assert backup_attempt.body is not None
        assert json.loads(backup_attempt.body) == {"model": "alias", "stream": True}


async def test_an_upstream_filter_reply_ends_the_request_instead_of_moving_on(rig: Rig) -> None:
    """A limit of Envoy 1.40, kept here so a change shows: an attempt answered by the upstream
    ext_proc itself (an open circuit's target, passed over without a connection) is the final
    answer; the router does not retry it. Open targets must be left out before the route
    picks the cluster (docs/envoy-fallback.md)."""
    skipped, backup = Provider(200), Provider(200)
    skipped_runner, skipped_port = await serve(skipped)
    backup_runner, backup_port = await serve(backup)
    rig.translator.skip.add("primary")
    targets = [Target("primary", skipped_port), Target("backup", backup_port)]
    write_clusters(
        rig.directory,
        [chain_cluster(CHAIN, targets, rig.ca_bundle, buffered_body=rig.translator.buffered_body)],
    )
    await asyncio.to_thread(wait_for_cluster, rig.admin_port, CHAIN)
    try:
        async with (
            aiohttp.ClientSession() as client,
            client.post(
                f"http://127.0.0.1:{rig.listen_port}/v1/chat/completions",
                json={"model": "alias"},
                headers={"x-gatez-cluster": CHAIN},
            ) as answer,
        ):
            await answer.read()
            status, skipped_header = answer.status, answer.headers.get("x-gatez-skipped")
    finally:
        await skipped_runner.cleanup()
        await backup_runner.cleanup()
    assert (status, skipped_header) == (503, "primary")
    assert [attempt.target for attempt in rig.translator.attempts] == ["primary"]
    assert skipped.received == [] and backup.received == []
