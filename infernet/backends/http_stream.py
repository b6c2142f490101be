"""A lean HTTP/1.1 client for the one engine call on every job's path: the streamed generation.

Owns: opening a connection to an engine (TCP, or TLS for ``https``) or taking an idle one
from a `ConnectionPool`, sending one request, reading the response head and then its body
piece by piece with a timeout on the connect, the write and every read, and turning every
failure into `BackendError` with the codes `infernet.backends.transport` gives httpx's
failures.

Why not httpx here (it stays for health probes, model listings and the other adapters):
one streamed request to an instant engine (``bench.gateway_engine``), decoded by the
adapter, cost ~1.05 ms of CPU through httpx and httpcore and ~0.42 ms through this client
(one run, 1,500 sequential requests each). On a node serving short jobs that took its CPU
per job from 1.73 to 1.28 ms. h11 is the HTTP/1.1 state machine httpcore itself is built on; what is
skipped is the pool, cookies, redirects, auth and proxy layers, none of which an engine
call uses.

Keep-alive: with a pool, a response read to its end leaves its connection idle in the
pool for the next request, which saves the connect, the socket set-up and the close on
every job (``bench.gateway_instant``'s short jobs at 64 clients, one run: node 1.29 → 1.03
ms of CPU per job, the instant engine 0.34 → 0.20). Engines close idle connections
(uvicorn and llama.cpp after 5 s; llama.cpp's server also right after each stream), so a
pooled connection is dropped after `IDLE_TIMEOUT`, is checked for a pending close before
reuse, and a request whose reused connection turns out closed before any byte of an answer
is sent once more on a fresh connection (the engine never read it: it had closed that
socket).

Invariants:
- A connection carries one request at a time. It goes back to the pool only when its
  response arrived to the end and neither side asked to close; otherwise it is closed when
  the response is closed or fails. Closing early is how a cancelled job reaches the engine:
  it stops generating.
- Failures before the response head (refused, unreachable, connect or write timeout, the
  engine closing without answering, a malformed head) → ``backend_unavailable``; a read
  that times out → ``timeout``; the body breaking off (EOF before its end, a reset,
  malformed chunking) → ``node_disconnected``. Nothing else escapes but cancellation.
- Bounded: a response head over h11's 16 KiB limit is refused; each read takes at most
  ``_READ_SIZE`` bytes.
- Environment proxies (``HTTP_PROXY``) are not used: an engine runs on the node's own host
  or network, and its stream must not detour through a proxy.
"""

from __future__ import annotations

import codecs
import ipaddress
import select
import socket
import ssl
from collections import deque
from collections.abc import Sequence
from typing import Final
from urllib.parse import urlsplit

import h11
import msgspec
import trio

from infernet.protocol.errors import BackendError

__all__ = ["ConnectionPool", "EngineEndpoint", "StreamedResponse", "open_stream"]

_READ_SIZE: Final = 65536
IDLE_TIMEOUT: Final = 3.0  # below the 5 s after which uvicorn and llama.cpp close idle ones
MAX_IDLE: Final = 64
# What a read can raise when the connection breaks: trio wraps socket errors in
# BrokenResourceError; SSLStream raises it too, and OSError covers the rest.
_BROKEN: Final = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)


class EngineEndpoint(msgspec.Struct, frozen=True):
    """Where an engine listens, parsed once from its base URL."""

    host: str
    port: int
    tls: bool
    prefix: str  # the base URL's path, without a trailing slash
    host_header: str
    family: socket.AddressFamily | None  # set when host is an IP literal

    @classmethod
    def parse(cls, base_url: str) -> EngineEndpoint:
        """Parse ``http[s]://host[:port][/prefix]``.

        Raises:
            ValueError: not an http(s) URL with a host, or a bad port.
        """
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL with a host: {base_url!r}")
        tls = parts.scheme == "https"
        port = parts.port or (443 if tls else 80)  # .port raises ValueError when malformed
        try:
            version = ipaddress.ip_address(parts.hostname).version
        except ValueError:
            family = None
        else:
            family = socket.AF_INET if version == 4 else socket.AF_INET6
        return cls(
            host=parts.hostname,
            port=port,
            tls=tls,
            prefix=parts.path.rstrip("/"),
            host_header=parts.netloc.rpartition("@")[2],
            family=family,
        )


