"""Every request answered properly and logged, through the real stack.

- Behind Envoy: requests Envoy answers itself (a bad header, headers too large, Transfer-Encoding
  with Content-Length, an Upgrade no route serves, a body over the buffer limit) come back with
  the right 4xx and an OpenAI-style JSON body over the same connection, never a reset or a 500,
  and each has exactly one log row, listed with `unauthenticated` when no tenant was reached.
  A client's x-request-id is never the log row's id; the one the response carries is.
- Behind both proxies: only allowlisted client headers reach the provider, and a body with
  duplicate keys reaches it once, with the value routing saw.
"""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import openai
import orjson
import pytest

from gatez.stack import Stack
from gatez.v1 import control_pb2, logs_pb2
from tests.e2e.conftest import Admin, TenantAccess
from tests.e2e.test_chat import MESSAGES, wait_for_request_logs
from tests.fakes.openai_upstream import UpstreamServer

# Envoy's own replies: these tests run behind Envoy only (APISIX's are nginx's, not ours).
ENVOY_ONLY = pytest.mark.parametrize("stack", ["envoy", "envoy-grpcio"], indirect=True)


def exchange(port: int, *parts: bytes, pause_s: float = 0.0) -> tuple[int, dict[str, str], bytes]:
    """Sends raw bytes on a fresh connection (`pause_s` between parts) and reads one HTTP/1
    response: its status, lower-case headers and body. Fails on a reset or no answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        for index, part in enumerate(parts):
            if index and pause_s:
                time.sleep(pause_s)
            try:
                conn.sendall(part)
            except (BrokenPipeError, ConnectionResetError):
                break  # Envoy answered early and closed; its answer is still readable
        received = b""
        while b"\r\n\r\n" not in received or len(received) < _expected_length(received):
            chunk = conn.recv(65536)
            assert chunk, f"connection closed without a (whole) answer: {received!r}"
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, body


def _expected_length(received: bytes) -> int:
    head, sep, _ = received.partition(b"\r\n\r\n")
    if not sep:
        return 1 << 30
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(head) + 4 + int(value)
    return len(received)


def unauthenticated_rows(admin: Admin) -> list[logs_pb2.RequestLog]:
    return list(
        admin.control.ListRequestLogs(
            control_pb2.ListRequestLogsRequest(unauthenticated=True, limit=1000),
            metadata=admin.metadata,
        ).request_logs
    )


def settled_unauthenticated_ids(admin: Admin, timeout_s: float = 10.0) -> set[str]:
    """The request ids of the rows that reached no tenant, once earlier tests' rows have all
    landed (two reads a flush apart agree: Envoy's log flushes every 0.5 s, the sink's 1 s)."""
    deadline = time.monotonic() + timeout_s
    seen = {row.request_id for row in unauthenticated_rows(admin)}
    while time.monotonic() < deadline:
        time.sleep(1.5)
        now = {row.request_id for row in unauthenticated_rows(admin)}
        if now == seen:
            return now
        seen = now
    raise AssertionError("rows kept arriving")


def wait_until(probe: Callable[[], Any], timeout_s: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (value := probe()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)
    return value


LOCAL_REPLIES: list[tuple[str, bytes, int, str]] = [
    (
        "bad-header",
        b"GET /v1/models HTTP/1.1\r\nHost: gw\r\nBad Header: y\r\n\r\n",
        400,
        "http1.codec_error",
    ),
    (
        "headers-too-large",
        b"GET /v1/models HTTP/1.1\r\nHost: gw\r\nx-big: " + b"a" * 70_000 + b"\r\n\r\n",
        431,
        "http1.headers_too_large",
    ),
    (
        "te-and-cl",
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
        "http1.content_length_and_chunked_not_allowed",
    ),
    (
        "upgrade",
        b"GET /v1/models HTTP/1.1\r\nHost: gw\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        403,
        "upgrade_failed",
    ),
]


@ENVOY_ONLY
def test_replies_envoy_makes_itself_are_json_4xx_and_logged_once(
    stack: Stack, admin: Admin
) -> None:
    # Other tests' refusals may still be on their way to the log store.
    before = settled_unauthenticated_ids(admin)
    answered: dict[str, str] = {}
    for case, raw, status, code in LOCAL_REPLIES:
        got, headers, body = exchange(stack.config.listen_port, raw)
        assert (got, headers["content-type"]) == (status, "application/json"), case
        error = orjson.loads(body)["error"]
        assert (error["type"], error["code"]) == ("invalid_request_error", code), case
        assert error["message"], case
        answered[code] = headers.get("x-request-id", "")
    # The gateway's own refusal, for comparison: the data plane's row, not a second one.
    got, headers, body = exchange(
        stack.config.listen_port, b"GET /v1/models HTTP/1.1\r\nHost: gw\r\n\r\n"
    )
    assert got == 401
    assert orjson.loads(body)["error"]["type"] == "authentication_error"
    answered["authentication_error"] = headers["x-request-id"]

    def new_rows() -> list[logs_pb2.RequestLog]:
        rows = [r for r in unauthenticated_rows(admin) if r.request_id not in before]
        return rows if len(rows) >= len(answered) else []

    wait_until(new_rows)
    time.sleep(1.5)  # a second row would come with the next flushes (Envoy 0.5 s, sink 1 s)
    rows = new_rows()
    assert sorted(r.error for r in rows) == sorted(answered)
    by_error = {r.error: r for r in rows}
    for case, _, status, code in LOCAL_REPLIES:
        assert by_error[code].status == status, case
    # Envoy minted an id once the headers were whole: the response and the row share it.
    assert by_error["upgrade_failed"].request_id == answered["upgrade_failed"]
    assert by_error["authentication_error"].request_id == answered["authentication_error"]
    assert {by_error["upgrade_failed"].path, by_error["authentication_error"].path} == {
        "/v1/models"
    }


@ENVOY_ONLY
def test_a_body_over_the_buffer_limit_is_a_json_413_and_logged(
    stack: Stack, tenant: TenantAccess, admin: Admin
) -> None:
    size = 17 * 1024 * 1024  # over the listener's 16 MiB buffer limit
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\n"
        f"Authorization: Bearer {tenant.api_key}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {size}\r\n\r\n"
    ).encode()
    # The body after the data plane asked for it (its first answer), as a client streams it.
    status, headers, body = exchange(
        stack.config.listen_port, head, b'{"model":"' + b"x" * (size - 10), pause_s=0.3
    )
    assert (status, headers["content-type"]) == (413, "application/json")
    error = orjson.loads(body)["error"]
    assert (error["type"], error["code"]) == ("invalid_request_error", "request_payload_too_large")
    (row,) = wait_for_request_logs(admin, tenant.tenant_id, 1)
    assert (row.request_id, row.status) == (headers["x-request-id"], 413)


@ENVOY_ONLY
def test_a_clients_request_id_is_not_the_log_rows(
    stack: Stack, tenant: TenantAccess, admin: Admin, upstream: UpstreamServer
) -> None:
    client_id = f"client-chosen-{uuid.uuid4().hex}"
    response = httpx.post(
        f"{stack.config.gateway_url}/v1/chat/completions",
        headers={"authorization": f"Bearer {tenant.api_key}", "x-request-id": client_id},
        json={"model": "gpt-test", "messages": MESSAGES},
    )
    assert response.status_code == 200, response.text
    gateway_id = response.headers["x-request-id"]
    assert gateway_id != client_id
    (row,) = wait_for_request_logs(admin, tenant.tenant_id, 1)
    assert row.request_id == gateway_id
    assert upstream.recorder.requests[-1].header("x-request-id") == gateway_id


# Beyond the provider's allowlist: each must be removed before the request leaves the gateway.
CLIENT_EXTRAS = {
    "cookie": "session=s3cr3t",
    "x-forwarded-for": "203.0.113.9",
    "x-real-ip": "203.0.113.9",
    "forwarded": "for=203.0.113.9",
    "via": "1.1 corp-proxy",
    "x-envoy-retry-on": "5xx",
    "x-envoy-custom": "1",
    "x-custom-trace": "t-1",
    "openai-organization": "org-client",
}


def test_only_allowlisted_client_headers_reach_the_provider(
    stack: Stack, gateway_url: str, tenant: TenantAccess, upstream: UpstreamServer
) -> None:
    client = openai.OpenAI(
        base_url=gateway_url,
        api_key=tenant.api_key,
        max_retries=0,
        default_headers=CLIENT_EXTRAS,
    )
    client.chat.completions.create(model="gpt-test", messages=MESSAGES)
    reached = upstream.recorder.requests[-1]
    assert reached.path == "/v1/chat/completions"
    # What the provider gets: the allowlist, the gateway's key and id, and framing (and behind
    # APISIX the header its traffic-split routes on, which names the provider).
    gateway = {"x-gatez-provider"} if stack.config.proxy == "apisix" else set()
    assert set(reached.headers) <= {
        "host", "content-type", "content-length", "accept", "authorization", "x-request-id",
        *gateway,
    }, sorted(reached.headers)  # fmt: skip
    assert reached.header("authorization") == "Bearer sk-upstream-secret-for-tests"
    assert reached.header("content-type") == "application/json"
    # The SDK's own telemetry headers (x-stainless-*) and user-agent are client headers too.
    assert not any(name.startswith(("x-stainless", "x-envoy")) for name in reached.headers)


@pytest.mark.parametrize(
    ("first", "last", "status"),
    [
        # Routing reads the last `model` (as orjson does); the provider gets that one, once.
        ("no-such-model", "gpt-test", 200),
        # The other way round the request is refused: the unknown last one is what was routed.
        ("gpt-test", "no-such-model", 404),
    ],
)
def test_a_body_with_duplicate_keys_reaches_the_provider_once_as_routed(
    gateway_url: str,
    tenant: TenantAccess,
    upstream: UpstreamServer,
    first: str,
    last: str,
    status: int,
) -> None:
    before = len(upstream.recorder.requests)
    messages = orjson.dumps(MESSAGES).decode()
    body = f'{{"model":"{first}","messages":{messages},"model":"{last}"}}'
    response = httpx.post(
        f"{gateway_url}/chat/completions",
        headers={"authorization": f"Bearer {tenant.api_key}", "content-type": "application/json"},
        content=body,
    )
    assert response.status_code == status, response.text
    if status != 200:
        assert response.json()["error"]["code"] == "model_not_found"
        assert len(upstream.recorder.requests) == before
        return
    reached = upstream.recorder.requests[-1]
    assert reached.body.count(b'"model"') == 1
    assert reached.json["model"] == "upstream-model-1"
