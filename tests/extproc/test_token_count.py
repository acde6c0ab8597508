"""TokenCounter: OpenAI's own BPE files, loaded with no network, counting as OpenAI does."""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import pytest
import tiktoken
import tiktoken_ext.openai_public  # type: ignore[import-untyped]

from extproc.token_count import (
    SPECS,
    TokenCounter,
    bundled_bpe_file,
    encoding_name,
    load_encoding,
)

# Text that exercises every branch of both patterns: contractions, numbers, punctuation runs,
# newlines, non-Latin scripts, emoji, and a special token's text (counted as plain text).
SAMPLE = (
    "Hello! I'm here; they'll've 12345 apples... \n\n\tdef f(x):\n    return x**2  # ok\r\n"
    "Grüße aus Köln — 東京タワー, Привет мир, مرحبا 🙂🚀 <|endoftext|> 3.14159e-10 A/B/C"
)
URLS = {
    "o200k_base": "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken",
    "cl100k_base": "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken",
}


@pytest.mark.parametrize(
    ("name", "hello_world"), [("o200k_base", [24912, 2375]), ("cl100k_base", [15339, 1917])]
)
def test_our_encoding_is_tiktokens_own(
    name: str, hello_world: list[int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # tiktoken's constructor, fed the same file through its cache instead of the network.
    raw = gzip.decompress(bundled_bpe_file(name).read_bytes())
    cache_key = hashlib.sha1(URLS[name].encode()).hexdigest()
    (tmp_path / cache_key).write_bytes(raw)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    reference = tiktoken_ext.openai_public.ENCODING_CONSTRUCTORS[name]()
    theirs = tiktoken.Encoding(**reference)
    ours = load_encoding(name)
    assert reference["pat_str"] == SPECS[name].pattern
    assert reference["special_tokens"] == dict(SPECS[name].special_tokens)
    assert ours.n_vocab == theirs.n_vocab
    assert ours.encode_ordinary(SAMPLE) == theirs.encode_ordinary(SAMPLE)
    assert ours.encode(SAMPLE, allowed_special="all") == theirs.encode(
        SAMPLE, allowed_special="all"
    )
    assert ours.encode("hello world") == hello_world


def test_a_file_that_is_not_openais_is_refused(tmp_path: Path) -> None:
    tampered = gzip.decompress(bundled_bpe_file("cl100k_base").read_bytes()) + b"IQ== 100256\n"
    path = tmp_path / "cl100k_base.tiktoken"
    path.write_bytes(tampered)
    with pytest.raises(ValueError, match="SHA-256"):
        load_encoding("cl100k_base", path)


@pytest.mark.parametrize(
    ("model", "encoding"),
    [
        ("gpt-4o-mini", "o200k_base"),
        ("gpt-4o-2024-08-06", "o200k_base"),
        ("o3-mini", "o200k_base"),
        ("gpt-4.1", "o200k_base"),
        ("gpt-4-0613", "cl100k_base"),
        ("gpt-3.5-turbo", "cl100k_base"),
        # Not OpenAI's, or tiktoken's older encodings: counted with o200k_base.
        ("claude-3-5-sonnet-latest", "o200k_base"),
        ("llama3.1:8b", "o200k_base"),
        ("text-davinci-003", "o200k_base"),
        ("", "o200k_base"),
    ],
)
def test_the_encoding_follows_the_model(model: str, encoding: str) -> None:
    assert encoding_name(model) == encoding


COOKBOOK_MESSAGES = [
    {
        "role": "system",
        "content": "You are a helpful, pattern-following assistant that translates corporate "
        "jargon into plain English.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "New synergies will help drive top-line growth.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Things working well together will increase revenue.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "Let's circle back when we have more bandwidth to touch base on opportunities "
        "for increased leverage.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Let's talk later when we're less busy about how to do better.",
    },
    {
        "role": "user",
        "content": "This late pivot means we don't have time to boil the ocean for the client "
        "deliverable.",
    },
]


@pytest.mark.parametrize(
    ("model", "prompt_tokens"), [("gpt-4-0613", 129), ("gpt-4o", 124), ("gpt-4o-mini", 124)]
)
def test_prompt_tokens_match_what_the_openai_api_reports(
    tokens: TokenCounter, model: str, prompt_tokens: int
) -> None:
    """The example of OpenAI's cookbook ("How to count tokens with tiktoken"), with the
    prompt_tokens its API reported for each model."""
    assert tokens.count_messages(model, {"messages": COOKBOOK_MESSAGES}) == prompt_tokens


def test_text_parts_tool_calls_and_tools_count(tokens: TokenCounter) -> None:
    plain = {"messages": [{"role": "user", "content": "What is the weather in Paris?"}]}
    parts = {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is the weather in Paris?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                ],
            }
        ]
    }
    assert tokens.count_messages("gpt-4o", parts) == tokens.count_messages("gpt-4o", plain)
    call = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
            }
        ],
    }
    with_call = {"messages": [*plain["messages"], call]}
    counted = tokens.count_messages("gpt-4o", with_call)
    expected_call = 3 + tokens.count("gpt-4o", ["assistant", "get_weather", '{"city":"Paris"}'])
    assert counted == tokens.count_messages("gpt-4o", plain) + expected_call
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]
    assert tokens.count_messages("gpt-4o", {**plain, "tools": tools}) > counted - expected_call


@pytest.mark.parametrize("request_body", [None, {}, {"messages": "no"}, {"messages": [1, None]}])
def test_odd_requests_count_what_they_have(tokens: TokenCounter, request_body: object) -> None:
    assert tokens.count_messages("gpt-4o", request_body) in (0, 3)  # type: ignore[arg-type]


def test_before_its_encodings_load_a_counter_uses_the_rule_of_thumb() -> None:
    counter = TokenCounter()
    assert counter.count("gpt-4o", ["x" * 40, "é" * 10]) == 10 + 5