class ConnectionPool:
    """Idle keep-alive connections to one engine, the most recently used taken first.

    Bounded by `MAX_IDLE` (the oldest is closed past it); lives in one trio run. `close`
    it when the adapter closes.
    """

    __slots__ = ("_idle", "_idle_timeout", "_max_idle")

    def __init__(self, *, max_idle: int = MAX_IDLE, idle_timeout: float = IDLE_TIMEOUT) -> None:
        self._idle: deque[tuple[trio.abc.Stream, float]] = deque()
        self._max_idle = max_idle
        self._idle_timeout = idle_timeout

    def __len__(self) -> int:
        return len(self._idle)

    def take(self) -> trio.abc.Stream | None:
        """An idle connection that is still open, or None."""
        now = trio.current_time()
        while self._idle:
            stream, since = self._idle.pop()
            if now - since < self._idle_timeout and _quiet(stream):
                return stream
            _close_now(stream)
        return None

    def put(self, stream: trio.abc.Stream) -> None:
        """Keep ``stream`` for the next request."""
        if len(self._idle) >= self._max_idle:
            _close_now(self._idle.popleft()[0])
        self._idle.append((stream, trio.current_time()))

    def close(self) -> None:
        """Close every idle connection. Idempotent."""
        while self._idle:
            _close_now(self._idle.pop()[0])


def _socket_of(stream: trio.abc.Stream) -> trio.socket.SocketType:
    while isinstance(stream, trio.SSLStream):
        stream = stream.transport_stream
    assert isinstance(stream, trio.SocketStream)
    return stream.socket


def _quiet(stream: trio.abc.Stream) -> bool:
    """Whether an idle connection has nothing to read: no close, no reset, no stray bytes
    (what urllib3 checks before reusing a connection)."""
    sock = _socket_of(stream)
    if sock.fileno() < 0:
        return False
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    return not poller.poll(0)


def _close_now(stream: trio.abc.Stream) -> None:
    """Close an idle connection without awaiting (no TLS goodbye: nothing is in flight)."""
    _socket_of(stream).close()


class _Stale(Exception):
    """Internal: a reused connection was closed by the engine before it answered."""


class StreamedResponse:
    """An engine's answer: status and content type now, the body as it arrives.

    Read it with `receive` until it returns ``b""``; always `aclose` it (closing before
    the end aborts the request on the engine).
    """

    __slots__ = ("_conn", "_done", "_pool", "_read_timeout", "_stream", "content_type",
                 "encoding", "status")

    def __init__(
        self, stream: trio.abc.Stream, conn: h11.Connection, head: h11.Response,
        read_timeout: float, pool: ConnectionPool | None = None,
    ) -> None:
        self._stream = stream
        self._conn = conn
        self._read_timeout = read_timeout
        self._pool = pool
        self._done = False
        self.status: int = head.status_code
        content_type = ""
        for name, value in head.headers:
            if name == b"content-type":
                content_type = value.decode("latin-1")
                break
        media, _, params = content_type.partition(";")
        self.content_type: str = media.strip().lower()
        self.encoding: str = _charset(params)

    async def receive(self) -> bytes:
        """Return the next piece of the body, or ``b""`` once it has all arrived.

        Raises:
            BackendError: ``timeout`` (no data within the read timeout) or
                ``node_disconnected`` (the body broke off).
        """
        while not self._done:
            event = await _next_event(self._stream, self._conn, self._read_timeout,
                                      streaming=True)
            if isinstance(event, h11.Data):
                if event.data:
                    return bytes(event.data)
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                self._done = True
        return b""

    async def read(self, limit: int) -> bytes:
        """Read the body up to ``limit`` bytes (an error body, say); the rest is dropped.

        Raises:
            BackendError: as `receive`.
        """
        body = b""
        while len(body) < limit:
            part = await self.receive()
            if not part:
                break
            body += part
        return body[:limit]

    async def aclose(self) -> None:
        """Give the connection back to the pool when the response was read to its end and
        both sides keep it alive, else close it at once. Idempotent; never raises but
        cancellation."""
        pool, self._pool = self._pool, None
        self._done = True
        conn = self._conn
        if pool is not None and conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
            pool.put(self._stream)
            return
        await trio.aclose_forcefully(self._stream)


async def open_stream(
    endpoint: EngineEndpoint,
    path: str,
    body: bytes,
    headers: Sequence[tuple[str, str]],
    *,
    connect_timeout: float,
    read_timeout: float,
    pool: ConnectionPool | None = None,
) -> StreamedResponse:
    """POST ``body`` (JSON) to ``path`` and return once the response head has arrived.

    ``read_timeout`` bounds the write and each read, as httpx's ``Timeout(read)`` did. With
    ``pool``, an idle connection is reused when there is one, and the response's
    `StreamedResponse.aclose` gives it back.

    Raises:
        BackendError: ``backend_unavailable`` (no connection, write failed, closed or
            garbled before answering) or ``timeout`` (no answer within the read timeout).
    """
    request = h11.Request(
        method="POST",
        target=endpoint.prefix + path,
        headers=[("Host", endpoint.host_header), ("Content-Type", "application/json"),
                 ("Content-Length", str(len(body))), *headers],
    )
    if pool is not None and (idle := pool.take()) is not None:
        try:
            return await _exchange(idle, request, body, read_timeout, pool, reused=True)
        except _Stale:
            pass  # closed while idle: the request goes out once more on a new connection
    stream = await _connect(endpoint, connect_timeout)
    return await _exchange(stream, request, body, read_timeout, pool, reused=False)


