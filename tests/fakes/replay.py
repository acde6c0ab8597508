"""One small server that plays any LLM provider by replaying recorded wire fixtures.

A recording is one JSON file per exchange under `recordings/<provider>/`: what request it answers
(method, a path pattern, optionally a predicate on the JSON body or the query) and the response
exactly as the provider sends it (status, headers, and a JSON body or a list of stream chunks).
The recordings are built from each provider's own API reference; the server knows no provider's
schema beyond three things that are wire framing or access control, not content:

- how the provider checks its credential (`AUTH_CHECKS`), answered with the provider's own
  recorded authentication error (`recordings/<provider>/errors/authentication.json`);
- how a stream is framed: SSE (`text/event-stream`), NDJSON (`application/x-ndjson`, Ollama) or
  AWS event-stream binary frames (`application/vnd.amazon.eventstream`, Bedrock ConverseStream);
- one template: the string `{{model}}` anywhere in a response becomes the request's model (from
  the path's `{model}`/`{modelId}` or the body's `model`).

Each stream chunk goes out as its own HTTP chunk, after an optional delay. Every request is
recorded (`ReplayServer.requests`); `queue_error` answers the next request with an error
recording (a 429 with `retry-after`, Anthropic's 529 `overloaded_error`, a 500 …) instead.

`ReplayServer` runs on a loopback port in a background thread, over HTTP or (given a certificate)
HTTPS, as `tests.fakes.openai_upstream.UpstreamServer` does; the hand-written OpenAI fake stays.
"""

from __future__ import annotations

import asyncio
import binascii
import re
import struct
import threading
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import orjson
from aiohttp import web

from tests.fakes.openai_upstream import RecordedRequest, record_of
from tests.fakes.serving import BackgroundServer

RECORDINGS_DIR: Final = Path(__file__).parent / "recordings"
MODEL_PLACEHOLDER: Final = "{{model}}"
#: Path parameters that name the model, in the providers' own URL templates.
_MODEL_PATH_PARAMETERS: Final = ("model", "modelId")
_PATH_PARAMETER: Final = re.compile(r"\{(\w+)\}")
MAX_REQUEST_BYTES: Final = 32 * 1024 * 1024

Framing = Literal["sse", "ndjson", "eventstream"]
_FRAMINGS: Final = frozenset({"sse", "ndjson", "eventstream"})


class RecordingError(ValueError):
    """A recording file that does not have the shape `Recording.from_json` expects."""


# -- recordings --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RequestMatch:
    """Which requests a recording answers.

    `path` is the provider's URL template: `{name}` matches one path segment (it may contain
    `:`, as Bedrock model ids do). `json` entries must equal top-level fields of the request
    body, `json_keys` must be present in it, and `query` entries must equal query parameters.
    The server tries the most specific match first (`specificity`), so a provider's default
    (Ollama streams unless `"stream": false`) is the recording with fewer predicates.
    """

    method: str
    path: str
    json: Mapping[str, Any]
    json_keys: frozenset[str]
    query: Mapping[str, str]
    pattern: re.Pattern[str]

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> RequestMatch:
        path = raw["path"]
        pieces = _PATH_PARAMETER.split(path)
        # split() alternates literal text and parameter names.
        regex = "".join(
            f"(?P<{piece}>[^/]+)" if index % 2 else re.escape(piece)
            for index, piece in enumerate(pieces)
        )
        return cls(
            method=raw["method"].upper(),
            path=path,
            json=dict(raw.get("json", {})),
            json_keys=frozenset(raw.get("json_keys", ())),
            query={str(key): str(value) for key, value in raw.get("query", {}).items()},
            pattern=re.compile(f"^{regex}$"),
        )

    def path_parameters(self, path: str) -> dict[str, str] | None:
        """The path's parameters if it fits this template, else None."""
        found = self.pattern.match(path)
        return None if found is None else found.groupdict()

    def matches(self, method: str, path: str, query: Mapping[str, str], body: Any) -> bool:
        if method != self.method or self.path_parameters(path) is None:
            return False
        if any(query.get(name) != value for name, value in self.query.items()):
            return False
        if not self.json and not self.json_keys:
            return True
        if not isinstance(body, Mapping):
            return False
        return self.json_keys <= body.keys() and all(
            name in body and body[name] == expected for name, expected in self.json.items()
        )

    @property
    def specificity(self) -> int:
        """How many predicates beyond method and path this match has."""
        return len(self.json) + len(self.json_keys) + len(self.query)


