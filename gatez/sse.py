"""Server-sent events, split incrementally from body chunks that may cut an event anywhere."""

from __future__ import annotations


class SseSplitter:
    """Feeds raw chunks in, yields whole events (with their trailing blank line) out.

    An event that is cut by a chunk boundary is held back until the rest arrives, so every
    event a caller sees is complete. `flush()` returns whatever is left at end of stream.
    """

    __slots__ = ("_tail",)

    def __init__(self) -> None:
        self._tail = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        data = self._tail + chunk if self._tail else chunk
        # Providers send LF line endings; CRLF is normalised only when seen, off the fast path.
        if b"\r" in data:
            data = data.replace(b"\r\n", b"\n")
        events = data.split(b"\n\n")
        self._tail = events.pop()
        return [event + b"\n\n" for event in events if event]

    def flush(self) -> bytes:
        tail, self._tail = self._tail, b""
        return tail


def event_data(event: bytes) -> bytes | None:
    """The `data:` payload of one event (multi-line data joined by newlines), or None."""
    lines = [
        line[5:].removeprefix(b" ") for line in event.split(b"\n") if line.startswith(b"data:")
    ]
    if not lines:
        return None
    return b"\n".join(lines)