async def _exchange(
    stream: trio.abc.Stream, request: h11.Request, body: bytes, read_timeout: float,
    pool: ConnectionPool | None, *, reused: bool,
) -> StreamedResponse:
    """Send the request on ``stream`` and read up to the response head.

    Raises:
        _Stale: ``reused`` and the engine had closed the connection (nothing answered).
        BackendError: as `open_stream`.
    """
    try:
        conn = h11.Connection(h11.CLIENT)
        data = conn.send(request) + conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage())
        with trio.move_on_after(read_timeout) as scope:
            try:
                await stream.send_all(data)
            except _BROKEN as exc:
                if reused:
                    raise _Stale() from exc
                raise _unavailable(f"sending the request failed: {exc!r}") from exc
        if scope.cancelled_caught:
            raise _unavailable(f"sending the request took over {read_timeout:g} s")
        first = reused
        while True:
            event = await _next_event(stream, conn, read_timeout, streaming=False,
                                      stale=first)
            first = False
            if isinstance(event, h11.Response):
                return StreamedResponse(stream, conn, event, read_timeout, pool)
            # InformationalResponse (1xx): keep reading for the real answer.
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise


async def _connect(endpoint: EngineEndpoint, timeout: float) -> trio.abc.Stream:
    """Open the connection (and the TLS session for https) within ``timeout`` seconds."""
    stream: trio.abc.Stream | None = None
    with trio.move_on_after(timeout) as scope:
        try:
            tcp = await _open_tcp(endpoint)
            stream = tcp
            if endpoint.tls:
                stream = trio.SSLStream(tcp, ssl.create_default_context(),
                                        server_hostname=endpoint.host, https_compatible=True)
                await stream.do_handshake()
        except (*_BROKEN, ssl.SSLError) as exc:
            if stream is not None:
                await trio.aclose_forcefully(stream)
            raise _unavailable(f"{exc!r}") from exc
    if scope.cancelled_caught or stream is None:
        if stream is not None:
            await trio.aclose_forcefully(stream)
        raise _unavailable(f"no connection to {endpoint.host}:{endpoint.port} within "
                           f"{timeout:g} s")
    return stream


async def _open_tcp(endpoint: EngineEndpoint) -> trio.SocketStream:
    """Connect over TCP. An IP literal (the usual engine URL) is dialled directly: trio's
    ``open_tcp_stream`` would spend a resolver call and a happy-eyeballs nursery on it,
    about a third of this client's CPU per request."""
    if endpoint.family is None:
        return await trio.open_tcp_stream(endpoint.host, endpoint.port)
    sock = trio.socket.socket(endpoint.family, socket.SOCK_STREAM)
    try:
        await sock.connect((endpoint.host, endpoint.port))
    except BaseException:
        sock.close()
        raise
    return trio.SocketStream(sock)


async def _next_event(
    stream: trio.abc.Stream, conn: h11.Connection, timeout: float, *, streaming: bool,
    stale: bool = False,
) -> h11.Event | type[h11.NEED_DATA] | type[h11.PAUSED]:
    """The next HTTP event (never NEED_DATA), reading from the connection as needed.

    ``stale``: nothing was received on this reused connection yet; a close or reset before
    its first byte raises `_Stale`.
    """
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            raise _broken(f"{exc}", streaming=streaming) from exc
        if event is not h11.NEED_DATA:
            return event
        data = b""
        with trio.move_on_after(timeout) as scope:
            try:
                data = await stream.receive_some(_READ_SIZE)
            except _BROKEN as exc:
                if stale:
                    raise _Stale() from exc
                raise _broken(f"{exc!r}", streaming=streaming) from exc
        if stale and not data and not scope.cancelled_caught:
            raise _Stale()
        stale = False
        if scope.cancelled_caught:
            raise BackendError(
                f"engine did not answer in time: nothing received for {timeout:g} s",
                code="timeout",
            )
        conn.receive_data(data)  # b"" marks the end of the connection


def _unavailable(detail: str) -> BackendError:
    return BackendError(f"engine unreachable: {detail}", code="backend_unavailable")


def _broken(detail: str, *, streaming: bool) -> BackendError:
    """A connection that broke: before the answer the engine is unavailable, after it
    started the engine died mid-stream."""
    if streaming:
        return BackendError(f"the engine died mid-stream: {detail}", code="node_disconnected")
    return _unavailable(f"the connection broke before an answer: {detail}")


def _charset(params: str) -> str:
    """The ``charset`` of a Content-Type's parameters if Python knows it, else UTF-8 (what
    httpx's ``Response.encoding`` fell back to)."""
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset":
            value = value.strip().strip('"')
            try:
                return codecs.lookup(value).name
            except LookupError:
                break
    return "utf-8"
