"""`python -m bench.guardrails`: what the issue-11 guardrails cost, in one run, against plain
Envoy and against Gatez's plain chat path (no guardrails) in the same run.

One canned upstream (its own process, below) answers OpenAI chat completions: a JSON answer whose
text names the answer's serial number and whether the request it got still held the prompt's
e-mail address (so a client sees a cache hit, and whether redaction ran, without asking anyone),
or a stream of `--chunks` text deltas `--interval-us` apart, most of them stamped with their send
time (in letters, which no PII recognizer reads as a number). One stack (`gatez.stack`, Envoy and
the ext_proc data plane, Redis, the control service) has one tenant per configuration, each with
its own API key:

- `plain`: no guardrails, Gatez's chat path as it was before issue 11 (the second baseline);
- `pii`: a PII policy with the default action (REPLACE) on every default entity type;
- `pii-out`: the same on answers only (`scan_output`, `skip_prompts`), streams scanned as
  they stream;
- `budget`: token budgets per day and month far above anything the run spends (every call
  reserves and settles, none is refused);
- `cache`: the answer cache on (exact in Redis, semantic with the local embeddings).

Rows, each measured on its own keep-alive connection(s) from one in-process aiohttp client:

- 1 KB and 16 KB support-ticket prompts (a system prompt and user/assistant turns holding six
  entities: e-mail, phone, card, IBAN, IP, SSN), their numbers different on every call so no
  per-value cache in the scanner is always warm (and the 16 KB one also with the same body every
  call, for what that cache saves): plain Envoy, `plain`, `pii`;
- a short question: plain Envoy, `plain`, `budget`, and on `cache` an exact hit (the filled
  question again), a semantic hit (paraphrases of it that the cache's embedding and guards accept,
  each sent once) and a miss (a new question every call, one the numbers guard tells from the
  others: the exact lookup, the embedding and search, the provider, then the fill, the semantic
  index's background write included in its CPU);
- a streamed answer: plain Envoy, `plain`, `pii-out`; every stamped delta's latency (arrival
  minus send), the time to the first text and to the end of the stream.

Sequential calls (one in flight) run in `--rounds` alternating blocks, so drift on a shared
machine weighs on every row alike; then `--concurrency` calls in flight for `--seconds` per row.
The data plane's CPU (from /proc, its children included) and the Redis commands run
(`INFO commandstats`) over each row's calls give the cost per call. Every answer is checked: a
redacted route's upstream never sees the raw e-mail, the plain one does; a hit carries
`x-gatez-cache: hit`, the `x-gatez-cache-kind` of its row and the filled answer, a miss a fresh
one; a redacted stream holds no raw e-mail but its `<EMAIL_ADDRESS>` tag, the plain stream the
raw value.

Targets (issue 11): PII ≤ 1 ms of data-plane CPU per KB of prompt; exact hit ≤ 2 ms p50 end to
end; semantic hit ≤ 8 ms p50 including the embedding.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import random
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import aiohttp
import grpc
import orjson
import uvloop

from bench.chat import wait_applied
from bench.mcp import RedisCounter, start_plain_envoy
from bench.upstream import _request_length
from gatez.apisix_process import descendants
from gatez.processes import free_port, stop_process, wait_for_port
from gatez.stack import Stack, StackConfig
from gatez.v1 import control_pb2, control_pb2_grpc, policy_pb2

CHAT: Final = "/v1/chat/completions"
MODEL_ALIAS: Final = "bench"
CACHE_HEADER: Final = "x-gatez-cache"
KIND_HEADER: Final = "x-gatez-cache-kind"
# The prompt's e-mail: the upstream says whether a request still held it.
SENTINEL: Final = "jane.doe@example.com"
ANSWER_EMAIL: Final = "help.desk@example.org"
ANSWER_TEXT: Final = re.compile(rb'"content":\s*"answer (\d+) (raw|clean)"')
STREAM_REQUESTED: Final = re.compile(rb'"stream"\s*:\s*true')

# -- the upstream (its own process) ---------------------------------------------------------------

# A streamed answer, cut into deltas of equal length; some cuts fall inside its entities.
STREAMED_ANSWER: Final = (
    "Thanks for your patience. I have checked the order and the refund is on its way; it "
    "usually shows on the statement within a few working days. If it has not arrived by then, "
    f"write to {ANSWER_EMAIL} with the order number, or call the billing line on "
    "+1 415 555 0123 between nine and five. The replacement parcel left the warehouse this "
    "morning and the courier will send a tracking link as soon as it is scanned at the depot. "
)
DELTA_CHARS: Final = 24
# Stamps are CLOCK_MONOTONIC nanoseconds in letters a-p (4 bits each): digits could be
# redacted as phone or card numbers.
STAMP_LETTERS: Final = 14
STAMP: Final = re.compile(rf" zq([a-p]{{{STAMP_LETTERS}}}) ")


def encode_stamp(ns: int) -> str:
    """A stamp as the upstream appends it to a delta's text."""
    letters = "".join(
        chr(97 + (ns >> shift & 15)) for shift in range(4 * STAMP_LETTERS - 4, -4, -4)
    )
    return f" zq{letters} "


def decode_stamp(letters: str) -> int:
    value = 0
    for letter in letters:
        value = value << 4 | (ord(letter) - 97)
    return value


