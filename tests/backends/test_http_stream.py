"""The engine streaming client (`infernet.backends.http_stream`) against raw loopback servers."""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable

import pytest
import trio
import trio.testing

from infernet.backends.http_stream import ConnectionPool, EngineEndpoint, open_stream
from infernet.protocol.errors import BackendError

Script = Callable[[trio.SocketStream, bytes], Awaitable[None]]


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://127.0.0.1:8080/", ("127.0.0.1", 8080, False, "", "127.0.0.1:8080",
                                    socket.AF_INET)),
        ("https://engine.example/api/", ("engine.example", 443, True, "/api",
                                         "engine.example", None)),
        ("http://[::1]:9000", ("::1", 9000, False, "", "[::1]:9000", socket.AF_INET6)),
        ("http://user:pw@gpu-box", ("gpu-box", 80, False, "", "gpu-box", None)),
    ],
)  # fmt: skip
def test_endpoint_parsing(url: str, expected: tuple[object, ...]) -> None:
    e = EngineEndpoint.parse(url)
    assert (e.host, e.port, e.tls, e.prefix, e.host_header, e.family) == expected


@pytest.mark.parametrize("url", ["ftp://engine/", "engine:8080", "http://engine:port/", "http://"])
def test_unusable_urls_are_refused(url: str) -> None:
    with pytest.raises(ValueError):
        EngineEndpoint.parse(url)


@pytest.fixture
def engine(nursery: trio.Nursery) -> Callable[[Script], Awaitable[int]]:
    """Start a loopback server that reads one request head+body and runs ``script``."""

    async def start(script: Script) -> int:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")

        async def handler(stream: trio.SocketStream) -> None:
            async with stream:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += await stream.receive_some(65536)
                await script(stream, data)

        nursery.start_soon(trio.serve_listeners, handler, listeners)
        port: int = listeners[0].socket.getsockname()[1]
        return port

    return start


async def post(url: str, **timeouts: float) -> tuple[int, str, str, bytes]:
    response = await open_stream(
        EngineEndpoint.parse(url), "/v1/completions", b"{}", [("Connection", "close")],
        connect_timeout=timeouts.get("connect", 5.0), read_timeout=timeouts.get("read", 5.0),
    )  # fmt: skip
    try:
        body = await response.read(1 << 20)
    finally:
        await response.aclose()
    return response.status, response.content_type, response.encoding, body


async def test_prefix_host_header_and_informational_answers(engine) -> None:
    seen: list[bytes] = []

    async def answer(stream: trio.SocketStream, head: bytes) -> None:
        seen.append(head)
        await stream.send_all(
            b"HTTP/1.1 100 Continue\r\n\r\n"
            b"HTTP/1.1 200 OK\r\nContent-Type: Text/Event-Stream; charset=latin-1\r\n"
            b"Content-Length: 5\r\n\r\nhello"
        )

    port = await engine(answer)
    # A host name (not an IP literal) goes through trio's resolver path.
    assert await post(f"http://localhost:{port}/prefix/") == (
        200, "text/event-stream", "iso8859-1", b"hello"
    )  # fmt: skip
    request_line, *headers = seen[0].split(b"\r\n")
    assert request_line == b"POST /prefix/v1/completions HTTP/1.1"
    assert b"host: localhost:%d" % port in [h.lower() for h in headers]


async def test_unknown_charset_falls_back_to_utf8(engine) -> None:
    async def answer(stream: trio.SocketStream, head: bytes) -> None:
        await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; "
                              b"charset=klingon\r\ncontent-length: 0\r\n\r\n")  # fmt: skip

    port = await engine(answer)
    assert (await post(f"http://127.0.0.1:{port}"))[2] == "utf-8"


async def test_closing_without_an_answer_is_backend_unavailable(engine) -> None:
    async def hang_up(stream: trio.SocketStream, head: bytes) -> None:
        return

    port = await engine(hang_up)
    with pytest.raises(BackendError) as info:
        await post(f"http://127.0.0.1:{port}")
    assert info.value.code == "backend_unavailable"
    assert "broke before an answer" in info.value.message


