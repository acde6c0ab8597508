"""The answer cache's keys and kept answers: what shares an entry, what never does, and answers
kept and replayed without loss."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from gatez.answer_cache import (
    MAX_ANSWER_BYTES,
    WORDS_PER_DELTA,
    Bypass,
    CachedAnswer,
    Fingerprint,
    NotStorable,
    StreamedAnswer,
    answer_key,
    answer_key_pattern,
    fingerprint,
)
from gatez.guardrails import CacheSettings
from gatez.translate.model import (
    ChatRequest,
    ChatResponse,
    ErrorInfo,
    ErrorKind,
    MessageStart,
    MessageStop,
    StopReason,
    StreamError,
    Text,
    TextDelta,
    ToolCall,
    Usage,
    UsageUpdate,
)
from gatez.translate.schemas import ANTHROPIC_MESSAGES, GEMINI, OLLAMA_CHAT, OPENAI_CHAT, WireSchema

SETTINGS = CacheSettings()
TOOLS_TOO = CacheSettings(cache_tool_calls=True)
SAMPLED_TOO = CacheSettings(cache_sampled=True)


def openai(*messages: dict[str, Any], **fields: Any) -> ChatRequest:
    body = {"model": "gpt-4o-mini", "messages": list(messages), **fields}
    return OPENAI_CHAT.decode_request(orjson.dumps(body), model="", stream=False)


def anthropic(*messages: dict[str, Any], **fields: Any) -> ChatRequest:
    body = {"model": "claude-haiku", "max_tokens": 1024, "messages": list(messages), **fields}
    return ANTHROPIC_MESSAGES.decode_request(orjson.dumps(body), model="", stream=False)


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict[str, Any]:
    return {"role": "assistant", "content": text}


SYSTEM = {"role": "system", "content": "You are a terse geography tutor."}


def key(
    request: ChatRequest, settings: CacheSettings = SETTINGS, alias: str = "fast"
) -> Fingerprint:
    return fingerprint(request, alias=alias, settings=settings)


# --- what shares an entry ------------------------------------------------------------------


def test_one_question_in_three_client_schemas_is_one_entry() -> None:
    """Model names, max_tokens, stream, tag extras and text layout are not the question."""
    by_openai = key(
        openai(
            SYSTEM,
            user("What is the  capital\nof France?"),
            max_tokens=50,
            stream=True,
            user="end-user-7",
            stream_options={"include_usage": True},
        )
    )
    by_anthropic = key(
        anthropic(
            {
                "role": "user",
                "content": [{"type": "text", "text": "What is the capital of France?"}],
            },
            system=[{"type": "text", "text": "You are a terse geography tutor."}],
            metadata={"user_id": "u-1"},
            stream=False,
        )
    )
    gemini_body = {
        "systemInstruction": {"parts": [{"text": "You are a terse geography tutor."}]},
        "contents": [{"role": "user", "parts": [{"text": "What is the capital of France? "}]}],
        "generationConfig": {"maxOutputTokens": 300},
    }
    by_gemini = key(
        GEMINI.decode_request(orjson.dumps(gemini_body), model="gemini-2.0-flash", stream=True)
    )

    assert by_openai == by_anthropic == by_gemini
    assert by_openai.cacheable and by_openai.why_not is None
    assert by_openai.question == "What is the capital of France?"
    assert len(by_openai.exact) == len(by_openai.scope) == 64
    assert by_openai.exact != by_openai.scope


def test_a_paraphrase_shares_the_scope_but_not_the_exact_entry() -> None:
    asked = key(openai(SYSTEM, user("What is the capital of France?")))
    paraphrase = key(openai(SYSTEM, user("Which city is the capital of France?")))

    assert asked.scope == paraphrase.scope
    assert asked.exact != paraphrase.exact
    assert paraphrase.question == "Which city is the capital of France?"


BASE: dict[str, Any] = {"temperature": 0}


@pytest.mark.parametrize(
    ("alias", "fields"),
    [
        ("smart", BASE),
        ("fast", {**BASE, "messages_system": "You are a verbose geography tutor."}),
        ("fast", {}),  # temperature unset is not temperature 0
        ("fast", {**BASE, "stop": ["\n"]}),
        ("fast", {**BASE, "response_format": {"type": "json_object"}}),
        ("fast", {**BASE, "seed": 7}),
        (
            "fast",
            {
                **BASE,
                "tools": [
                    {
                        "type": "function",
                        "function": {
                            "name": "lookup_city",
                            "parameters": {"type": "object", "properties": {}},
                        },
                    }
                ],
            },
        ),
    ],
    ids=["alias", "system", "temperature", "stop", "response_format", "seed", "tools"],
)
def test_what_changes_the_answer_changes_the_scope(alias: str, fields: dict[str, Any]) -> None:
    """Model alias, system prompt, tools, sampling and essential extras all belong to the scope:
    a similar question under any other one is a near miss, never a hit."""
    fields = dict(fields)
    system = fields.pop("messages_system", SYSTEM["content"])
    question = user("What is the capital of France?")
    base = key(openai(SYSTEM, question, **BASE))

    other = key(openai({"role": "system", "content": system}, question, **fields), alias=alias)

    assert other.scope != base.scope
    assert other.exact != base.exact


def test_the_scope_holds_the_earlier_turns_and_the_question_is_the_last_user_turn() -> None:
    def conversation(first: str, answer: str, last: str) -> Fingerprint:
        return key(openai(SYSTEM, user(first), assistant(answer), user(last)))

    about_france = conversation("Capital of France?", "Paris.", "And its population?")
    about_spain = conversation("Capital of Spain?", "Madrid.", "And its population?")
    about_france_again = conversation("Capital of France?", "Paris.", "How many people live there?")

    # The same follow-up means something else after another first turn.
    assert about_france.question == about_spain.question == "And its population?"
    assert about_france.scope != about_spain.scope
    assert about_france.exact != about_spain.exact
    # A rephrased follow-up in the same conversation: same scope, for the semantic tier.
    assert about_france_again.scope == about_france.scope
    assert about_france_again.exact != about_france.exact
    # A first turn is not the same scope as a later one with that text.
    assert key(openai(SYSTEM, user("And its population?"))).scope != about_france.scope


def test_whitespace_is_collapsed_but_case_and_words_are_kept() -> None:
    spaced = key(openai(user("  Is  Python\n\tstatically   typed? ")))
    assert spaced == key(openai(user("Is Python statically typed?")))
    assert spaced.exact != key(openai(user("is python statically typed?"))).exact


# --- what is not cached --------------------------------------------------------------------


def tool_call(call_id: str = "call_Xy12", arguments: str = '{"city": "Paris"}') -> dict[str, Any]:
    function = {"name": "weather", "arguments": arguments}
    return {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"id": call_id, "type": "function", "function": function}],
    }


def tool_result(call_id: str = "call_Xy12") -> dict[str, Any]:
    return {"role": "tool", "tool_call_id": call_id, "content": "18°C, sunny"}


CALL = tool_call()
RESULT = tool_result()


def test_turns_with_tool_calls_or_results_are_not_cached_unless_the_policy_says_so() -> None:
    after_result = openai(user("Weather in Paris?"), CALL, RESULT)
    after_call = openai(user("Weather in Paris?"), CALL, user("Thanks! And tomorrow?"))

    assert key(after_result).why_not is Bypass.TOOL_CALLS
    assert key(after_call).why_not is Bypass.TOOL_CALLS
    assert not key(after_result).cacheable
    # Allowed: the result turn has no question text, but tool results may be cached.
    assert key(after_result, TOOLS_TOO).cacheable
    assert key(after_result, TOOLS_TOO).question == ""
    assert key(after_call, TOOLS_TOO).cacheable


def test_tool_call_ids_do_not_split_entries_but_arguments_do() -> None:
    def history(call_id: str, arguments: str) -> Fingerprint:
        turns = (user("Weather in Paris?"), tool_call(call_id, arguments), tool_result(call_id))
        return key(openai(*turns), TOOLS_TOO)

    first = history("call_Xy12", '{"city": "Paris"}')
    assert history("call_9QzA", '{"city":"Paris"}') == first
    assert history("call_Xy12", '{"city": "Lyon"}').exact != first.exact


@pytest.mark.parametrize(
    ("request_", "cacheable"),
    [
        (openai(user("Hi"), temperature=0), True),
        (openai(user("Hi")), True),  # unset counts as deterministic (module doc)
        (openai(user("Hi"), temperature=0.7), False),
        (openai(user("Hi"), top_p=0.9), False),
        (openai(user("Hi"), top_p=1), True),
        (openai(user("Hi"), n=1), True),
        (openai(user("Hi"), n=3), False),
        (anthropic(user("Hi"), top_k=40), False),
        (anthropic(user("Hi"), top_k=1), True),
        (
            GEMINI.decode_request(
                orjson.dumps(
                    {
                        "contents": [{"role": "user", "parts": [{"text": "Hi"}]}],
                        "generationConfig": {"candidateCount": 2},
                    }
                ),
                model="gemini-2.0-flash",
                stream=False,
            ),
            False,
        ),
        (
            OLLAMA_CHAT.decode_request(
                orjson.dumps(
                    {"model": "llama3.2", "messages": [user("Hi")], "options": {"top_k": 20}}
                ),
                model="",
                stream=False,
            ),
            False,
        ),
    ],
    ids=[
        "temperature-0",
        "unset",
        "temperature-0.7",
        "top_p-0.9",
        "top_p-1",
        "n-1",
        "n-3",
        "top_k-40",
        "top_k-1",
        "gemini-candidates",
        "ollama-top_k",
    ],
)
def test_non_deterministic_sampling_is_not_cached_unless_the_policy_says_so(
    request_: ChatRequest, cacheable: bool
) -> None:
    assert key(request_).cacheable is cacheable
    assert key(request_).why_not is (None if cacheable else Bypass.SAMPLED)
    assert key(request_, SAMPLED_TOO).cacheable


@pytest.mark.parametrize(
    "request_",
    [
        openai(user("Hi"), logprobs=True, top_logprobs=2),
        anthropic(user("Hi"), thinking={"type": "enabled", "budget_tokens": 2048}),
    ],
    ids=["logprobs", "thinking"],
)
def test_answers_the_model_cannot_keep_are_never_cached(request_: ChatRequest) -> None:
    assert key(request_).why_not is Bypass.UNREPRESENTABLE
    assert key(request_, CacheSettings(cache_sampled=True, cache_tool_calls=True)).why_not is (
        Bypass.UNREPRESENTABLE
    )


IMAGE = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}


def test_a_question_needs_text_and_only_text_is_compared() -> None:
    assert key(openai(SYSTEM)).why_not is Bypass.NO_QUESTION
    assert key(openai(user("   "))).why_not is Bypass.NO_QUESTION
    assert key(openai({"role": "user", "content": [IMAGE]})).why_not is Bypass.NO_QUESTION

    with_image = key(
        openai({"role": "user", "content": [{"type": "text", "text": "What is this?"}, IMAGE]})
    )
    # Exactly the same picture and words may be answered again; similar words about another
    # picture may not.
    assert with_image.cacheable
    assert with_image.question == ""
    other_image = {"type": "image_url", "image_url": {"url": "https://example.com/dog.png"}}
    assert (
        key(
            openai(
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "What is this?"}, other_image],
                }
            )
        ).exact
        != with_image.exact
    )


def test_keys_carry_the_tenant_as_a_cluster_hash_tag() -> None:
    assert answer_key("acme", "ab" * 32) == "{acme}:cache:answer:" + "ab" * 32
    assert answer_key_pattern("acme") == "{acme}:cache:answer:*"
    assert answer_key_pattern("a*b?[c]") == "{a\\*b\\?\\[c\\]}:cache:answer:*"


# --- answers -------------------------------------------------------------------------------

ANSWER = ChatResponse(
    id="chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT",
    model="gpt-4o-mini-2024-07-18",
    content=(
        Text("Paris is the capital of France, and its largest city by far. Grüß dich! 👋"),
        ToolCall("call_1", "lookup_city", '{"city": "Paris"}'),
    ),
    stop_reason=StopReason.STOP_SEQUENCE,
    usage=Usage(input_tokens=19, output_tokens=23, cached_input_tokens=3),
    stop_sequence="\n\n",
)


def test_an_answer_survives_the_round_trip_through_bytes() -> None:
    raw = CachedAnswer(ANSWER).to_bytes()
    assert CachedAnswer.from_bytes(raw).response == ANSWER
    no_usage = ChatResponse("", "m", (Text("ok"),), StopReason.END_TURN, None)
    assert CachedAnswer.from_bytes(CachedAnswer(no_usage).to_bytes()).response == no_usage


@pytest.mark.parametrize(
    "raw",
    [b"", b"not json", b"[]", b'{"v": 99}', b'{"v": 1, "content": [["t"]]}'],
)
def test_bytes_that_are_not_a_cached_answer_are_refused(raw: bytes) -> None:
    with pytest.raises(ValueError, match="cached answer"):
        CachedAnswer.from_bytes(raw)


@pytest.mark.parametrize(
    ("stop", "content", "cache_tool_calls", "refusal"),
    [
        (StopReason.END_TURN, (Text("Paris."),), False, None),
        (StopReason.STOP_SEQUENCE, (Text("Paris."),), False, None),
        (StopReason.MAX_TOKENS, (Text("Par"),), False, NotStorable.UNFINISHED),
        (StopReason.CONTENT_FILTER, (Text("I can't"),), False, NotStorable.UNFINISHED),
        (StopReason.ERROR, (Text("Paris."),), False, NotStorable.UNFINISHED),
        (None, (Text("Paris."),), False, NotStorable.UNFINISHED),
        (StopReason.TOOL_USE, (ToolCall("c", "f", "{}"),), False, NotStorable.TOOL_USE),
        (StopReason.TOOL_USE, (ToolCall("c", "f", "{}"),), True, None),
        (StopReason.END_TURN, (), False, NotStorable.EMPTY),
        (StopReason.END_TURN, (Text(" \n"),), False, NotStorable.EMPTY),
    ],
)
def test_only_finished_answers_with_content_are_kept(
    stop: StopReason | None,
    content: tuple[Text | ToolCall, ...],
    cache_tool_calls: bool,
    refusal: NotStorable | None,
) -> None:
    response = ChatResponse("id", "m", content, stop, None)
    assert CachedAnswer.refusal(response, cache_tool_calls=cache_tool_calls) is refusal


@pytest.mark.parametrize("schema", [OPENAI_CHAT, ANTHROPIC_MESSAGES, GEMINI, OLLAMA_CHAT])
@pytest.mark.parametrize("include_usage", [True, False])
def test_a_replayed_stream_decodes_back_to_the_answer(
    schema: WireSchema, include_usage: bool
) -> None:
    """Encoded by each schema's stream encoder and decoded again by its decoder, the replay
    gives the cached text and tool call back."""
    answer = ChatResponse(
        "msg_1", "m-1", ANSWER.content, StopReason.END_TURN, ANSWER.usage, stop_sequence=None
    )
    events = CachedAnswer(answer).events(include_usage=include_usage)
    deltas = [e for e in events if isinstance(e, TextDelta)]
    assert len(deltas) == 4  # 14 words in pieces of WORDS_PER_DELTA
    assert all(len(d.text.split()) <= WORDS_PER_DELTA for d in deltas)
    assert (UsageUpdate(ANSWER.usage) in events) is include_usage  # type: ignore[arg-type]
    wire = schema.stream_encoder(include_usage=include_usage).encode(events)

    decoder = schema.stream_decoder(model="m-1")
    gathered = StreamedAnswer()
    gathered.feed([*decoder.feed(wire), *decoder.finish()])
    replayed = gathered.answer()

    assert replayed is not None
    texts = [p.text for p in replayed.content if isinstance(p, Text)]
    calls = [
        (p.name, orjson.loads(p.arguments)) for p in replayed.content if isinstance(p, ToolCall)
    ]
    assert texts == [ANSWER.content[0].text]  # type: ignore[union-attr]
    assert calls == [("lookup_city", {"city": "Paris"})]


def test_a_stream_is_an_answer_only_when_it_ended_well() -> None:
    start = [MessageStart("id", "m")]
    text = [TextDelta(0, "Paris")]
    broken = StreamedAnswer()
    broken.feed(
        [*start, *text, StreamError(ErrorInfo(500, ErrorKind.SERVER, "boom")), MessageStop()]
    )
    assert broken.answer() is None

    unfinished = StreamedAnswer()
    unfinished.feed([*start, *text])
    assert unfinished.answer() is None

    too_long = StreamedAnswer(max_chars=MAX_ANSWER_BYTES)
    too_long.feed([*start, TextDelta(0, "x" * (MAX_ANSWER_BYTES + 1)), MessageStop()])
    assert too_long.answer() is None

    whole = StreamedAnswer()
    whole.feed([*start, *text, TextDelta(0, ", France."), MessageStop()])
    answer = whole.answer()
    assert answer is not None and answer.content == (Text("Paris, France."),)