@dataclass(frozen=True, slots=True)
class Recording:
    """One recorded exchange: the request it answers and the response to replay.

    The response is either `body` (JSON, sent as one piece) or `chunks` framed as `framing`
    (each chunk one HTTP chunk). An SSE chunk is `{"event": name?, "data": JSON}`, an NDJSON
    chunk a JSON value, an event-stream chunk `{"event": ":event-type", "payload": JSON}`.
    """

    name: str
    request: RequestMatch
    status: int
    headers: Mapping[str, str]
    body: Any
    chunks: tuple[Any, ...] | None
    framing: Framing | None

    @classmethod
    def load(cls, path: Path) -> Recording:
        """The recording in `path` (a JSON file), named by its path under `RECORDINGS_DIR`."""
        name = path.relative_to(RECORDINGS_DIR).with_suffix("").as_posix()
        return cls.from_json(name, orjson.loads(path.read_bytes()))

    @classmethod
    def from_json(cls, name: str, raw: Mapping[str, Any]) -> Recording:
        try:
            response = raw["response"]
            stream = response.get("stream")
            framing = None if stream is None else stream["framing"]
            if framing is not None and framing not in _FRAMINGS:
                raise RecordingError(f"{name}: unknown framing {framing!r}")
            if stream is None and "body" not in response:
                raise RecordingError(f"{name}: the response has neither a body nor a stream")
            return cls(
                name=name,
                request=RequestMatch.from_json(raw["request"]),
                status=int(response["status"]),
                headers={str(k).lower(): str(v) for k, v in response["headers"].items()},
                body=response.get("body"),
                chunks=None if stream is None else tuple(stream["chunks"]),
                framing=framing,
            )
        except (KeyError, TypeError, AttributeError) as error:
            raise RecordingError(f"{name}: malformed recording ({error!r})") from error

    def frames(self, model: str | None) -> Iterator[bytes]:
        """The response body's pieces on the wire: one for a plain body, one per chunk."""
        if self.chunks is None:
            yield orjson.dumps(_with_model(self.body, model))
            return
        for chunk in self.chunks:
            yield encode_chunk(self.framing, _with_model(chunk, model))


def _with_model(value: Any, model: str | None) -> Any:
    """`value` with `{{model}}` in every string replaced by the request's model."""
    if model is None:
        return value
    if isinstance(value, str):
        return value.replace(MODEL_PLACEHOLDER, model)
    if isinstance(value, list):
        return [_with_model(item, model) for item in value]
    if isinstance(value, dict):
        return {key: _with_model(item, model) for key, item in value.items()}
    return value


def load_recordings(provider: str) -> list[Recording]:
    """The provider's exchange recordings (not its `errors/`), in file-name order."""
    directory = RECORDINGS_DIR / provider
    if not directory.is_dir():
        raise FileNotFoundError(f"no recordings for provider {provider!r} in {directory}")
    return [Recording.load(path) for path in sorted(directory.glob("*.json"))]


def load_recording(name: str) -> Recording:
    """One recording by its name under `recordings/`, e.g. `"anthropic/errors/overloaded"`."""
    return Recording.load(RECORDINGS_DIR / f"{name}.json")


# -- stream framing ----------------------------------------------------------------------------


def encode_chunk(framing: Framing | None, chunk: Any) -> bytes:
    """One stream chunk in the provider's framing."""
    if framing == "sse":
        data = chunk["data"]
        text = data if isinstance(data, str) else orjson.dumps(data).decode()
        event = chunk.get("event")
        prefix = "" if event is None else f"event: {event}\n"
        return f"{prefix}data: {text}\n\n".encode()
    if framing == "ndjson":
        return orjson.dumps(chunk) + b"\n"
    if framing == "eventstream":
        return encode_event_stream_message(
            {
                ":event-type": chunk["event"],
                ":content-type": "application/json",
                ":message-type": "event",
            },
            orjson.dumps(chunk["payload"]),
        )
    raise ValueError(f"unknown stream framing {framing!r}")