async def test_garbage_instead_of_http_is_backend_unavailable(engine) -> None:
    async def babble(stream: trio.SocketStream, head: bytes) -> None:
        await stream.send_all(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")

    port = await engine(babble)
    with pytest.raises(BackendError) as info:
        await post(f"http://127.0.0.1:{port}")
    assert info.value.code == "backend_unavailable"


async def test_no_answer_within_the_read_timeout(engine) -> None:
    async def stall(stream: trio.SocketStream, head: bytes) -> None:
        await trio.sleep_forever()

    port = await engine(stall)
    with trio.fail_after(10), pytest.raises(BackendError) as info:
        await post(f"http://127.0.0.1:{port}", read=0.2)
    assert info.value.code == "timeout" and "0.2 s" in info.value.message


async def test_an_oversized_response_head_is_refused(engine) -> None:
    async def flood(stream: trio.SocketStream, head: bytes) -> None:
        await stream.send_all(b"HTTP/1.1 200 OK\r\nx-junk: " + b"a" * 70_000 + b"\r\n\r\n")

    port = await engine(flood)
    with pytest.raises(BackendError) as info:
        await post(f"http://127.0.0.1:{port}")
    assert info.value.code == "backend_unavailable"


# --- keep-alive -----------------------------------------------------------------------------

OK = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: 2\r\n\r\nok"


@pytest.fixture
def keepalive_engine(nursery: trio.Nursery) -> Callable[..., Awaitable[tuple[int, list[int]]]]:
    """A loopback engine that answers request after request on each connection; on
    connection ``i``, ``close_at[i]`` names the request (0-based) it hangs up on unanswered.
    Returns its port and the number of requests each connection carried."""

    async def start(close_at: dict[int, int] | None = None) -> tuple[int, list[int]]:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        served: list[int] = []

        async def handler(stream: trio.SocketStream) -> None:
            index = len(served)
            served.append(0)
            async with stream:
                data = b""
                while True:
                    while b"}" not in data:  # each request ends with its "{}" body
                        part = await stream.receive_some(65536)
                        if not part:
                            return
                        data += part
                    data = data.partition(b"}")[2]
                    if (close_at or {}).get(index) == served[index]:
                        return  # the engine closed this connection before answering
                    served[index] += 1
                    await stream.send_all(OK)

        nursery.start_soon(trio.serve_listeners, handler, listeners)
        return listeners[0].socket.getsockname()[1], served

    return start


async def pooled_post(url: str, pool: ConnectionPool) -> bytes:
    response = await open_stream(EngineEndpoint.parse(url), "/v1/completions", b"{}", [],
                                 connect_timeout=5.0, read_timeout=5.0, pool=pool)
    try:
        return await response.read(1 << 20)
    finally:
        await response.aclose()


async def test_a_finished_response_leaves_its_connection_for_the_next(keepalive_engine) -> None:
    port, served = await keepalive_engine()
    pool = ConnectionPool()
    try:
        for _ in range(3):
            assert await pooled_post(f"http://127.0.0.1:{port}", pool) == b"ok"
        assert served == [3] and len(pool) == 1
    finally:
        pool.close()
    assert len(pool) == 0


async def test_a_request_the_engine_hung_up_on_goes_out_again_fresh(keepalive_engine) -> None:
    # The race llama.cpp's server makes: it closes after a stream, but the close reaches the
    # client only after its next request went out on that connection.
    port, served = await keepalive_engine(close_at={0: 1})
    pool = ConnectionPool()
    try:
        assert await pooled_post(f"http://127.0.0.1:{port}", pool) == b"ok"
        assert await pooled_post(f"http://127.0.0.1:{port}", pool) == b"ok"
        assert served == [1, 1]
    finally:
        pool.close()


async def test_a_fresh_connection_hung_up_on_is_an_error_not_a_retry(engine) -> None:
    async def hang_up(stream: trio.SocketStream, head: bytes) -> None:
        return

    port = await engine(hang_up)
    pool = ConnectionPool()
    with pytest.raises(BackendError) as info:
        await pooled_post(f"http://127.0.0.1:{port}", pool)
    assert info.value.code == "backend_unavailable" and len(pool) == 0


async def test_an_unfinished_response_closes_its_connection(keepalive_engine) -> None:
    port, served = await keepalive_engine()
    pool = ConnectionPool()
    response = await open_stream(EngineEndpoint.parse(f"http://127.0.0.1:{port}"), "/", b"{}",
                                 [], connect_timeout=5.0, read_timeout=5.0, pool=pool)
    await response.aclose()  # the body was never read: the engine must see the close
    assert len(pool) == 0
    assert await pooled_post(f"http://127.0.0.1:{port}", pool) == b"ok"
    assert served == [1, 1]
    pool.close()


async def test_the_pool_drops_closed_idle_and_surplus_connections(
    mock_clock: trio.testing.MockClock,
) -> None:
    pool = ConnectionPool(max_idle=2, idle_timeout=3.0)
    pairs = [trio.socket.socketpair() for _ in range(4)]
    streams = [trio.SocketStream(a) for a, _ in pairs]
    for stream in streams[:3]:
        pool.put(stream)
    assert len(pool) == 2 and streams[0].socket.fileno() == -1  # the oldest went
    pairs[2][1].close()  # the engine closed the newest while it sat idle
    assert pool.take() is streams[1] and streams[2].socket.fileno() == -1
    pool.put(streams[3])
    mock_clock.jump(3.5)
    assert pool.take() is None and streams[3].socket.fileno() == -1  # idle too long
    for stream in streams:
        stream.socket.close()
    for _, peer in pairs:
        peer.close()
