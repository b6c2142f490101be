"""`EventDataDecoder` against the WHATWG rules and against httpx_sse, which it replaces."""

from __future__ import annotations

import itertools

import httpx_sse._decoders as reference
from hypothesis import given, settings
from hypothesis import strategies as st

from infernet.backends.sse import EventDataDecoder


def decode(*chunks: bytes, encoding: str = "utf-8") -> list[str]:
    decoder = EventDataDecoder(encoding)
    return [data for chunk in chunks for data in decoder.feed(chunk)]


def httpx_sse_data(body: bytes) -> list[str]:
    """What ``EventSource.aiter_sse`` yields for ``body``, data only."""
    lines, events = reference.SSELineDecoder(), reference.SSEDecoder()
    text = body.decode("utf-8", "replace")
    out = []
    for line in [*lines.decode(text), *lines.flush()] if text else []:
        event = events.decode(line)
        if event is not None:
            out.append(event.data)
    return out


def test_openai_stream() -> None:
    body = b'data: {"a":1}\n\ndata: {"b":2}\n\ndata: [DONE]\n\n'
    assert decode(body) == ['{"a":1}', '{"b":2}', "[DONE]"]


def test_every_line_ending_and_a_crlf_split_across_chunks() -> None:
    assert decode(b"data: a\r\n\r\ndata: b\r\rdata: c\n\n") == ["a", "b", "c"]
    assert decode(b"data: a\r", b"\n\r", b"\ndata: b\r", b"\n\n") == ["a", "b"]
    assert decode(b"id: 1\ndata: a\r", b"", b"\n\n") == ["a"]


def test_an_event_split_at_any_byte() -> None:
    body = 'data: {"text":"né"}\n\n'.encode()
    for cut in range(len(body)):
        assert decode(body[:cut], body[cut:]) == ['{"text":"né"}']


def test_multiline_data_comments_and_fields() -> None:
    body = b": keep-alive\n\nevent: chunk\nid: 7\nretry: x\ndata:one\ndata: two\nignored: 1\n\n"
    assert decode(body) == ["one\ntwo"]


def test_an_unterminated_event_is_not_dispatched() -> None:
    assert decode(b"data: a\n\ndata: b\n") == ["a"]


def test_blank_lines_dispatch_as_httpx_sse_does() -> None:
    # A name, retry or id without data still makes an event (httpx_sse's rule); the id
    # outlives its event, so later blank lines keep dispatching empty events.
    assert decode(b"event: x\n\n\n") == [""]
    assert decode(b"id: 1\n\n\n") == ["", ""]
    assert decode(b"retry: 5\n\n\n") == [""]


def test_charset_and_undecodable_bytes() -> None:
    assert decode("data: é\n\n".encode("latin-1"), encoding="latin-1") == ["é"]
    assert decode(b"data: \xff\n\n") == ["\ufffd"]


_PIECES = st.sampled_from([b"data", b"data:", b": ", b"event: e", b"id: 1", b"id", b"retry: 3",
                           b"retry: z", b"\x00", b" ", b"x", b"\xc3\xa9", b"\r", b"\n", b"\r\n",
                           b":c"])


@settings(max_examples=300, deadline=None)
@given(st.lists(_PIECES, max_size=40), st.lists(st.integers(0, 400), max_size=6))
def test_same_events_as_httpx_sse(pieces: list[bytes], cuts: list[int]) -> None:
    body = b"".join(pieces)
    bounds = [0, *sorted(min(c, len(body)) for c in cuts), len(body)]
    chunks = [body[a:b] for a, b in itertools.pairwise(bounds)]
    assert decode(*chunks) == httpx_sse_data(body)
