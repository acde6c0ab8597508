"""Log rows: bounded text, a size bound that holds for what protobuf really encodes, and a
lossless trip through protobuf (the wire and the spool)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import random

import pytest

from gatez.logrows import (
    PATH_LIMIT,
    TEXT_LIMIT,
    AiLogRow,
    RequestLogRow,
    ai_log_to_proto,
    batch_from_proto,
    batch_to_proto,
    clip,
    clip_row,
    encoded_size,
    request_log_to_proto,
)
from gatez.v1 import control_pb2, logs_pb2

T0 = dt.datetime(2026, 3, 10, 9, 30, 15, 123456, tzinfo=dt.UTC)


def request_row(text: str = "", *, path: str = "/v1/chat/completions") -> RequestLogRow:
    return RequestLogRow(
        time=T0,
        request_id="9f1c2d3e" + text,
        tenant_id="acme",
        key_id="jwt:" + text,
        method="POST",
        path=path,
        status=429,
        latency_ms=812.25,
        error="rate_limited" + text,
        node_id="dataplane-1",
    )


def ai_row(text: str = "", *, tokens: int = 19) -> AiLogRow:
    return AiLogRow(
        time=T0,
        request_id="9f1c2d3e" + text,
        tenant_id="acme",
        key_id="key-1" + text,
        provider="openai",
        model_alias="fast" + text,
        upstream_model="gpt-4o-mini",
        input_tokens=tokens,
        output_tokens=tokens,
        status=200,
        latency_ms=812.5,
        ttft_ms=240.25,
        streamed=True,
        node_id="dataplane-1",
        usage_estimated=True,
        cached_input_tokens=tokens,
        cost_usd=1234.5678901,
        price_known=True,
    )


def random_text(rng: random.Random, length: int) -> str:
    alphabet = "abc/?%é€𝄞\n\t\"'\\"
    return "".join(rng.choice(alphabet) for _ in range(length))


@pytest.mark.parametrize("seed", range(20))
def test_encoded_size_bounds_what_protobuf_encodes(seed: int) -> None:
    rng = random.Random(seed)
    text = random_text(rng, rng.choice([0, 1, 100, 5000, 70_000]))
    tokens = rng.choice([0, 1, 2**32 - 1])
    requests, ai = request_row(text, path=text), ai_row(text, tokens=tokens)
    # As elements of the batch messages, which add a tag and a length per row.
    one_request = control_pb2.IngestLogsRequest(request_logs=[request_log_to_proto(requests)])
    one_ai = control_pb2.IngestLogsRequest(ai_logs=[ai_log_to_proto(ai)])
    assert one_request.ByteSize() <= encoded_size(requests) <= one_request.ByteSize() + 64
    assert one_ai.ByteSize() <= encoded_size(ai) <= one_ai.ByteSize() + 64


def test_clip_cuts_only_what_is_too_long() -> None:
    short = "/v1/models"
    assert clip(short, PATH_LIMIT) is short
    assert clip("x" * 5000, PATH_LIMIT) == "x" * PATH_LIMIT
    assert clip("é" * 300) == "é" * TEXT_LIMIT


def test_a_clipped_row_is_small_whatever_went_in() -> None:
    huge = "€" * 100_000
    requests = clip_row(request_row(huge, path=huge))
    ai = clip_row(ai_row(huge))
    assert len(requests.path) == PATH_LIMIT and len(requests.request_id) == TEXT_LIMIT
    # Every text field bounded: at most 2 KiB + 6 x 256 characters of 4 bytes.
    assert encoded_size(requests) < 16 * 1024 and encoded_size(ai) < 16 * 1024
    assert clip_row(request_row()) == request_row() and clip_row(ai_row()) == ai_row()


def test_rows_survive_a_batch_trip_through_protobuf() -> None:
    requests = [request_row(), dataclasses.replace(request_row("é"), status=200, error="")]
    ai = [ai_row(), dataclasses.replace(ai_row("x"), usage_estimated=False, streamed=False)]
    wire = batch_to_proto(requests, ai).SerializeToString()
    assert batch_from_proto(logs_pb2.LogBatch.FromString(wire)) == (requests, ai)