_EVENT_STREAM_STRING: Final = 7


def encode_event_stream_message(headers: Mapping[str, str], payload: bytes) -> bytes:
    """One AWS event-stream message with string headers.

    Layout (as `botocore.eventstream` decodes it): total length and headers length (uint32 BE),
    CRC32 of those 8 bytes, the headers (name length u8, name, type 7, value length u16 BE,
    value), the payload, and the CRC32 of everything before it. botocore has a decoder only.
    """
    encoded_headers = b"".join(
        struct.pack("!B", len(name_bytes))
        + name_bytes
        + struct.pack("!BH", _EVENT_STREAM_STRING, len(value_bytes))
        + value_bytes
        for name_bytes, value_bytes in (
            (name.encode(), value.encode()) for name, value in headers.items()
        )
    )
    total_length = 12 + len(encoded_headers) + len(payload) + 4
    prelude = struct.pack("!II", total_length, len(encoded_headers))
    prelude += struct.pack("!I", binascii.crc32(prelude))
    message = prelude + encoded_headers + payload
    return message + struct.pack("!I", binascii.crc32(message))


# -- credentials -------------------------------------------------------------------------------

#: A provider's credential check: the credential the request carries, or None when it has none.
CredentialOf = Callable[[RecordedRequest, Mapping[str, str]], str | None]


def _anthropic_credential(request: RecordedRequest, _query: Mapping[str, str]) -> str | None:
    # Anthropic refuses a call without `anthropic-version` before it looks at the key. The key
    # goes in `x-api-key` (the API reference) or as a bearer token (what the Python SDK 2.x
    # sends for `api_key`).
    if request.header("anthropic-version") is None:
        return None
    return request.header("x-api-key") or _bearer_token(request)


def _bearer_token(request: RecordedRequest) -> str | None:
    authorization = request.header("authorization") or ""
    return authorization.removeprefix("Bearer ") if authorization.startswith("Bearer ") else None


def _gemini_credential(request: RecordedRequest, query: Mapping[str, str]) -> str | None:
    return request.header("x-goog-api-key") or query.get("key")


def _bedrock_credential(request: RecordedRequest, _query: Mapping[str, str]) -> str | None:
    authorization = request.header("authorization") or ""
    if authorization.startswith("Bearer "):
        return _bearer_token(request)
    # SigV4 is not verified (out of scope): any signature stands for the expected key.
    if authorization.startswith("AWS4-HMAC-SHA256 "):
        return _SIGV4_ACCEPTED
    return None


_SIGV4_ACCEPTED: Final = "\x00sigv4"

AUTH_CHECKS: Final[Mapping[str, CredentialOf | None]] = {
    "anthropic": _anthropic_credential,
    "gemini": _gemini_credential,
    "bedrock": _bedrock_credential,
    # Ollama has no authentication.
    "ollama": None,
}


# -- the server --------------------------------------------------------------------------------


