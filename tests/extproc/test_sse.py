"""Server-sent events split out of body chunks that cut events anywhere."""

from __future__ import annotations

from itertools import pairwise

import pytest

from gatez.sse import SseSplitter, event_data

CHUNK_1 = (
    b'data: {"id":"chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG","object":"chat.completion.chunk",'
    b'"created":1741569952,"model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_06737a9306",'
    b'"choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,'
    b'"finish_reason":null}],"usage":null}\n\n'
)
CHUNK_2 = (
    b'data: {"id":"chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG","object":"chat.completion.chunk",'
    b'"created":1741569952,"model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_06737a9306",'
    b'"choices":[{"index":0,"delta":{"content":"Hi"},"logprobs":null,"finish_reason":null}],'
    b'"usage":null}\n\n'
)
USAGE_CHUNK = (
    b'data: {"id":"chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG","object":"chat.completion.chunk",'
    b'"created":1741569952,"model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_06737a9306",'
    b'"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":2,"total_tokens":11}}\n\n'
)
DONE = b"data: [DONE]\n\n"
EVENTS = [CHUNK_1, CHUNK_2, USAGE_CHUNK, DONE]
STREAM = b"".join(EVENTS)


def split_feed(stream: bytes, cuts: list[int]) -> list[bytes]:
    """Feeds `stream` cut at `cuts`, then flushes; returns every event seen, tail included."""
    splitter = SseSplitter()
    events: list[bytes] = []
    bounds = [0, *cuts, len(stream)]
    for start, end in pairwise(bounds):
        events.extend(splitter.feed(stream[start:end]))
    tail = splitter.flush()
    if tail:
        events.append(tail)
    return events


def test_whole_stream_yields_each_event_with_its_blank_line() -> None:
    assert split_feed(STREAM, []) == EVENTS


def test_a_cut_at_any_byte_yields_the_same_events() -> None:
    for cut in range(1, len(STREAM)):
        assert split_feed(STREAM, [cut]) == EVENTS, f"cut at byte {cut}"


def test_one_byte_at_a_time_yields_the_same_events() -> None:
    assert split_feed(STREAM, list(range(1, len(STREAM)))) == EVENTS


def test_an_incomplete_event_is_held_back_until_its_blank_line_arrives() -> None:
    splitter = SseSplitter()
    assert splitter.feed(CHUNK_1[:40]) == []
    assert splitter.feed(CHUNK_1[40:-1]) == []
    assert splitter.feed(CHUNK_1[-1:] + DONE[:6]) == [CHUNK_1]
    assert splitter.feed(DONE[6:]) == [DONE]
    assert splitter.flush() == b""


def test_flush_returns_an_unterminated_last_event_once() -> None:
    splitter = SseSplitter()
    assert splitter.feed(CHUNK_1 + b"data: [DONE]") == [CHUNK_1]
    assert splitter.flush() == b"data: [DONE]"
    assert splitter.flush() == b""


CRLF_STREAM = STREAM.replace(b"\n", b"\r\n")


def test_crlf_events_cut_anywhere_come_out_as_lf_events() -> None:
    # Includes every cut between a "\r" and its "\n".
    for cut in range(1, len(CRLF_STREAM)):
        assert split_feed(CRLF_STREAM, [cut]) == EVENTS, f"cut at byte {cut}"


def test_crlf_one_byte_at_a_time() -> None:
    assert split_feed(CRLF_STREAM, list(range(1, len(CRLF_STREAM)))) == EVENTS


def test_comments_and_named_events_are_events_too() -> None:
    stream = b": keep-alive\n\nevent: message\nid: 7\ndata: {}\n\n"
    assert split_feed(stream, []) == [b": keep-alive\n\n", b"event: message\nid: 7\ndata: {}\n\n"]


def test_extra_blank_lines_between_events_yield_no_empty_events() -> None:
    assert split_feed(b"\n\n" + CHUNK_1 + b"\n\n" + DONE, []) == [CHUNK_1, DONE]


@pytest.mark.parametrize(
    ("event", "data"),
    [
        (DONE, b"[DONE]"),
        (b"data:[DONE]\n\n", b"[DONE]"),
        # Only the one space after the colon belongs to the syntax.
        (b"data:  x\n\n", b" x"),
        (b"data:\n\n", b""),
        (b'event: delta\nid: 3\ndata: {"a":1}\n\n', b'{"a":1}'),
        (b'data: {"a":\ndata: 1}\n\n', b'{"a":\n1}'),
        (b": keep-alive\n\n", None),
        (b"event: ping\n\n", None),
        (b"", None),
    ],
)
def test_event_data(event: bytes, data: bytes | None) -> None:
    assert event_data(event) == data
