"""Token counts for the calls whose provider never reported usage, with tiktoken.

tiktoken downloads its BPE files on first use, which a data plane cannot count on (air-gapped
deployments, this project's CI). OpenAI's files ship inside the `bpe-openai` wheel
(`bpe_openai/data/<name>.tiktoken.gz`); they are read from there (the package is not imported)
and must match the SHA-256 that tiktoken itself pins for them, so only OpenAI's exact files
are ever used. The patterns and special tokens are tiktoken's (`tiktoken_ext.openai_public`).

Loading an encoding costs ~0.35 s and ~75 MB (tiktoken keeps a Python copy of the ranks besides
its own): `TokenCounter.load()` runs once at start-up in a worker thread, for o200k_base (every
current OpenAI model); cl100k_base (GPT-4, GPT-3.5) loads the first time such a model needs it.
Until an encoding is loaded, counts use OpenAI's rule of thumb, a token per 4 bytes of UTF-8.
Models of other families are counted with o200k_base: an estimate, marked as one in the row.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import importlib.metadata
import logging
import math
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import orjson
import tiktoken
import tiktoken.model

log = logging.getLogger("gatez.tokens")

DEFAULT_ENCODING: Final = "o200k_base"
DATA_PACKAGE: Final = "bpe-openai"
# OpenAI's chat format (its cookbook's count): 3 tokens around each message, 1 more for a name,
# and 3 that prime the reply.
TOKENS_PER_MESSAGE: Final = 3
TOKENS_PER_NAME: Final = 1
REPLY_PRIMING: Final = 3
BYTES_PER_TOKEN: Final = 4


@dataclass(frozen=True, slots=True)
class EncodingSpec:
    """What tiktoken_ext.openai_public builds an encoding from, less the network."""

    sha256: str
    pattern: str
    special_tokens: Mapping[str, int]


ENDOFTEXT: Final = "<|endoftext|>"
ENDOFPROMPT: Final = "<|endofprompt|>"
SPECS: Final[Mapping[str, EncodingSpec]] = {
    "o200k_base": EncodingSpec(
        sha256="446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
        pattern="|".join(
            [
                r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
                r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
                r"""\p{N}{1,3}""",
                r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
                r"""\s*[\r\n]+""",
                r"""\s+(?!\S)""",
                r"""\s+""",
            ]
        ),
        special_tokens={ENDOFTEXT: 199999, ENDOFPROMPT: 200018},
    ),
    "cl100k_base": EncodingSpec(
        sha256="223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
        pattern=r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s""",  # noqa: E501
        special_tokens={
            ENDOFTEXT: 100257,
            "<|fim_prefix|>": 100258,
            "<|fim_middle|>": 100259,
            "<|fim_suffix|>": 100260,
            ENDOFPROMPT: 100276,
        },
    ),
}


def bundled_bpe_file(name: str) -> Path:
    """Where the installed `bpe-openai` wheel keeps OpenAI's BPE file for `name`."""
    located = importlib.metadata.distribution(DATA_PACKAGE).locate_file(
        f"bpe_openai/data/{name}.tiktoken.gz"
    )
    return Path(str(located))


def load_encoding(name: str, path: Path | None = None) -> tiktoken.Encoding:
    """Builds tiktoken's encoding `name` from the BPE file at `path` (default: the bundled one);
    raises ValueError unless the file is OpenAI's, byte for byte."""
    spec = SPECS[name]
    raw = (path or bundled_bpe_file(name)).read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if hashlib.sha256(raw).hexdigest() != spec.sha256:
        raise ValueError(f"{name}: BPE file does not match tiktoken's pinned SHA-256")
    ranks = {
        base64.b64decode(token): int(rank)
        for token, rank in (line.split() for line in raw.splitlines() if line)
    }
    return tiktoken.Encoding(
        name,
        pat_str=spec.pattern,
        mergeable_ranks=ranks,
        special_tokens=dict(spec.special_tokens),
    )