def streamed_deltas(chunks: int) -> tuple[tuple[str, bool], ...]:
    """The answer's `chunks` deltas, each with whether a stamp may follow it: not where the cut
    touches an entity (a stamp there would split the value the redactor must find)."""
    text = STREAMED_ANSWER * (chunks * DELTA_CHARS // len(STREAMED_ANSWER) + 1)
    text = text[: chunks * DELTA_CHARS]
    spans = [
        (m.start() - 1, m.end() + 1)
        for m in re.finditer(re.escape(ANSWER_EMAIL) + r"|\+1 415 555 0123", text)
    ]
    deltas = []
    for i in range(chunks):
        cut = (i + 1) * DELTA_CHARS
        stamped = not any(lo <= cut <= hi for lo, hi in spans)
        deltas.append((text[i * DELTA_CHARS : cut], stamped))
    return tuple(deltas)


def _json_response(body: bytes) -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )


def _http_chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _chunk_event(delta: dict[str, Any], finish: str | None) -> bytes:
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
    event = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 1_763_800_000,
        "model": "bench-model",
        "choices": [choice],
    }
    return b"data: " + orjson.dumps(event) + b"\n\n"


STREAM_HEAD: Final = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
    b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n"
)


class CannedChat(asyncio.Protocol):
    """Answers each request on a connection (neither Envoy nor the client pipelines): a stream
    when the body asks for one, else a JSON answer numbered by `serial` (shared by all
    connections)."""

    def __init__(
        self, serial: Iterator[int], deltas: Sequence[tuple[str, bool]], interval_s: float
    ) -> None:
        self.buffer = b""
        self.transport: asyncio.WriteTransport | None = None
        self.serial, self.deltas, self.interval_s = serial, deltas, interval_s
        self.streams: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but they can write.
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            total = _request_length(self.buffer[:end].lower(), self.buffer, end + 4)
            if total is None:
                return
            body, self.buffer = self.buffer[end + 4 : total], self.buffer[total:]
            assert self.transport is not None
            if STREAM_REQUESTED.search(body):
                task = asyncio.ensure_future(self.stream(self.transport))
                self.streams.add(task)
                task.add_done_callback(self.streams.discard)
                continue
            raw = "raw" if SENTINEL.encode() in body else "clean"
            self.transport.write(_json_response(_answer(next(self.serial), raw, len(body))))

    async def stream(self, transport: asyncio.WriteTransport) -> None:
        transport.write(STREAM_HEAD + _http_chunk(_chunk_event({"role": "assistant"}, None)))
        for text, stamped in self.deltas:
            if transport.is_closing():
                return
            stamp = encode_stamp(time.monotonic_ns()) if stamped else ""
            transport.write(_http_chunk(_chunk_event({"content": text + stamp}, None)))
            await asyncio.sleep(self.interval_s)
        tail = _chunk_event({}, "stop") + b"data: [DONE]\n\n"
        transport.write(_http_chunk(tail) + b"0\r\n\r\n")


def _answer(serial: int, raw: str, request_bytes: int) -> bytes:
    prompt_tokens = request_bytes // 4
    message = {"role": "assistant", "content": f"answer {serial} {raw}", "refusal": None}
    return orjson.dumps(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": 1_763_800_000,
            "model": "bench-model",
            "choices": [
                {"index": 0, "message": message, "logprobs": None, "finish_reason": "stop"}
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": 3,
                "total_tokens": prompt_tokens + 3,
            },
        }
    )


async def serve_upstream(port: int, chunks: int, interval_s: float) -> None:
    """The canned upstream on `port` until killed."""
    serial = itertools.count(1)
    deltas = streamed_deltas(chunks)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: CannedChat(serial, deltas, interval_s), "127.0.0.1", port
    )
    async with server:
        await server.serve_forever()


# -- request bodies -------------------------------------------------------------------------------

SYSTEM_PROMPT: Final = (
    "You are the support assistant of an online shop. Answer briefly, in the customer's "
    "language, and never repeat personal data back."
)
# A handful of entities, spread over the prompt (the phone number and IP differ per call).
ENTITY_SENTENCES: Final = (
    f"Please reply to {SENTINEL} rather than to the shared inbox.",
    "You can also call me on +1 415 555 {phone} in the afternoon.",
    "I paid with the card 4111 1111 1111 1111 and would like the refund on that card.",
    "If a card refund is not possible, use IBAN GB82 WEST 1234 5698 7654 32 instead.",
    "The suspicious login came from 203.0.113.{ip} according to the security mail.",
    "My SSN on file is 536-22-8765, in case you need to verify who I am.",
)
# Ticket prose around them, with the numbers real tickets hold (dates, amounts, order numbers).
FILLER_SENTENCES: Final = (
    "On 2026-{month:02d}-{day:02d} the export of workspace {code} stopped at {pct}% after {mins} "
    "minutes, and the retry an hour later ended the same way.",
    "Invoice INV-{big} lists {qty} seats at ${dollars}.{cents:02d} each; I expected the annual "
    "plan price.",
    "Your colleague suggested build {major}.{minor}.{code} of the desktop app, which should fix a "
    "timeout in the sync client, and asked for the log bundle.",
    "Our dashboard showed {big} requests per minute with a p95 of {ms} ms during the incident, "
    "well above the usual level.",
    "Does the discount of {pct}% still apply to order #{big}, which shipped in {qty} parcels?",
    "I tried again at {hour:02d}:{minute:02d} and the job failed with error code E{code}; the "
    "status page showed no incident at that time.",
    "A teammate sees the same report load in {qty} seconds while I wait more than a minute.",
    "The warehouse confirmed that parcel {big} left on 2026-{month:02d}-{day:02d} and should "
    "arrive within {qty} working days.",
)
# Each field's range, drawn from one random number per sentence (a body is built per call).
FILLER_FIELDS: Final = (
    ("month", 1, 12), ("day", 1, 28), ("code", 1000, 9999), ("pct", 5, 95), ("mins", 2, 90),
    ("big", 10_000, 999_999), ("qty", 2, 40), ("dollars", 5, 400), ("cents", 0, 99),
    ("major", 3, 9), ("minor", 0, 30), ("ms", 120, 9000), ("hour", 0, 23), ("minute", 0, 59),
)  # fmt: skip


