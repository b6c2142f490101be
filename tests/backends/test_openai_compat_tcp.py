"""`OpenAICompatBackend` against a tiny hand-written HTTP server on loopback: raw bytes on a
real socket, so the failures are the ones the clients really meet (refused, peer closed,
read timeout, an error status)."""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable

import pytest
import trio

from infernet.backends.base import ChatMessage, ChatRequest, TextDelta
from infernet.backends.openai_compat import OpenAICompatBackend
from infernet.protocol.errors import BackendError

REQUEST = ChatRequest(model="m", messages=(ChatMessage(role="user", content="Hi?"),))
SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
)

Script = Callable[[trio.SocketStream], Awaitable[None]]


def http_chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def sse_chunk(text: str) -> bytes:
    return http_chunk(b'data: {"choices":[{"delta":{"content":"%s"}}]}\n\n' % text.encode())


async def read_request(stream: trio.SocketStream) -> None:
    """Read one request's head and body (Content-Length) and discard them."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += await stream.receive_some(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in head.lower().split(b"\r\n")
        if line.startswith(b"content-length:")
    )
    while len(body) < length:
        body += await stream.receive_some(65536)


@pytest.fixture
def fake_engine(nursery: trio.Nursery) -> Callable[[Script], Awaitable[str]]:
    """Start a loopback server running ``script`` on each connection; return its base URL."""

    async def start(script: Script) -> str:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]

        async def handler(stream: trio.SocketStream) -> None:
            async with stream:
                await read_request(stream)
                await script(stream)

        nursery.start_soon(trio.serve_listeners, handler, listeners)
        return f"http://127.0.0.1:{port}"

    return start


async def stream_error(backend: OpenAICompatBackend) -> tuple[list[str], BackendError]:
    texts: list[str] = []
    with pytest.raises(BackendError) as info:
        async for item in backend.stream_chat(REQUEST):
            if isinstance(item, TextDelta):
                texts.append(item.text)
    return texts, info.value


async def test_connection_refused_is_backend_unavailable() -> None:
    with socket.socket() as s:  # a port that was free a moment ago and has no listener
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    backend = OpenAICompatBackend(f"http://127.0.0.1:{port}")
    try:
        _, error = await stream_error(backend)
        assert error.code == "backend_unavailable"
        with pytest.raises(BackendError) as info:
            await backend.list_models()
        assert info.value.code == "backend_unavailable"
        assert await backend.health() is False
    finally:
        await backend.aclose()


async def test_peer_closing_mid_stream_is_node_disconnected(fake_engine) -> None:
    async def die_mid_stream(stream: trio.SocketStream) -> None:
        await stream.send_all(SSE_HEAD + sse_chunk("Par") + sse_chunk("is"))
        # return without the terminating zero-size chunk: the engine "crashed"

    backend = OpenAICompatBackend(await fake_engine(die_mid_stream))
    try:
        texts, error = await stream_error(backend)
    finally:
        await backend.aclose()
    assert texts == ["Par", "is"]
    assert error.code == "node_disconnected"
    assert "died mid-stream" in error.message


async def test_silent_engine_hits_the_read_timeout(fake_engine) -> None:
    async def go_silent(stream: trio.SocketStream) -> None:
        await stream.send_all(SSE_HEAD + sse_chunk("Hm"))
        await trio.sleep_forever()

    backend = OpenAICompatBackend(await fake_engine(go_silent), read_timeout=0.2)
    try:
        texts, error = await stream_error(backend)
    finally:
        await backend.aclose()
    assert texts == ["Hm"]
    assert error.code == "timeout"


async def test_error_status_over_the_wire(fake_engine) -> None:
    async def refuse(stream: trio.SocketStream) -> None:
        body = b'{"error":{"code":400,"message":"the prompt is too long","type":"x"}}'
        head = b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n"
        await stream.send_all(head + b"content-length: %d\r\n\r\n%s" % (len(body), body))

    backend = OpenAICompatBackend(await fake_engine(refuse))
    try:
        _, error = await stream_error(backend)
    finally:
        await backend.aclose()
    assert error.code == "bad_request" and "the prompt is too long" in error.message
