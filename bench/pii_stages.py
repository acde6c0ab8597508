"""`python -m bench.pii_stages`: what PII redaction costs the data plane, stage by stage.

Measured on Flows, in one process, CPU time (`time.process_time_ns`) over many calls:

- **RedactPrompt** on OpenAI chat bodies of about 1 KB and 16 KB, for a tenant whose policy
  replaces every default entity type, in two styles of text with three entities per KB:
  plain prose, and prose dense with numbers (dates, versions, amounts, ticket numbers: every
  run of four digits is a phone-number candidate). Every call gets a body of its own (the phone
  matcher caches its answer per word, so one body over and over would flatter it). Beside it
  the JSON parse and write-back alone, and a tenant without a PII policy. Target (issue 11): at
  most 1 ms per KB.
- **RedactAnswer** per streamed chunk: a ~2,000-delta OpenAI stream (deltas of 1 to 8
  characters, like tokens) through DecodeResponse → RedactAnswer → EncodeResponse, against the
  same stream without output redaction (decoded, and passed on as it came); the difference per
  chunk is what output redaction adds (the redactor's scans and the re-encoding).
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable

import orjson

from extproc.stages.model_route import ModelRouting
from extproc.stages.pii import RedactAnswer, RedactPrompt
from extproc.stages.response import DecodeResponse, EncodeResponse
from gatez.pipeline import Flow, Principal
from gatez.policy import compile_policy
from gatez.v1 import policy_pb2
from tests.support.flows import make_flow

POLICY = compile_policy(
    policy_pb2.PolicySnapshot(
        version=1,
        tenants=[policy_pb2.Tenant(id="acme"), policy_pb2.Tenant(id="plain")],
        routes=[policy_pb2.Route(id="llm", path_prefix="/", kind=policy_pb2.ROUTE_KIND_LLM)],
        providers=[
            policy_pb2.Provider(
                name="openai",
                kind=policy_pb2.PROVIDER_KIND_OPENAI,
                base_url="https://api.openai.com/v1",
            )
        ],
        model_routes=[
            policy_pb2.ModelRoute(id="gpt", alias="gpt", provider="openai", upstream_model="m")
        ],
        pii_policies=[
            policy_pb2.PiiPolicy(
                tenant_id="acme",
                default_action=policy_pb2.PII_ACTION_REPLACE,
                scan_output=True,
            )
        ],
    )
)

STYLES = {
    "prose": (
        "the customer asked whether the order could still be changed before it ships and we "
        "explained that the warehouse picks items in the morning, so any change made today "
        "will be applied; she also wanted to know about returns, which are free within thirty "
        "days, and whether the blue model is back in stock next week"
    ),
    "numbers": (
        "the report covers revenue growth for Q3 2024 across 14 regions and version 2.4.1 of "
        "the pipeline in main.py with 3,200 users on 2024-06-30 at 10:45 and a 12.5% margin "
        "over the plan, see section 4.2 of the draft and the notes from 15/07 on ticket #4821"
    ),
}
WORDS = {style: text.split() for style, text in STYLES.items()}
ENTITIES = (
    "jane.doe@example.com",
    "call 415-555-0132",
    "card 4111 1111 1111 1111",
    "from 192.168.10.24",
    "ssn 536-22-1234",
)


def prose(size: int, rng: random.Random, style: str, entities_per_kb: int = 3) -> str:
    """About `size` characters of text with `entities_per_kb` entities per KB."""
    words: list[str] = []
    length = 0
    every = max(1, 1024 // (entities_per_kb * 7))  # words between entities (~7 chars a word)
    while length < size:
        pool = ENTITIES if len(words) % every == every - 1 else WORDS[style]
        word = rng.choice(pool)
        words.append(word)
        length += len(word) + 1
    return " ".join(words)[:size]


def chat_body(size: int, rng: random.Random, style: str) -> bytes:
    """An OpenAI chat body of about `size` bytes: a system prompt and a few turns."""
    turns = max(1, size // 1024)
    overhead = len(orjson.dumps({"model": "gpt", "messages": []}))
    per_turn = (size - overhead) // (turns + 1) - 40
    messages = [{"role": "system", "content": prose(per_turn, rng, style)}]
    for turn in range(turns):
        role = "user" if turn % 2 == 0 else "assistant"
        messages.append({"role": role, "content": prose(per_turn, rng, style)})
    return orjson.dumps({"model": "gpt", "messages": messages})


def flow_for(body: bytes, tenant: str) -> Flow:
    flow = make_flow(POLICY, path="/v1/chat/completions", body=body)
    flow.principal = Principal(tenant_id=tenant, key_id="k", subject="k")
    return flow


def cpu_per_call_us(call: Callable[[], object], calls: int, rounds: int = 5) -> float:
    """The median over `rounds` of CPU microseconds per call."""
    results = []
    for _ in range(rounds):
        began = time.process_time_ns()
        for _ in range(calls):
            call()
        results.append((time.process_time_ns() - began) / calls / 1000)
    return statistics.median(results)


def bench_prompt(size: int, calls: int, style: str) -> None:
    rng = random.Random(size)
    bodies = [chat_body(size, rng, style) for _ in range(calls * 5)]
    body = bodies[0]
    stage = RedactPrompt()
    flows = [flow_for(b, "acme") for b in bodies]
    pending = iter(flows)

    def redact() -> object:
        return stage.on_request_body(next(pending))

    redact_us = cpu_per_call_us(redact, calls)
    found = flows[0].pii_counts
    json_us = cpu_per_call_us(lambda: orjson.dumps(orjson.loads(body)), calls)
    plain = flow_for(body, "plain")
    plain_us = cpu_per_call_us(lambda: stage.on_request_body(plain), calls)
    # What model routing no longer parses (it takes the parse RedactPrompt made).
    parse_us = cpu_per_call_us(lambda: orjson.loads(body), calls)
    kb = len(body) / 1024
    print(
        f"RedactPrompt {style:8s} {len(body):6d} B: {redact_us:8.1f} µs ="
        f" {redact_us / 1000 / kb:.3f} ms/KB (JSON parse + write {json_us:.1f} µs; parse saved"
        f" in routing {parse_us:.1f} µs; tenant without policy {plain_us:.2f} µs)"
        f" found {dict(found)}"
    )


def openai_stream(deltas: list[str]) -> list[bytes]:
    head = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m"}

    def chunk(delta: dict[str, object], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return b"data: " + orjson.dumps({**head, "choices": [choice], "usage": None}) + b"\n\n"

    usage = {"prompt_tokens": 9, "completion_tokens": 12, "total_tokens": 21}
    return [
        chunk({"role": "assistant", "content": ""}),
        *(chunk({"content": d}) for d in deltas),
        chunk({}, "stop"),
        b"data: " + orjson.dumps({**head, "choices": [], "usage": usage}) + b"\n\n",
        b"data: [DONE]\n\n",
    ]


def stream_flow(tenant: str) -> Flow:
    flow = flow_for(orjson.dumps({"model": "gpt", "messages": [], "stream": True}), tenant)
    routing = ModelRouting()
    routing.on_request_headers(flow)
    routing.on_request_body(flow)
    RedactAnswer().on_request_body(flow)
    flow.take_pending()
    flow.upstream_reached, flow.response_status = True, 200
    flow.response_headers = {"content-type": "text/event-stream"}
    DecodeResponse().on_response_headers(flow)
    flow.take_pending()
    return flow


def run_stream(tenant: str, chunks: list[bytes]) -> float:
    """CPU µs per chunk of the response stages over one stream."""
    decode, redact, encode = DecodeResponse(), RedactAnswer(), EncodeResponse()
    flow = stream_flow(tenant)
    last = len(chunks) - 1
    began = time.process_time_ns()
    for position, chunk in enumerate(chunks):
        flow.response_chunk, flow.end_of_stream = chunk, position == last
        decode.on_response_body(flow)
        redact.on_response_body(flow)
        encode.on_response_body(flow)
        flow.take_pending()
    elapsed = time.process_time_ns() - began
    redact.on_done(flow)
    return elapsed / len(chunks) / 1000


def bench_stream(deltas_count: int, rounds: int, style: str) -> None:
    rng = random.Random(7)
    text = prose(deltas_count * 9 // 2, rng, style)
    deltas, position = [], 0
    while position < len(text):
        step = rng.randint(1, 8)
        deltas.append(text[position : position + step])
        position += step
    chunks = openai_stream(deltas)
    with_us = statistics.median(run_stream("acme", chunks) for _ in range(rounds))
    without_us = statistics.median(run_stream("plain", chunks) for _ in range(rounds))
    print(
        f"Streamed answer {style:8s} {len(chunks)} chunks, {len(text)} chars: {with_us:.1f}"
        f" µs/chunk with output redaction, {without_us:.1f} without:"
        f" +{with_us - without_us:.1f} µs per chunk"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args()
    for style in STYLES:
        for size in (1024, 16 * 1024):
            bench_prompt(size, args.calls if size <= 1024 else max(10, args.calls // 8), style)
    for style in STYLES:
        bench_stream(2000, 5, style)


if __name__ == "__main__":
    main()