def _filler(rng: random.Random) -> str:
    drawn = rng.getrandbits(192)
    drawn, choice = divmod(drawn, len(FILLER_SENTENCES))
    fields: dict[str, int] = {}
    for name, low, high in FILLER_FIELDS:
        drawn, value = divmod(drawn, high - low + 1)
        fields[name] = low + value
    return FILLER_SENTENCES[choice].format_map(fields)


class Tickets:
    """Support-ticket chat requests, a different one per serial.

    The prose is drawn from a pool of `pool` sentences made once (a 16 KB body holds ~150 of
    them, so any two bodies differ, and far more number windows than the scanner's per-window
    cache keeps): building a body per call then costs the client little."""

    def __init__(self, pool: int = 20_000) -> None:
        rng = random.Random(0)
        self.sentences = [_filler(rng) for _ in range(pool)]

    def body(self, size: int, serial: int) -> bytes:
        """A chat request of about `size` bytes: a system prompt, then user and assistant
        turns of about 2 KB (a single user turn when smaller) holding the six entities at even
        intervals through the prose."""
        rng = random.Random(serial)
        entities = [
            sentence.format(phone=f"01{serial % 100:02d}", ip=1 + serial % 254)
            for sentence in ENTITY_SENTENCES
        ]
        budget = size - len(SYSTEM_PROMPT) - 120 - sum(len(e) + 1 for e in entities)
        # ~110 characters a sentence; trimmed to the size below.
        sentences = rng.choices(self.sentences, k=budget // 100 + 1)
        used = 0
        for count, sentence in enumerate(sentences):
            used += len(sentence) + 1
            if used >= budget:
                del sentences[count + 1 :]
                break
        step = max(1, len(sentences) // len(entities))
        for index, entity in enumerate(entities):
            sentences.insert(index * (step + 1), entity)
        turns: list[str] = []
        start = length = 0
        for index, sentence in enumerate(sentences):
            length += len(sentence) + 1
            if length >= 2000:
                turns.append(" ".join(sentences[start : index + 1]))
                start, length = index + 1, 0
        if start < len(sentences):
            turns.append(" ".join(sentences[start:]))
        # Alternating roles, ending on the user's turn.
        messages = [{"role": "system", "content": SYSTEM_PROMPT}]
        for index, text in enumerate(reversed(turns)):
            role = "user" if index % 2 == 0 else "assistant"
            messages.insert(1, {"role": role, "content": text})
        return orjson.dumps({"model": MODEL_ALIAS, "messages": messages})


def question_body(question: str, *, stream: bool = False) -> bytes:
    """A one-question chat request, deterministic sampling (the cache skips sampled ones)."""
    body: dict[str, Any] = {
        "model": MODEL_ALIAS,
        "temperature": 0,
        "messages": [{"role": "user", "content": question}],
    }
    if stream:
        body["stream"] = True
    return orjson.dumps(body)


QUESTION: Final = "How do I reverse a list in Python?"
STREAM_QUESTION: Final = "Where is my refund, and when will the replacement parcel arrive?"


def miss_question(serial: int) -> str:
    """A new question every serial: close to the last ones in embedding space, but the numbers
    guard tells them apart, so the miss runs the whole lookup before the fill."""
    return f"What is {1000 + serial} times {7 + serial % 89}?"


PARAPHRASE_OPENINGS: Final = (
    "How do I reverse a list in Python?",
    "What's the way to reverse a Python list?",
    "How can I reverse a list in Python?",
    "What is the way to reverse a list in Python?",
    "How would I reverse a Python list?",
    "How should I reverse a list in Python?",
    "In Python, how do I reverse a list?",
    "What's the best way to reverse a list in Python?",
    "How do you reverse a list in Python?",
    "How can a list be reversed in Python?",
    "What is the simplest way to reverse a list in Python?",
    "How do I reverse the order of a list in Python?",
)
PARAPHRASE_LEADS: Final = (
    "", "Quick question: ", "Hi! ", "Hello. ", "Please help: ", "Hey! ", "Question: ",
    "Help me out: ", "Beginner here. ", "Stuck on this one: ",
)  # fmt: skip
PARAPHRASE_TAILS: Final = (
    "", " Thanks.", " Thank you!", " Cheers.", " Thanks in advance.", " Much appreciated.",
    " Any idea?", " Thanks a lot.",
)  # fmt: skip


def paraphrases(threshold: float) -> list[str]:
    """Rewordings of QUESTION that the semantic cache should answer from its entry: similarity
    (the cache's own local embeddings) at least `threshold` + 0.02, and no guard objecting."""
    from gatez.cache_guard import compare_questions
    from gatez.embeddings import WordLlamaEmbedder

    candidates = [
        lead + opening + tail
        for opening, lead, tail in itertools.product(
            PARAPHRASE_OPENINGS, PARAPHRASE_LEADS, PARAPHRASE_TAILS
        )
        if lead + opening + tail != QUESTION
    ]
    embedder = WordLlamaEmbedder.load()
    rows = embedder.embed([QUESTION, *candidates])
    similarities = rows[1:] @ rows[0]
    chosen = [
        text
        for text, similarity in zip(candidates, similarities, strict=True)
        if compare_questions(QUESTION, text, float(similarity), threshold + 0.02).hit
    ]
    random.Random(0).shuffle(chosen)
    return chosen


# -- provisioning ---------------------------------------------------------------------------------

TENANTS: Final = ("plain", "pii", "pii-out", "budget", "cache")
# Far above what a run spends: every call reserves and settles, none is refused.
BUDGET_TOKENS: Final = 10**15


def provision(stack: Stack, upstream_port: int) -> dict[str, str]:
    """The tenants (rate limits no run reaches), their API keys, one provider and model alias
    for all, and each tenant's guardrails. The API keys by tenant."""
    channel = grpc.insecure_channel(stack.config.control_address)
    control = control_pb2_grpc.ControlServiceStub(channel)
    md = (("authorization", f"Bearer {stack.config.admin_token}"),)
    keys: dict[str, str] = {}
    for tenant in TENANTS:
        limit = policy_pb2.RateLimit(requests_per_minute=100_000_000, burst=1_000_000)
        control.CreateTenant(
            control_pb2.CreateTenantRequest(tenant=policy_pb2.Tenant(id=tenant, rate_limit=limit)),
            metadata=md,
        )
        key = control.CreateApiKey(control_pb2.CreateApiKeyRequest(tenant_id=tenant), metadata=md)
        keys[tenant] = str(key.secret)
    control.CreateProvider(
        control_pb2.CreateProviderRequest(
            provider=policy_pb2.Provider(
                name="bench-upstream",
                kind=policy_pb2.PROVIDER_KIND_OPENAI,
                base_url=f"http://127.0.0.1:{upstream_port}/v1",
            ),
            api_key="sk-bench",
        ),
        metadata=md,
    )
    control.CreateModelRoute(
        control_pb2.CreateModelRouteRequest(
            model_route=policy_pb2.ModelRoute(
                alias=MODEL_ALIAS, provider="bench-upstream", upstream_model="bench-model"
            )
        ),
        metadata=md,
    )
    replace = policy_pb2.PII_ACTION_REPLACE
    control.SetPiiPolicy(
        control_pb2.SetPiiPolicyRequest(
            pii_policy=policy_pb2.PiiPolicy(tenant_id="pii", default_action=replace)
        ),
        metadata=md,
    )
    control.SetPiiPolicy(
        control_pb2.SetPiiPolicyRequest(
            pii_policy=policy_pb2.PiiPolicy(
                tenant_id="pii-out", default_action=replace, scan_output=True, skip_prompts=True
            )
        ),
        metadata=md,
    )
    control.SetBudget(
        control_pb2.SetBudgetRequest(
            budget=policy_pb2.Budget(
                tenant_id="budget", tokens_per_day=BUDGET_TOKENS, tokens_per_month=BUDGET_TOKENS
            )
        ),
        metadata=md,
    )
    applied = control.SetCachePolicy(
        control_pb2.SetCachePolicyRequest(
            cache_policy=policy_pb2.CachePolicy(tenant_id="cache", enabled=True)
        ),
        metadata=md,
    )
    wait_applied(control, md, applied.policy_version)
    channel.close()
    return keys


# -- the client -----------------------------------------------------------------------------------


class WrongAnswer(RuntimeError):
    """An answer that shows the row did not measure what it says (no redaction, no hit...)."""


Check = Callable[[Mapping[str, str], bytes], None]


@dataclass(frozen=True, slots=True)
class Route:
    """One row: where the calls go, with which key and bodies, how each answer is checked,
    and the body kind ("1k", "16k", "question", "stream") that picks its baselines."""

    name: str
    url: str
    api_key: str
    body: Callable[[int], bytes]
    check: Check
    kind: str
    gatez: bool = True
    stream: bool = False
    concurrent: bool = True
    # Most sequential calls (the semantic row has as many as distinct paraphrases).
    max_calls: int | None = None
    # Work a call leaves for later (the semantic index's write of a fill) is counted in: the
    # CPU is read once the data plane is idle after the row's block.
    settle: bool = False


@dataclass(slots=True)
class Samples:
    """What one row did in one phase (sequential or concurrent)."""

    latencies: list[float] = field(default_factory=list)
    body_bytes: int = 0
    wall_s: float = 0.0
    cpu_s: float = 0.0
    # Redis commands run (those of scripts included), by command.
    redis_commands: dict[str, int] = field(default_factory=dict)
    # Streams: every stamped delta's latency, the time to the first text, the deltas.
    chunk_latencies: list[float] = field(default_factory=list)
    first_text: list[float] = field(default_factory=list)
    deltas: int = 0

    @property
    def calls(self) -> int:
        return len(self.latencies)

    def p(self, q: float, values: list[float] | None = None) -> float:
        """The q-quantile of the latencies (or of `values`), in ms."""
        ordered = sorted(self.latencies if values is None else values)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    def per_call_ms(self, seconds: float) -> float:
        return seconds / self.calls * 1000

    @property
    def rate(self) -> float:
        return self.calls / self.wall_s


class Client:
    """One row's keep-alive connections (as many as calls in flight) and its serial numbers."""

    def __init__(self, route: Route, connections: int, deltas: int) -> None:
        self.route = route
        self.http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=connections),
            timeout=aiohttp.ClientTimeout(total=30),
            skip_auto_headers=("User-Agent",),
        )
        self.headers = {
            "content-type": "application/json",
            "authorization": f"Bearer {route.api_key}",
        }
        self.serials = itertools.count()
        self.deltas = deltas

    async def call(self, samples: Samples) -> None:
        """One call, checked, into `samples`."""
        body = self.route.body(next(self.serials))
        started = time.perf_counter()
        async with self.http.post(self.route.url, data=body, headers=self.headers) as response:
            reply = await response.read()
        elapsed = time.perf_counter() - started
        if response.status != 200:
            raise WrongAnswer(f"{self.route.name}: {response.status} {reply[:300]!r}")
        try:
            self.route.check(response.headers, reply)
        except WrongAnswer as wrong:
            raise WrongAnswer(f"{self.route.name}: {wrong}") from None
        samples.latencies.append(elapsed)
        samples.body_bytes += len(body)

    async def stream(self, samples: Samples) -> None:
        """One streamed call, its deltas' text read as it arrives, checked, into `samples`."""
        body = self.route.body(next(self.serials))
        text = ""
        scanned = 0
        stamps = 0
        pending = b""
        first: float | None = None
        started = time.perf_counter()
        async with self.http.post(self.route.url, data=body, headers=self.headers) as response:
            if response.status != 200:
                raise WrongAnswer(f"{self.route.name}: {response.status} {await response.read()!r}")
            async for data in response.content.iter_any():
                arrived = time.monotonic_ns()
                pending += data
                *events, pending = pending.split(b"\n\n")
                for event in events:
                    text += _delta_text(event)
                if first is None and text:
                    first = time.perf_counter() - started
                for match in STAMP.finditer(text, scanned):
                    samples.chunk_latencies.append((arrived - decode_stamp(match[1])) / 1e9)
                    stamps += 1
                    scanned = match.end()
        elapsed = time.perf_counter() - started
        try:
            self.route.check(response.headers, text.encode())
        except WrongAnswer as wrong:
            raise WrongAnswer(f"{self.route.name}: {wrong}") from None
        if stamps != sum(1 for _, stamped in streamed_deltas(self.deltas) if stamped):
            raise WrongAnswer(f"{self.route.name}: {stamps} stamps in a stream: {text[:300]!r}")
        samples.latencies.append(elapsed)
        samples.first_text.append(first or elapsed)
        samples.deltas += self.deltas
        samples.body_bytes += len(body)

    async def close(self) -> None:
        await self.http.close()