class ReplayState:
    """What the server thread and the test share: recorded requests and queued errors."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: list[RecordedRequest] = []
        self._errors: deque[Recording] = deque()

    def record(self, request: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(request)

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def queue_error(self, recording: Recording, times: int) -> None:
        with self._lock:
            self._errors.extend([recording] * times)

    def next_error(self) -> Recording | None:
        with self._lock:
            return self._errors.popleft() if self._errors else None

    def clear(self) -> None:
        with self._lock:
            self._requests.clear()
            self._errors.clear()


class ReplayApp:
    """The aiohttp application: match, check the credential, replay."""

    def __init__(
        self,
        provider: str,
        recordings: Sequence[Recording],
        state: ReplayState,
        *,
        api_key: str | None,
        chunk_delay_s: float,
    ) -> None:
        if provider not in AUTH_CHECKS:
            raise ValueError(f"unknown provider {provider!r}; known: {sorted(AUTH_CHECKS)}")
        self.provider = provider
        # sorted() is stable: equally specific recordings keep their given order.
        self.recordings = tuple(
            sorted(recordings, key=lambda recording: -recording.request.specificity)
        )
        self.state = state
        self.api_key = api_key
        self.chunk_delay_s = chunk_delay_s
        self._credential_of = AUTH_CHECKS[provider]
        self._auth_error = (
            None
            if self._credential_of is None
            else load_recording(f"{provider}/errors/authentication")
        )

    def create_app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_REQUEST_BYTES)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        recorded = record_of(
            request.method, request.path, request.query_string, request.headers, body
        )
        self.state.record(recorded)
        query = {key: value for key, value in request.query.items()}
        if self._credential_of is not None and self._auth_error is not None:
            credential = self._credential_of(recorded, query)
            if credential is None or not self._accepts(credential):
                return await self._replay(request, self._auth_error, None)
        recording = self.state.next_error() or self._match(recorded, query)
        if recording is None:
            # A test asked for an exchange nobody recorded: say so plainly, not as a provider.
            unmatched = f"no {self.provider} recording for {request.method} {request.path}"
            return web.json_response({"replay_error": unmatched}, status=404)
        return await self._replay(request, recording, self._model_of(recording, recorded))

    def _accepts(self, credential: str) -> bool:
        return self.api_key is None or credential in (self.api_key, _SIGV4_ACCEPTED)

    def _match(self, recorded: RecordedRequest, query: Mapping[str, str]) -> Recording | None:
        for recording in self.recordings:
            if recording.request.matches(recorded.method, recorded.path, query, recorded.json):
                return recording
        return None

    @staticmethod
    def _model_of(recording: Recording, recorded: RecordedRequest) -> str | None:
        parameters = recording.request.path_parameters(recorded.path) or {}
        for name in _MODEL_PATH_PARAMETERS:
            if name in parameters:
                return parameters[name]
        if isinstance(recorded.json, Mapping) and isinstance(recorded.json.get("model"), str):
            return str(recorded.json["model"])
        return None

    async def _replay(
        self, request: web.Request, recording: Recording, model: str | None
    ) -> web.StreamResponse:
        frames = list(recording.frames(model))
        if recording.chunks is None:
            return web.Response(
                status=recording.status, headers=dict(recording.headers), body=frames[0]
            )
        response = web.StreamResponse(status=recording.status, headers=dict(recording.headers))
        response.enable_chunked_encoding()
        await response.prepare(request)
        for index, frame in enumerate(frames):
            if index and self.chunk_delay_s:
                await asyncio.sleep(self.chunk_delay_s)
            await response.write(frame)
        await response.write_eof()
        return response


class ReplayServer(BackgroundServer):
    """A fake `provider` on a loopback port, in a background thread with its own event loop.

    It answers with `recordings` (default: every file in `recordings/<provider>/`). With
    `api_key`, a credential must equal it (Bedrock's SigV4 is accepted unverified); without,
    any credential is accepted but one must be present where the provider requires it. With
    `certfile` and `keyfile` it serves HTTPS. Use as a context manager.
    """

    kind = "replay server"

    def __init__(
        self,
        provider: str,
        *,
        recordings: Sequence[Recording] | None = None,
        api_key: str | None = None,
        chunk_delay_s: float = 0.0,
        host: str = "127.0.0.1",
        certfile: str | Path | None = None,
        keyfile: str | Path | None = None,
    ) -> None:
        super().__init__(host=host, certfile=certfile, keyfile=keyfile)
        self.provider = provider
        self.state = ReplayState()
        self._app = ReplayApp(
            provider,
            load_recordings(provider) if recordings is None else recordings,
            self.state,
            api_key=api_key,
            chunk_delay_s=chunk_delay_s,
        )

    @property
    def base_url(self) -> str:
        """`http://127.0.0.1:PORT` (`https://` with TLS), with no path: each SDK adds its own."""
        return f"{self.scheme}://{self.host}:{self.port}"

    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot of every request received so far, oldest first."""
        return self.state.requests

    def queue_error(self, recording: Recording | str, *, times: int = 1) -> Recording:
        """Answer the next `times` requests with an error recording (or its name under
        `recordings/`, e.g. `"anthropic/errors/overloaded"`); returns the recording."""
        if isinstance(recording, str):
            recording = load_recording(recording)
        self.state.queue_error(recording, times)
        return recording

    def clear(self) -> None:
        """Forget recorded requests and drop queued errors."""
        self.state.clear()

    def create_app(self) -> web.Application:
        return self._app.create_app()
