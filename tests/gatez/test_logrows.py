"""Log rows: bounded text, a size bound that holds for what protobuf really encodes, and a
lossless trip through protobuf (the wire and the spool)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import random

import pytest

from gatez.logrows import (
    ARGUMENTS_LIMIT,
    PATH_LIMIT,
    PII_ENTITY_NAME_LIMIT,
    PII_ENTITY_TYPES_LIMIT,
    REASON_LIMIT,
    TEXT_LIMIT,
    AgentLogRow,
    AiLogRow,
    RequestLogRow,
    agent_log_from_proto,
    agent_log_to_proto,
    ai_log_from_proto,
    ai_log_to_proto,
    batch_from_proto,
    batch_to_proto,
    clip,
    clip_row,
    clip_utf8,
    encoded_size,
    pii_entity_counts,
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
        attempts=("openai/gpt-4o=429" + text, "azure/gpt-4o=skipped"),
        cache_hit="semantic" + text,
        pii_entities=(("EMAIL_ADDRESS" + text, tokens), ("PHONE_NUMBER", 2)),
    )


def agent_row(text: str = "", *, size: int = 2_000_000) -> AgentLogRow:
    return AgentLogRow(
        time=T0,
        request_id="9f1c2d3e" + text,
        tenant_id="acme",
        caller="jwt:alice" + text,
        session_id_digest="5d41402abc4b2a76b9719d911017c592",
        server="github" + text,
        method="tools/call",
        tool="delete_repo" + text,
        decision="approved",
        reason="tool delete_repo needs approval" + text,
        approver="ops@example.com" + text,
        arguments_digest="9b" * 32,
        arguments_json='{"repo": "acme/site"}' + text,
        status=200,
        latency_ms=30_512.25,
        result_bytes=size,
        protocol_version="2025-11-25",
        node_id="dataplane-1" + text,
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


@pytest.mark.parametrize("seed", range(20))
def test_encoded_size_bounds_what_protobuf_encodes_for_agent_rows(seed: int) -> None:
    rng = random.Random(seed)
    text = random_text(rng, rng.choice([0, 1, 100, 5000, 70_000]))
    row = agent_row(text, size=rng.choice([0, 1, 2**64 - 1]))
    one = control_pb2.IngestLogsRequest(agent_logs=[agent_log_to_proto(row)])
    assert one.ByteSize() <= encoded_size(row) <= one.ByteSize() + 64


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
    assert len(ai.cache_hit) == TEXT_LIMIT
    assert ai.pii_entities == (("EMAIL_ADDRESS" + huge[:51], 19), ("PHONE_NUMBER", 2))
    # Every text field bounded: at most 2 KiB + 6 x 256 characters of 4 bytes.
    assert encoded_size(requests) < 16 * 1024 and encoded_size(ai) < 16 * 1024
    assert clip_row(request_row()) == request_row() and clip_row(ai_row()) == ai_row()


def test_a_clipped_agent_row_keeps_its_arguments_under_16_kib_of_utf8() -> None:
    huge = "€" * 100_000  # 3 bytes each
    row = clip_row(agent_row(huge))
    assert len(row.arguments_json.encode()) <= ARGUMENTS_LIMIT == 16 * 1024
    # Cut on a character boundary: as many whole characters as fit, none broken.
    assert row.arguments_json == ('{"repo": "acme/site"}' + huge).encode()[:ARGUMENTS_LIMIT].decode(
        errors="ignore"
    )
    assert len(row.arguments_json.encode()) > ARGUMENTS_LIMIT - 3
    assert len(row.reason) == REASON_LIMIT
    for text in (row.request_id, row.caller, row.server, row.tool, row.approver, row.node_id):
        assert len(text) == TEXT_LIMIT
    # Numbers and short text untouched.
    assert (row.status, row.result_bytes, row.decision) == (200, 2_000_000, "approved")
    assert encoded_size(row) < 32 * 1024


def test_an_agent_row_that_fits_is_not_copied() -> None:
    row = agent_row()
    assert clip_row(row) is row
    # ASCII arguments up to the limit fit whole; one byte more is cut.
    ascii_arguments = dataclasses.replace(row, arguments_json="a" * ARGUMENTS_LIMIT)
    assert clip_row(ascii_arguments) is ascii_arguments
    longer = clip_row(dataclasses.replace(row, arguments_json="a" * (ARGUMENTS_LIMIT + 1)))
    assert longer.arguments_json == "a" * ARGUMENTS_LIMIT


@pytest.mark.parametrize(
    ("text", "limit", "expected"),
    [
        ("abc", 3, "abc"),
        ("abcd", 3, "abc"),
        ("é" * 4, 8, "é" * 4),  # 8 bytes: fits exactly
        ("é" * 4, 7, "é" * 3),  # the fourth would be cut in two: dropped whole
        ("a𝄞b", 4, "a"),  # a 4-byte character does not fit in the 3 bytes left
        ("a𝄞b", 5, "a𝄞"),
        ("", 0, ""),
    ],
)
def test_clip_utf8_cuts_on_a_character_boundary(text: str, limit: int, expected: str) -> None:
    assert clip_utf8(text, limit) == expected
    assert len(clip_utf8(text, limit).encode()) <= limit


def test_an_agent_row_survives_a_trip_through_protobuf() -> None:
    row = agent_row("é𝄞")
    assert agent_log_from_proto(agent_log_to_proto(row)) == row
    empty = dataclasses.replace(
        row, session_id_digest="", approver="", arguments_json="", reason="", status=0
    )
    wire = agent_log_to_proto(empty).SerializeToString()
    assert agent_log_from_proto(logs_pb2.AgentLog.FromString(wire)) == empty


def test_rows_survive_a_batch_trip_through_protobuf() -> None:
    requests = [request_row(), dataclasses.replace(request_row("é"), status=200, error="")]
    ai = [ai_row(), dataclasses.replace(ai_row("x"), usage_estimated=False, streamed=False)]
    agents = [agent_row(), dataclasses.replace(agent_row("x"), decision="denied", approver="")]
    wire = batch_to_proto(requests, ai, agents).SerializeToString()
    assert batch_from_proto(logs_pb2.LogBatch.FromString(wire)) == (requests, ai, agents)


def test_an_ai_row_survives_a_trip_through_protobuf() -> None:
    row = ai_row("é𝄞")
    wire = ai_log_to_proto(row).SerializeToString()
    assert ai_log_from_proto(logs_pb2.AiLog.FromString(wire)) == row
    # A provider's call: no hit, nothing found.
    plain = dataclasses.replace(row, cache_hit="", pii_entities=(), attempts=())
    wire = ai_log_to_proto(plain).SerializeToString()
    assert ai_log_from_proto(logs_pb2.AiLog.FromString(wire)) == plain


def test_pii_counts_read_from_protobuf_are_sorted_by_entity_type() -> None:
    # A protobuf map has no order; a row's pairs do, so equal rows compare equal.
    message = logs_pb2.AiLog(pii_entities={"US_SSN": 1, "CREDIT_CARD": 3, "IBAN_CODE": 2})
    assert ai_log_from_proto(message).pii_entities == (
        ("CREDIT_CARD", 3),
        ("IBAN_CODE", 2),
        ("US_SSN", 1),
    )


@pytest.mark.parametrize(
    ("counts", "expected"),
    [
        ({}, ()),
        ({"PHONE_NUMBER": 1, "EMAIL_ADDRESS": 2}, (("EMAIL_ADDRESS", 2), ("PHONE_NUMBER", 1))),
        # Nothing found of a type: no entry.
        ({"EMAIL_ADDRESS": 0, "URL": 3}, (("URL", 3),)),
        # A count past UInt32 would make the row unstorable: capped.
        ({"EMAIL_ADDRESS": 2**40}, (("EMAIL_ADDRESS", 2**32 - 1),)),
        # Names past the bound are cut; two cut to the same name count together.
        (
            {"X" * 100: 2, "X" * 90: 3},
            (("X" * PII_ENTITY_NAME_LIMIT, 5),),
        ),
    ],
)
def test_pii_entity_counts_are_bounded_and_sorted(
    counts: dict[str, int], expected: tuple[tuple[str, int], ...]
) -> None:
    assert pii_entity_counts(counts) == expected


def test_pii_entity_counts_keep_at_most_the_bound_of_types() -> None:
    counts = {f"TYPE_{n:03d}": n + 1 for n in range(PII_ENTITY_TYPES_LIMIT + 10)}
    kept = pii_entity_counts(counts)
    assert kept == tuple(sorted(counts.items()))[:PII_ENTITY_TYPES_LIMIT]