def _delta_text(event: bytes) -> str:
    for line in event.split(b"\n"):
        if line.startswith(b"data:") and line[5:].strip() != b"[DONE]":
            chunk = orjson.loads(line[5:])
            choices = chunk.get("choices") or [{}]
            content = choices[0].get("delta", {}).get("content")
            return content if isinstance(content, str) else ""
    return ""


# -- answer checks --------------------------------------------------------------------------------


def _serial(reply: bytes) -> tuple[int, str]:
    match = ANSWER_TEXT.search(reply)
    if match is None:
        raise WrongAnswer(f"not the canned answer: {reply[:300]!r}")
    return int(match[1]), match[2].decode()


def upstream_answered(headers: Mapping[str, str], reply: bytes) -> None:
    """The upstream answered, not the cache."""
    _serial(reply)
    if headers.get(CACHE_HEADER) == "hit":
        raise WrongAnswer("answered from the cache")


def upstream_saw(expected: str) -> Check:
    """The upstream got the raw e-mail ("raw") or not ("clean"), and no cache answered."""

    def check(headers: Mapping[str, str], reply: bytes) -> None:
        _, seen = _serial(reply)
        if seen != expected:
            raise WrongAnswer(f"the upstream saw a {seen} prompt, expected {expected}")
        upstream_answered(headers, reply)

    return check


