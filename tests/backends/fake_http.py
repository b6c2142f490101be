"""A tiny HTTP/1.1 server on loopback for adapter tests: real TCP, scripted answers.

One request per connection (``Connection: close``), which httpx handles like any server
closing an idle connection. Handlers get the parsed `Request` and a `Reply` to write a plain
body, a chunked stream, or to drop the connection half-way (an engine dying mid-stream).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import trio
from trio_typing import TaskStatus

_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
            500: "Internal Server Error", 503: "Service Unavailable"}  # fmt: skip


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


class Reply:
    """Writes one response on the connection."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self._stream = stream
        self._chunked = False

    async def send(self, status: int, body: bytes | str | dict[str, Any] | list[Any],
                   content_type: str = "application/json") -> None:
        if isinstance(body, dict | list):
            body = json.dumps(body)
        data = body.encode() if isinstance(body, str) else body
        head = (f"HTTP/1.1 {status} {_REASONS.get(status, 'X')}\r\n"
                f"content-type: {content_type}\r\ncontent-length: {len(data)}\r\n"
                "connection: close\r\n\r\n")
        await self._stream.send_all(head.encode() + data)

    async def start_stream(self, status: int = 200,
                           content_type: str = "application/x-ndjson") -> None:
        head = (f"HTTP/1.1 {status} {_REASONS.get(status, 'X')}\r\n"
                f"content-type: {content_type}\r\ntransfer-encoding: chunked\r\n"
                "connection: close\r\n\r\n")
        await self._stream.send_all(head.encode())
        self._chunked = True

    async def chunk(self, data: bytes | str) -> None:
        raw = data.encode() if isinstance(data, str) else data
        await self._stream.send_all(b"%x\r\n%s\r\n" % (len(raw), raw))

    async def line(self, obj: dict[str, Any]) -> None:
        """One NDJSON line as its own HTTP chunk."""
        await self.chunk(json.dumps(obj) + "\n")

    async def end_stream(self) -> None:
        await self._stream.send_all(b"0\r\n\r\n")


Handler = Callable[[Request, Reply], Awaitable[None]]


@dataclass
class FakeServer:
    """Serves ``handler`` on 127.0.0.1 (port 0 unless given); records every request."""

    handler: Handler
    port: int = 0
    requests: list[Request] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def serve(self, *, task_status: TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(self.port, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self.url)
        await trio.serve_listeners(self._connection, listeners)

    async def _connection(self, stream: trio.SocketStream) -> None:
        async with stream:
            try:
                request = await _read_request(stream)
            except (trio.BrokenResourceError, trio.ClosedResourceError, ValueError):
                return  # a probe that gave up; nothing to answer
            if request is None:
                return
            self.requests.append(request)
            # the client may go away mid-answer (a cancelled stream)
            with contextlib.suppress(trio.BrokenResourceError):
                await self.handler(request, Reply(stream))


async def _read_request(stream: trio.SocketStream) -> Request | None:
    data = b""
    while b"\r\n\r\n" not in data:
        more = await stream.receive_some(65536)
        if not more:
            return None
        data += more
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        more = await stream.receive_some(65536)
        if not more:
            return None
        body += more
    return Request(method, path.split("?", 1)[0], headers, body)


def routes(table: dict[str, tuple[int, Any]]) -> Handler:
    """A handler answering fixed ``(status, body)`` per path, 404 elsewhere."""

    async def handle(request: Request, reply: Reply) -> None:
        status, body = table.get(request.path, (404, {"error": "not found"}))
        await reply.send(status, body)

    return handle


def openai_engine(models: list[str], owned_by: str = "vllm", tag: str = "") -> Handler:
    """An OpenAI-compatible engine: /health, /v1/models, streaming chat that echoes the
    last message's words (prefixed with ``tag``) and reports usage."""

    async def handle(request: Request, reply: Reply) -> None:
        if request.path == "/health":
            await reply.send(200, "")
        elif request.path == "/v1/models":
            await reply.send(200, {"object": "list", "data": [
                {"id": m, "object": "model", "owned_by": owned_by} for m in models]})
        elif request.path == "/v1/chat/completions":
            body = request.json()
            if body["model"] not in models:
                await reply.send(404, {"error": {"message": f"The model `{body['model']}` "
                                                 "does not exist.", "code": 404}})
                return
            words = (tag + " " + body["messages"][-1]["content"]).split()
            words = words[: body.get("max_tokens") or len(words)]
            await reply.start_stream(content_type="text/event-stream")
            for word in words:
                event = {"choices": [{"index": 0, "delta": {"content": word + " "}}]}
                await reply.chunk(f"data: {json.dumps(event)}\n\n")
            usage = {"choices": [], "usage": {"prompt_tokens": 5,
                                              "completion_tokens": len(words)}}
            await reply.chunk(f"data: {json.dumps(usage)}\n\ndata: [DONE]\n\n")
            await reply.end_stream()
        else:
            await reply.send(404, {"error": "not found"})

    return handle
