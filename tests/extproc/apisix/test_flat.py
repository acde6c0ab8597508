"""The runner's direct flatbuffers codec against the flatc-generated bindings: what the harness
encodes with the bindings, the runner decodes to the same values, and what the runner encodes,
the bindings decode back; garbage is MalformedMessage either way."""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Callable

import pytest

from extproc.apisix.frames import (
    METHODS,
    HttpRequestCall,
    HttpRequestCallReply,
    HttpResponseCall,
    HttpResponseCallReply,
    MalformedMessage,
    Rewrite,
    Stop,
    decode_extra_info_reply,
    decode_http_request_call,
    decode_http_request_call_reply,
    decode_http_response_call,
    decode_http_response_call_reply,
    encode_extra_info_reply,
    encode_http_request_call,
    encode_http_request_call_reply,
    encode_http_response_call,
    encode_http_response_call_reply,
)

ALPHABET = "abcXYZ-_ =&?/é€\x00"


def _text(rng: random.Random, size: int = 8) -> str:
    return "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, size)))


def _latin1(rng: random.Random, size: int = 8) -> str:
    return "".join(chr(rng.randint(0, 255)) for _ in range(rng.randint(0, size)))


def _headers(rng: random.Random) -> tuple[tuple[str, str], ...]:
    return tuple((_text(rng).lower(), _latin1(rng)) for _ in range(rng.randint(0, 5)))


@pytest.mark.parametrize("seed", range(20))
def test_calls_decode_as_the_bindings_encoded_them(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(20):
        call = HttpRequestCall(
            id=rng.randint(0, 2**32 - 1),
            src_ip=bytes(rng.randint(0, 255) for _ in range(rng.choice((0, 4, 16)))),
            method=rng.choice(METHODS),
            path=_text(rng, 20),
            args=tuple(
                (_text(rng), rng.choice((None, _text(rng)))) for _ in range(rng.randint(0, 4))
            ),
            headers=_headers(rng),
            conf_token=rng.randint(0, 2**32 - 1),
        )
        assert decode_http_request_call(encode_http_request_call(call)) == call
        response = HttpResponseCall(call.id, rng.randint(0, 65535), call.headers, call.conf_token)
        assert decode_http_response_call(encode_http_response_call(response)) == response
        result = rng.choice((None, b"", os.urandom(rng.randint(1, 64))))
        assert decode_extra_info_reply(encode_extra_info_reply(result)) == result


@pytest.mark.parametrize("seed", range(20))
def test_replies_read_back_with_the_bindings(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(20):
        stop = Stop(rng.randint(0, 65535), _headers(rng), rng.choice((b"", os.urandom(40))))
        rewrite = Rewrite(
            path=rng.choice((None, "", _text(rng, 20))),
            headers=tuple(
                (_text(rng).lower(), rng.choice((None, _latin1(rng))))
                for _ in range(rng.randint(0, 4))
            ),
            args=tuple(
                (_text(rng), rng.choice((None, _text(rng)))) for _ in range(rng.randint(0, 4))
            ),
            resp_headers=_headers(rng),
            body=rng.choice((None, b"", os.urandom(30))),
        )
        for action in (None, stop, rewrite):
            reply = HttpRequestCallReply(rng.randint(0, 2**32 - 1), action)
            assert decode_http_request_call_reply(encode_http_request_call_reply(reply)) == reply
        response = HttpResponseCallReply(
            rng.randint(0, 2**32 - 1),
            rng.randint(0, 65535),
            tuple(
                (_text(rng).lower(), rng.choice((None, _latin1(rng))))
                for _ in range(rng.randint(0, 4))
            ),
            rng.choice((b"", os.urandom(50))),
        )
        assert (
            decode_http_response_call_reply(encode_http_response_call_reply(response)) == response
        )


@pytest.mark.parametrize(
    "decode", [decode_http_request_call, decode_http_response_call, decode_extra_info_reply]
)
def test_garbage_is_malformed(decode: Callable[[bytes], object]) -> None:
    rng = random.Random(7)
    for _ in range(500):
        # A small root offset, so the reads land inside the buffer and then go astray.
        junk = bytes((rng.randint(0, 40), 0, 0, 0)) + os.urandom(rng.randint(0, 40))
        # Anything but MalformedMessage (struct.error, IndexError...) fails the test.
        with contextlib.suppress(MalformedMessage):
            decode(junk)
