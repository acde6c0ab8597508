"""Golden fixtures of the translation tests, built from the providers' API references."""

from __future__ import annotations

from pathlib import Path

from gatez.translate.model import StreamEvent

FIXTURES = Path(__file__).parent / "fixtures"


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def decode_all(decoder: object, stream: bytes, cut: int | None = None) -> list[StreamEvent]:
    """The events a decoder yields for `stream`, fed whole or cut in two at `cut`."""
    feed = decoder.feed  # type: ignore[attr-defined]
    pieces = [stream] if cut is None else [stream[:cut], stream[cut:]]
    events: list[StreamEvent] = []
    for piece in pieces:
        events.extend(feed(piece))
    events.extend(decoder.finish())  # type: ignore[attr-defined]
    return events
