"""An instant OpenAI-compatible engine: the upstream for gateway-overhead benchmarks.

Answers ``GET /health``, ``GET /v1/models`` and ``POST /v1/chat/completions`` (stream or
not, ``stream_options.include_usage`` honoured) with a fixed reply of ``--tokens`` tokens,
at once: any time a request takes beyond this server's own microseconds is the cost of
whatever sits between the client and it. A node reaches it as a ``llamacpp`` engine
(``INFERNET_BACKEND=llamacpp``, ``INFERNET_BACKEND_URL``); LiteLLM as an OpenAI upstream.

HTTP/1.1 with keep-alive, parsed by h11 (no web framework: it would cost more than the
"engine"). Not a benchmark itself: ``python -m bench.gateway_engine --port N`` serves.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from functools import partial
from typing import Final

import h11
import trio

MODEL: Final = "instant"
_MAX_BODY: Final = 1 << 20


def _chunk(delta: dict[str, str], finish: str | None = None) -> bytes:
    body = {"id": "chatcmpl-instant", "object": "chat.completion.chunk", "created": 0,
            "model": MODEL, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"


def _usage(tokens: int) -> dict[str, int]:
    return {"prompt_tokens": 8, "completion_tokens": tokens, "total_tokens": 8 + tokens}


def _stream_body(tokens: int, include_usage: bool) -> bytes:
    parts = [_chunk({"role": "assistant", "content": ""})]
    parts += [_chunk({"content": f" w{i}"}) for i in range(tokens)]
    parts.append(_chunk({}, "length"))
    if include_usage:
        usage = {"id": "chatcmpl-instant", "object": "chat.completion.chunk", "created": 0,
                 "model": MODEL, "choices": [], "usage": _usage(tokens)}
        parts.append(b"data: " + json.dumps(usage, separators=(",", ":")).encode() + b"\n\n")
    parts.append(b"data: [DONE]\n\n")
    return b"".join(parts)


def _json_body(tokens: int) -> bytes:
    text = "".join(f" w{i}" for i in range(tokens))
    return json.dumps({
        "id": "chatcmpl-instant", "object": "chat.completion", "created": 0, "model": MODEL,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                     "finish_reason": "length"}],
        "usage": _usage(tokens)}).encode()


async def _send(stream: trio.SocketStream, conn: h11.Connection, *events: h11.Event) -> None:
    data = b"".join(conn.send(e) or b"" for e in events)
    await stream.send_all(data)


async def _next_event(stream: trio.SocketStream, conn: h11.Connection) -> h11.Event | type:
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        data = await stream.receive_some(65536)
        conn.receive_data(data)


async def _answer(stream: trio.SocketStream, conn: h11.Connection, request: h11.Request,
                  tokens: int) -> None:
    body = b""
    while True:
        event = await _next_event(stream, conn)
        if isinstance(event, h11.Data):
            body += event.data
            if len(body) > _MAX_BODY:
                raise h11.RemoteProtocolError("body too large")
        elif isinstance(event, h11.EndOfMessage):
            break
        else:
            raise h11.RemoteProtocolError(f"unexpected {event!r}")
    target = request.target.split(b"?")[0]
    status, ctype, payload = 404, b"application/json", b'{"error": "not found"}'
    if target == b"/health":
        status, payload = 200, b'{"status":"ok"}'
    elif target == b"/v1/models":
        status, payload = 200, json.dumps({"object": "list", "data": [
            {"id": MODEL, "object": "model", "owned_by": "llamacpp"}]}).encode()
    elif target == b"/v1/chat/completions" and request.method == b"POST":
        req = json.loads(body or b"{}")
        n = min(tokens, int(req.get("max_tokens") or tokens))
        if req.get("stream"):
            usage = bool((req.get("stream_options") or {}).get("include_usage"))
            status, ctype, payload = 200, b"text/event-stream", _stream_body(n, usage)
        else:
            status, payload = 200, _json_body(n)
    headers = [(b"content-type", ctype), (b"content-length", str(len(payload)).encode())]
    await _send(stream, conn, h11.Response(status_code=status, headers=headers),
                h11.Data(data=payload), h11.EndOfMessage())


async def _serve_connection(tokens: int, stream: trio.SocketStream) -> None:
    conn = h11.Connection(h11.SERVER)
    try:
        while True:
            event = await _next_event(stream, conn)
            if isinstance(event, h11.ConnectionClosed):
                return
            if not isinstance(event, h11.Request):
                return
            await _answer(stream, conn, event, tokens)
            if conn.our_state is h11.MUST_CLOSE:
                return
            conn.start_next_cycle()
    except (h11.RemoteProtocolError, trio.BrokenResourceError, trio.ClosedResourceError,
            ValueError):
        return  # a client that breaks HTTP or hangs up: drop it
    finally:
        await stream.aclose()


async def serve(port: int, tokens: int, *,
                task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve on 127.0.0.1:``port`` (0: any); report the bound port through ``task_status``."""
    listeners = await trio.open_tcp_listeners(port, host="127.0.0.1")
    task_status.started(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(partial(_serve_connection, tokens), listeners)


def serve_main(argv: list[str] | None = None) -> int:
    """``python -m bench.gateway_engine``: serve until interrupted (prints the port)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--tokens", type=int, default=16)
    args = ap.parse_args(argv)

    async def run() -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                port = await nursery.start(serve, args.port, args.tokens)
                print(f"instant engine on http://127.0.0.1:{port}", flush=True)
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    break

    trio.run(run)
    return 0


if __name__ == "__main__":
    sys.exit(serve_main())
