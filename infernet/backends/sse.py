"""Server-sent events (``text/event-stream``): an incremental, sans-IO decoder of event data.

Owns: turning the bytes of an SSE response body into the ``data`` of each complete event,
as the WHATWG "event stream interpretation" reads them, for the OpenAI-compatible adapter
(the engines' streaming format). It reads bytes rather than text: the adapter is on every
job's path, and the layers of httpx's text iterator and httpx_sse's line and event decoders
cost more per token than the generation of an instant engine.

Invariants (the events are those ``httpx_sse.EventSource.aiter_sse`` yields, data only):
- Lines end at ``\\r\\n``, ``\\r`` or ``\\n``, also when a chunk boundary splits ``\\r\\n``.
- A blank line dispatches an event when the event has data, a name, a retry or an id seen so
  far (httpx_sse's rule); the data lines are joined with ``\\n``. Comments (``:``) and
  unknown fields are ignored; one space after the colon is dropped.
- Text is decoded per line with the response's charset, undecodable bytes replaced, which
  for ASCII-compatible charsets equals decoding the whole body first (no line break occurs
  inside a multi-byte character).
- An unterminated last line dispatches nothing, so the end of the stream needs no flush.
"""

from __future__ import annotations

__all__ = ["EventDataDecoder"]


class EventDataDecoder:
    """Feed it the body's chunks; each call returns the data of the events they completed."""

    __slots__ = ("_cr", "_data", "_encoding", "_event", "_last_id", "_partial", "_retry")

    def __init__(self, encoding: str = "utf-8") -> None:
        self._encoding = encoding
        self._partial = b""  # the start of a line whose end has not arrived
        self._cr = False  # the last chunk ended in \r: a \n opening the next one is its pair
        self._data: list[str] = []
        self._event = False  # a non-empty event name was given
        self._retry = False  # a valid retry was given
        self._last_id = False  # the last event id is non-empty (it outlives the event)

    def feed(self, chunk: bytes) -> list[str]:
        """Decode the next chunk of the body; return the data of each completed event.

        Raises:
            Nothing.
        """
        if not chunk:  # must not end a \r\n pair that is split across chunks
            return []
        if self._cr:
            self._cr = False
            if chunk.startswith(b"\n"):
                chunk = chunk[1:]
        if b"\r" in chunk:
            self._cr = chunk.endswith(b"\r")
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        if b"\n" not in chunk:
            self._partial += chunk
            return []
        lines = (self._partial + chunk).split(b"\n")
        self._partial = lines.pop()
        out: list[str] = []
        for line in lines:
            if line:
                self._field(line)
            elif self._data or self._event or self._retry or self._last_id:
                out.append("\n".join(self._data))
                self._data = []
                self._event = self._retry = False
        return out

    def _field(self, line: bytes) -> None:
        name, _, value = line.partition(b":")
        if value.startswith(b" "):
            value = value[1:]
        if name == b"data":
            self._data.append(value.decode(self._encoding, "replace"))
        elif name == b"event":
            self._event = bool(value)
        elif name == b"id":
            if b"\0" not in value:
                self._last_id = bool(value)
        elif name == b"retry":
            try:
                int(value.decode(self._encoding, "replace"))
            except ValueError:
                return
            self._retry = True