class CacheChecks:
    """Hits carry the cache headers (`x-gatez-cache: hit`, the kind expected) and the filled
    answer; misses a fresh answer."""

    def __init__(self) -> None:
        self.filled: int | None = None
        # Answers seen by misses (calls in flight finish out of order: no "newest").
        self.seen: set[int] = set()

    def fill(self, reply: bytes) -> None:
        self.filled, _ = _serial(reply)

    def hit(self, kind: str) -> Check:
        """A hit of `kind` ("exact" or "semantic")."""

        def check(headers: Mapping[str, str], reply: bytes) -> None:
            serial, _ = _serial(reply)
            outcome = (headers.get(CACHE_HEADER), headers.get(KIND_HEADER))
            if outcome != ("hit", kind) or serial != self.filled:
                raise WrongAnswer(
                    f"not an {kind} hit: {CACHE_HEADER}, {KIND_HEADER} = {outcome}, answer "
                    f"{serial} (filled: {self.filled})"
                )

        return check

    def miss(self, headers: Mapping[str, str], reply: bytes) -> None:
        serial, _ = _serial(reply)
        if headers.get(CACHE_HEADER) == "hit" or serial in self.seen:
            raise WrongAnswer(f"a hit where a miss was due: answer {serial}")
        self.seen.add(serial)


def streamed_text(redacted: bool) -> Check:
    """A redacted stream holds the e-mail's tag and never its value; a plain one the value."""

    def check(_: Mapping[str, str], text: bytes) -> None:
        raw = ANSWER_EMAIL.encode() in text
        tagged = b"<EMAIL_ADDRESS>" in text
        if raw == redacted or tagged != redacted:
            raise WrongAnswer(f"stream {'not ' if redacted else ''}redacted: {text[:400]!r}")

    return check


# -- measuring ------------------------------------------------------------------------------------


