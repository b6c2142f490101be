"""A lean HTTP/1.1 client for the one engine call on every job's path: the streamed generation.

Owns: opening a connection to an engine (TCP, or TLS for ``https``), sending one request with
``Connection: close``, reading the response head and then its body piece by piece with a
timeout on the connect, the write and every read, and turning every failure into
`BackendError` with the codes `infernet.backends.transport` gives httpx's failures.

Why not httpx here (it stays for health probes, model listings and the other adapters):
one streamed request to an instant engine (``bench.gateway_engine``), decoded by the
adapter, cost ~1.05 ms of CPU through httpx and httpcore and ~0.42 ms through this client
(one run, 1,500 sequential requests each). On a node serving short jobs that took its CPU
per job from 1.73 to 1.28 ms. h11 is the HTTP/1.1 state machine httpcore itself is built on; what is
skipped is the pool, cookies, redirects, auth and proxy layers, none of which an engine
call uses.

Invariants:
- One connection per request, closed when the response is closed or fails. Closing early is
  how a cancelled job reaches the engine: it stops generating.
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
import socket
import ssl
from collections.abc import Sequence
from typing import Final
from urllib.parse import urlsplit

import h11
import msgspec
import trio

from infernet.protocol.errors import BackendError

__all__ = ["EngineEndpoint", "StreamedResponse", "open_stream"]

_READ_SIZE: Final = 65536
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


class StreamedResponse:
    """An engine's answer: status and content type now, the body as it arrives.

    Read it with `receive` until it returns ``b""``; always `aclose` it (closing before
    the end aborts the request on the engine).
    """

    __slots__ = ("_conn", "_done", "_read_timeout", "_stream", "content_type", "encoding",
                 "status")

    def __init__(
        self, stream: trio.abc.Stream, conn: h11.Connection, head: h11.Response,
        read_timeout: float,
    ) -> None:
        self._stream = stream
        self._conn = conn
        self._read_timeout = read_timeout
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
        """Close the connection at once. Idempotent; never raises but cancellation."""
        self._done = True
        await trio.aclose_forcefully(self._stream)


async def open_stream(
    endpoint: EngineEndpoint,
    path: str,
    body: bytes,
    headers: Sequence[tuple[str, str]],
    *,
    connect_timeout: float,
    read_timeout: float,
) -> StreamedResponse:
    """POST ``body`` (JSON) to ``path`` and return once the response head has arrived.

    ``read_timeout`` bounds the write and each read, as httpx's ``Timeout(read)`` did.

    Raises:
        BackendError: ``backend_unavailable`` (no connection, write failed, closed or
            garbled before answering) or ``timeout`` (no answer within the read timeout).
    """
    stream = await _connect(endpoint, connect_timeout)
    try:
        conn = h11.Connection(h11.CLIENT)
        request = h11.Request(
            method="POST",
            target=endpoint.prefix + path,
            headers=[("Host", endpoint.host_header), ("Content-Type", "application/json"),
                     ("Content-Length", str(len(body))), *headers],
        )
        data = conn.send(request) + conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage())
        with trio.move_on_after(read_timeout) as scope:
            try:
                await stream.send_all(data)
            except _BROKEN as exc:
                raise _unavailable(f"sending the request failed: {exc!r}") from exc
        if scope.cancelled_caught:
            raise _unavailable(f"sending the request took over {read_timeout:g} s")
        while True:
            event = await _next_event(stream, conn, read_timeout, streaming=False)
            if isinstance(event, h11.Response):
                return StreamedResponse(stream, conn, event, read_timeout)
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
    stream: trio.abc.Stream, conn: h11.Connection, timeout: float, *, streaming: bool
) -> h11.Event | type[h11.NEED_DATA] | type[h11.PAUSED]:
    """The next HTTP event (never NEED_DATA), reading from the connection as needed."""
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
                raise _broken(f"{exc!r}", streaming=streaming) from exc
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