def encoding_name(model: str) -> str:
    """The encoding OpenAI uses for `model`, or o200k_base for a model tiktoken does not know."""
    try:
        name = tiktoken.model.encoding_name_for_model(model)
    except KeyError:
        return DEFAULT_ENCODING
    return name if name in SPECS else DEFAULT_ENCODING


class TokenCounter:
    """Counts tokens as OpenAI's tokenizer does, once its encodings are loaded (`load`)."""

    def __init__(self) -> None:
        self._encodings: dict[str, tiktoken.Encoding] = {}
        self._loading: set[str] = set()
        self._lock = threading.Lock()

    def load_in_background(self, name: str = DEFAULT_ENCODING) -> None:
        """Starts loading an encoding in a worker thread, unless it is loaded or loading."""
        with self._lock:
            if name in self._encodings or name in self._loading:
                return
            self._loading.add(name)
        threading.Thread(target=self.load, args=(name,), name=f"load-{name}", daemon=True).start()

    def load(self, name: str = DEFAULT_ENCODING) -> None:
        """Loads an encoding (blocking, ~0.35 s). A failure is logged, and counts go on with
        the rule of thumb."""
        try:
            encoding = load_encoding(name)
        except Exception:
            log.exception("tokenizer %s could not be loaded; token estimates use bytes/4", name)
            return
        finally:
            with self._lock:
                self._loading.discard(name)
        self._encodings[name] = encoding
        log.info("tokenizer %s loaded", name)

    def count(self, model: str, texts: Sequence[str]) -> int:
        """Tokens in `texts` for `model` (no special tokens: `<|endoftext|>` is plain text)."""
        name = encoding_name(model)
        encoding = self._encodings.get(name) or self._fallback(name)
        if encoding is None:
            return math.ceil(sum(len(text.encode()) for text in texts) / BYTES_PER_TOKEN)
        return sum(len(tokens) for tokens in encoding.encode_ordinary_batch(list(texts)))

    def count_messages(self, model: str, request: Mapping[str, Any] | None) -> int:
        """The prompt tokens of a Chat Completions request: its messages in OpenAI's chat
        format, and its tool definitions as JSON. Images and audio are not counted."""
        if request is None:
            return 0
        messages = request.get("messages")
        texts: list[str] = []
        framing = REPLY_PRIMING
        for message in messages if isinstance(messages, list) else ():
            if not isinstance(message, dict):
                continue
            framing += TOKENS_PER_MESSAGE
            for key, value in message.items():
                if key == "name" and isinstance(value, str):
                    framing += TOKENS_PER_NAME
                texts.extend(_texts_of(key, value))
        tools = request.get("tools")
        if isinstance(tools, list) and tools:
            texts.append(orjson.dumps(tools).decode())
        return framing + self.count(model, texts)

    def _fallback(self, name: str) -> tiktoken.Encoding | None:
        """An encoding not loaded yet: loads it in the background (the default one is loaded
        at start-up), and meanwhile counts with the default encoding if that is loaded."""
        if name != DEFAULT_ENCODING:
            self.load_in_background(name)
        return self._encodings.get(DEFAULT_ENCODING)


def _texts_of(key: str, value: Any) -> list[str]:
    """The text a message member carries: strings, text parts, tool calls' names and arguments."""
    if isinstance(value, str):
        return [value]
    if key == "content" and isinstance(value, list):
        return [
            part["text"]
            for part in value
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        ]
    if key == "tool_calls" and isinstance(value, list):
        texts: list[str] = []
        for call in value:
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict):
                texts.extend(
                    v
                    for v in (function.get("name"), function.get("arguments"))
                    if isinstance(v, str)
                )
        return texts
    if key == "function_call" and isinstance(value, dict):
        return [v for v in (value.get("name"), value.get("arguments")) if isinstance(v, str)]
    return []