def cpu_ns(pid: int) -> int:
    """CPU time of one process's live threads in ns, from /proc/<pid>/task/*/schedstat: clock
    ticks (/proc/<pid>/stat) are 10 ms, too coarse for a block of a few hundred calls."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        # A thread that ends between the listing and the read is skipped (threads that ended
        # take their time with them: the data plane's threads live as long as it does).
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            total += int((task / "schedstat").read_text().split()[0])
    return total


class Meter:
    """The data plane's CPU (its process and children) and the Redis commands run."""

    def __init__(self, data_plane: int, redis: RedisCounter) -> None:
        self.pids = (data_plane, *descendants(data_plane))
        self.redis = redis

    def read(self) -> tuple[float, dict[str, int]]:
        """(CPU seconds, Redis commands by command) so far."""
        return self.cpu(), self.redis.snapshot()

    def cpu(self) -> float:
        return sum(cpu_ns(pid) for pid in self.pids) / 1e9

    async def idle(self, timeout_s: float = 10.0) -> None:
        """Waits until the data plane uses under 5 % of a core over 20 ms (its background
        work done), or `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        before = self.cpu()
        while time.monotonic() < deadline:
            await asyncio.sleep(0.02)
            now = self.cpu()
            if now - before < 0.001:
                return
            before = now


async def _block(
    client: Client, samples: Samples, meter: Meter, calls: int, in_flight: int, seconds: float
) -> None:
    """`calls` sequential calls (`in_flight` 1), or `in_flight` at a time for `seconds`, into
    `samples`, with the CPU and Redis commands they cost."""
    cpu_before, redis_before = meter.read()
    started = time.perf_counter()
    one: Callable[[Samples], Awaitable[None]] = (
        client.stream if client.route.stream else client.call
    )
    if in_flight == 1:
        for _ in range(calls):
            await one(samples)
    else:
        deadline = started + seconds

        async def worker() -> None:
            while time.perf_counter() < deadline:
                await one(samples)

        await asyncio.gather(*(worker() for _ in range(in_flight)))
    samples.wall_s += time.perf_counter() - started
    if client.route.settle:
        await meter.idle()
    cpu_after, redis_after = meter.read()
    samples.cpu_s += cpu_after - cpu_before
    # The snapshot's own INFO is not counted; a plain Envoy row runs none of them.
    for name, count in redis_after.items():
        if spent := count - redis_before.get(name, 0):
            samples.redis_commands[name] = samples.redis_commands.get(name, 0) + spent


async def fill_cache(exact: Client, semantic: Client, checks: CacheChecks) -> None:
    """Sends QUESTION until it is an exact hit (the first is a miss, filling the cache; the
    write follows the answer), then waits until the semantic row hits the same entry (the
    semantic index writes in the background, once its embeddings are loaded); 30 s at most."""
    deadline = time.monotonic() + 30
    while True:
        async with exact.http.post(
            exact.route.url, data=question_body(QUESTION), headers=exact.headers
        ) as response:
            reply = await response.read()
        if response.status != 200:
            raise WrongAnswer(f"cache fill: {response.status} {reply[:300]!r}")
        if response.headers.get(CACHE_HEADER) == "hit":
            checks.fill(reply)
            break
        if time.monotonic() > deadline:
            raise WrongAnswer(f"no exact hit after 30 s: {CACHE_HEADER} {response.headers}")
        await asyncio.sleep(0.05)
    while True:
        try:
            await semantic.call(Samples())
            return
        except WrongAnswer:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


async def measure(
    routes: Sequence[Route],
    meter: Meter,
    args: argparse.Namespace,
    fill: Callable[[Mapping[str, Client]], Awaitable[None]],
) -> dict[tuple[str, int], Samples]:
    """Sequential calls in alternating blocks, then `args.concurrency` in flight per row."""
    clients = {r.name: Client(r, max(1, args.concurrency), args.chunks) for r in routes}
    results: dict[tuple[str, int], Samples] = {}
    try:
        await fill(clients)
        for client in clients.values():  # connections, the interpreter's caches, the pools
            warmup = args.warmup // 10 if client.route.stream else args.warmup
            if client.route.max_calls is not None:
                warmup = min(warmup, client.route.max_calls // 10)
            await _block(client, Samples(), meter, warmup, 1, 0)
        for _ in range(args.rounds):
            for client in clients.values():
                route = client.route
                calls = args.streams if route.stream else args.calls
                if route.max_calls is not None:
                    calls = min(calls, route.max_calls)
                samples = results.setdefault((route.name, 1), Samples())
                await _block(client, samples, meter, max(1, calls // args.rounds), 1, 0)
        if args.concurrency > 1:
            for client in clients.values():
                if client.route.stream or not client.route.concurrent:
                    continue
                samples = results.setdefault((client.route.name, args.concurrency), Samples())
                await _block(client, Samples(), meter, 0, args.concurrency, 0.5)
                await _block(client, samples, meter, 0, args.concurrency, args.seconds)
    finally:
        for client in clients.values():
            await client.close()
    return results


def build_routes(
    gateway: str,
    envoy: str,
    keys: Mapping[str, str],
    checks: CacheChecks,
    semantic: list[str],
    tickets: Tickets,
) -> list[Route]:
    """Every row, in the order they alternate."""
    raw, clean = upstream_saw("raw"), upstream_saw("clean")
    chat, plain = f"{gateway}{CHAT}", f"{envoy}{CHAT}"
    question = question_body(QUESTION)
    stream = question_body(STREAM_QUESTION, stream=True)

    def one_kb(serial: int) -> bytes:
        return tickets.body(1024, serial)

    def sixteen_kb(serial: int) -> bytes:
        return tickets.body(16384, serial)

    same = tickets.body(16384, 0)

    def same_sixteen_kb(_: int) -> bytes:
        return same

    def the_question(_: int) -> bytes:
        return question

    def paraphrase(serial: int) -> bytes:
        return question_body(semantic[serial % len(semantic)])

    def new_question(serial: int) -> bytes:
        return question_body(miss_question(serial))

    def the_stream(_: int) -> bytes:
        return stream

    return [
        Route("envoy 1k", plain, "-", one_kb, raw, "1k", gatez=False),
        Route("plain 1k", chat, keys["plain"], one_kb, raw, "1k"),
        Route("pii 1k", chat, keys["pii"], one_kb, clean, "1k"),
        Route("envoy 16k", plain, "-", sixteen_kb, raw, "16k", gatez=False),
        Route("plain 16k", chat, keys["plain"], sixteen_kb, raw, "16k"),
        Route("pii 16k", chat, keys["pii"], sixteen_kb, clean, "16k"),
        Route("pii 16k same", chat, keys["pii"], same_sixteen_kb, clean, "16k", concurrent=False),
        Route(
            "envoy question", plain, "-", the_question, upstream_answered, "question", gatez=False
        ),
        Route("plain question", chat, keys["plain"], the_question, upstream_answered, "question"),
        Route("budget", chat, keys["budget"], the_question, upstream_answered, "question"),
        Route(
            "cache exact hit", chat, keys["cache"], the_question, checks.hit("exact"), "question"
        ),
        Route(
            "cache semantic hit",
            chat,
            keys["cache"],
            paraphrase,
            checks.hit("semantic"),
            "question",
            concurrent=False,
            max_calls=len(semantic) * 4 // 5,
        ),
        Route(
            "cache miss", chat, keys["cache"], new_question, checks.miss, "question", settle=True
        ),
        Route(
            "envoy stream",
            plain,
            "-",
            the_stream,
            streamed_text(False),
            "stream",
            gatez=False,
            stream=True,
        ),
        Route(
            "plain stream",
            chat,
            keys["plain"],
            the_stream,
            streamed_text(False),
            "stream",
            stream=True,
        ),
        Route(
            "pii-out stream",
            chat,
            keys["pii-out"],
            the_stream,
            streamed_text(True),
            "stream",
            stream=True,
        ),
    ]


# -- the report -----------------------------------------------------------------------------------


def _added(row: Samples, base: Samples, q: float = 0.5) -> str:
    return f"{row.p(q) - base.p(q):+.3f} ms ({row.p(q) / base.p(q):.2f}x)"


def report(
    routes: Sequence[Route], results: Mapping[tuple[str, int], Samples], args: argparse.Namespace
) -> None:
    envoy = {r.kind: r.name for r in routes if not r.gatez}
    plain = {r.kind: r.name for r in routes if r.name.startswith("plain ")}
    print(
        f"\nsequential (1 in flight): {args.calls} calls a row ({args.streams} streams of "
        f"{args.chunks} deltas {args.interval_us} µs apart), {args.rounds} alternating blocks"
    )
    print(
        f"{'':20}{'calls':>6}{'body KB':>8}{'p50 ms':>8}{'p99 ms':>8}{'DP CPU ms':>10}"
        f"{'Redis/call':>11}   p50 vs plain Envoy     p50 vs Gatez plain"
    )
    for route in routes:
        row = results[route.name, 1]
        size = row.body_bytes / row.calls / 1024
        line = (
            f"{route.name:>20}{row.calls:>6}{size:>8.2f}{row.p(0.5):>8.3f}{row.p(0.99):>8.3f}"
            f"{row.per_call_ms(row.cpu_s):>10.3f}"
            f"{sum(row.redis_commands.values()) / row.calls:>11.2f}"
        )
        if route.gatez:
            line += f"   {_added(row, results[envoy[route.kind], 1]):<22}"
            if route.name != plain[route.kind]:
                line += f" {_added(row, results[plain[route.kind], 1])}"
        print(line)

    def cpu(name: str, c: int = 1) -> float:
        return results[name, c].per_call_ms(results[name, c].cpu_s)

    def kb(name: str) -> float:
        row = results[name, 1]
        return row.body_bytes / row.calls / 1024

    print("\nPII on prompts (default REPLACE, every default entity), added data-plane CPU:")
    for kind in ("1k", "16k"):
        for c in sorted({c for (n, c) in results if n == f"pii {kind}"}):
            added = cpu(f"pii {kind}", c) - cpu(f"plain {kind}", c)
            print(
                f"  {kind:>4} c={c}: {added:+.3f} ms per call, {added / kb(f'pii {kind}'):.3f} ms "
                "per KB (target <= 1 ms per KB)"
            )
    same = cpu("pii 16k same") - cpu("plain 16k")
    print(f"  16k, the same body every call (c=1): {same / kb('pii 16k same'):.3f} ms per KB")

    streams = {
        name: results[name, 1] for name in ("envoy stream", "plain stream", "pii-out stream")
    }
    base, redacted = streams["plain stream"], streams["pii-out stream"]
    print(f"\nstreamed output redaction ({args.chunks} deltas of {DELTA_CHARS} characters):")
    for name, row in streams.items():
        print(
            f"  {name:>15}: delta latency p50 {row.p(0.5, row.chunk_latencies):.3f} ms, "
            f"p99 {row.p(0.99, row.chunk_latencies):.3f} ms; first text p50 "
            f"{row.p(0.5, row.first_text):.3f} ms; whole stream p50 {row.p(0.5):.3f} ms; "
            f"data-plane CPU {row.cpu_s / row.deltas * 1e6:.1f} µs per delta"
        )
    chunk_cpu = (redacted.cpu_s / redacted.deltas - base.cpu_s / base.deltas) * 1e6
    per_chunk_wall = (redacted.p(0.5) - base.p(0.5)) / args.chunks * 1000
    held = redacted.p(0.5, redacted.chunk_latencies) - base.p(0.5, base.chunk_latencies)
    print(
        f"  added per delta: {chunk_cpu:+.1f} µs data-plane CPU; {per_chunk_wall:+.1f} µs of "
        f"the whole stream's p50; each delta's text reaches the client {held:+.3f} ms later "
        "(p50; the 128-character look-behind holds it back)"
    )

    q = "plain question"
    print("\nbudgets (reserve + settle), vs Gatez plain on the same question:")
    print(
        f"  added p50 {_added(results['budget', 1], results[q, 1])}, added CPU "
        f"{cpu('budget') - cpu(q):+.3f} ms per call"
    )
    print("\nanswer cache (targets: exact hit <= 2 ms p50, semantic hit <= 8 ms p50):")
    for name in ("cache exact hit", "cache semantic hit", "cache miss"):
        row = results[name, 1]
        print(
            f"  {name:>18}: p50 {row.p(0.5):.3f} ms, p99 {row.p(0.99):.3f} ms; vs plain Envoy "
            f"{_added(row, results['envoy question', 1])}; vs Gatez plain "
            f"{_added(row, results[q, 1])}, CPU {cpu(name) - cpu(q):+.3f} ms per call"
        )

    print("\nRedis commands per call (scripts' own included; background work of the stack too):")
    for name in ("plain question", "budget", "cache exact hit", "cache semantic hit", "cache miss"):
        row = results[name, 1]
        ranked = sorted(row.redis_commands.items(), key=lambda item: -item[1])
        detail = ", ".join(f"{command} {count / row.calls:.2f}" for command, count in ranked[:8])
        print(f"  {name:>18}: {detail}")

    concurrent = sorted({c for (_, c) in results if c > 1})
    for c in concurrent:
        print(f"\n{c} in flight for {args.seconds:g} s:")
        print(f"{'':20}{'calls/s':>9}{'p50 ms':>8}{'p99 ms':>8}{'DP CPU ms':>10}   throughput vs")
        for route in routes:
            if (route.name, c) not in results:
                continue
            row = results[route.name, c]
            line = (
                f"{route.name:>20}{row.rate:>9.0f}{row.p(0.5):>8.3f}{row.p(0.99):>8.3f}"
                f"{row.per_call_ms(row.cpu_s):>10.3f}"
            )
            if route.gatez:
                line += f"   Envoy {row.rate / results[envoy[route.kind], c].rate:.2f}x"
                base_name = plain[route.kind]
                if route.name != base_name and (base_name, c) in results:
                    line += f", Gatez plain {row.rate / results[base_name, c].rate:.2f}x"
            print(line)


# -- main -----------------------------------------------------------------------------------------


def start_upstream(args: argparse.Namespace) -> tuple[int, subprocess.Popen[bytes]]:
    """The canned upstream on a free port, ready."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.guardrails", "--serve-upstream", "--port", str(port),
         "--chunks", str(args.chunks), "--interval-us", str(args.interval_us)]
    )  # fmt: skip
    try:
        wait_for_port(port)
    except BaseException:
        stop_process(process)
        raise
    return port, process


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--calls", type=int, default=600, help="sequential calls per row")
    parser.add_argument("--streams", type=int, default=45, help="sequential streams per row")
    parser.add_argument("--chunks", type=int, default=50, help="text deltas per stream")
    parser.add_argument(
        "--interval-us", type=int, default=1000, help="between deltas (uvloop timers: >= 1 ms)"
    )
    parser.add_argument("--rounds", type=int, default=15, help="alternating blocks")
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--concurrency", type=int, default=8, help="calls in flight (0: none)")
    parser.add_argument("--seconds", type=float, default=2.0, help="of each concurrent row")
    parser.add_argument("--serve-upstream", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_upstream:
        uvloop.run(serve_upstream(args.port, args.chunks, args.interval_us / 1e6))
        return

    started = time.monotonic()
    # Chosen before the stack starts: loading the embeddings here costs the run ~1 s.
    semantic = paraphrases(0.85)
    upstream_port, upstream = start_upstream(args)
    with tempfile.TemporaryDirectory(prefix="gatez-bench-guardrails-") as tmp:
        work = Path(tmp)
        envoy_port, envoy = start_plain_envoy(work, upstream_port)
        config = StackConfig.ephemeral(work / "stack")
        config.log_level = "WARNING"
        try:
            with Stack(config) as stack:
                keys = provision(stack, upstream_port)
                checks = CacheChecks()
                envoy_url = f"http://127.0.0.1:{envoy_port}"
                routes = build_routes(
                    config.gateway_url, envoy_url, keys, checks, semantic, Tickets()
                )
                counter = RedisCounter(config)
                try:
                    meter = Meter(stack.processes["dataplane"].pid, counter)

                    async def fill(clients: Mapping[str, Client]) -> None:
                        exact, semantic = clients["cache exact hit"], clients["cache semantic hit"]
                        await fill_cache(exact, semantic, checks)

                    results = uvloop.run(measure(routes, meter, args, fill))
                finally:
                    counter.close()
        finally:
            stop_process(envoy)
            stop_process(upstream)
    report(routes, results, args)
    print(
        f"\n{len(semantic)} paraphrases, each sent once at most; {len(checks.seen)} misses "
        "filled the cache; data plane: the ext_proc process and its children; "
        f"{time.monotonic() - started:.0f} s in all"
    )


if __name__ == "__main__":
    main()
