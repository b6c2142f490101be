"""Unit tests of `OpenAICompatBackend` against scripted engines on loopback.

Each test's engine is a handler from an `httpx.Request` to an `httpx.Response`; a small h11
server on 127.0.0.1 runs it, so the streaming client (h11, `infernet.backends.http_stream`)
and the httpx calls (health, model listing) both meet real sockets.
"""

from __future__ import annotations

import json
import socket
import struct
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from typing import Any

import h11
import httpx
import pytest
import trio

from infernet.backends.base import ChatMessage, ChatRequest, ModelInfo, TextDelta, Usage
from infernet.backends.openai_compat import CompletionPrompt, OpenAICompatBackend
from infernet.protocol.errors import BackendError

BASE = "http://engine.test"
REQUEST = ChatRequest(
    model="m", messages=(ChatMessage(role="user", content="Hi?"),), max_tokens=5, stop=("X",)
)
USAGE = {"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}}

Handler = Callable[[httpx.Request], httpx.Response]


def chunk(content: str | None = None, finish: str | None = None) -> dict[str, Any]:
    delta = {} if content is None else {"content": content}
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def sse(*events: dict[str, Any] | str) -> bytes:
    """Encode SSE ``data:`` events; a str is sent verbatim (``[DONE]``, garbage)."""
    return b"".join(
        f"data: {e if isinstance(e, str) else json.dumps(e)}\n\n".encode() for e in events
    )


def sse_response(body: bytes | httpx.AsyncByteStream) -> httpx.Response:
    headers = {"content-type": "text/event-stream"}
    if isinstance(body, bytes):
        return httpx.Response(200, headers=headers, content=body)
    return httpx.Response(200, headers=headers, stream=body)


class ScriptedStream(httpx.AsyncByteStream):
    """A response body sent in ``parts``, then: the end, ``error``, or (``endless``) more
    parts until the client goes away, which sets ``closed``.

    ``error`` tells the engine what to do next: `httpx.ReadTimeout` → fall silent, any other
    error → drop the connection without ending the body.
    """

    def __init__(self, parts: list[bytes], error: Exception | None = None, *, endless=False):
        self.parts, self.error, self.endless = list(parts), error, endless
        self.closed = trio.Event()

    def __aiter__(self) -> ScriptedStream:
        return self

    async def __anext__(self) -> bytes:
        if self.parts:
            return self.parts.pop(0)
        if self.endless:
            return sse(chunk("more"))
        if self.error is not None:
            raise self.error
        raise StopAsyncIteration


async def read_request(stream: trio.SocketStream, conn: h11.Connection) -> httpx.Request:
    """Read one request with h11 and rebuild it as an `httpx.Request` for the handler."""
    head: h11.Request | None = None
    body = b""
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some(65536))
        elif isinstance(event, h11.Request):
            head = event
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            assert head is not None
            return httpx.Request(head.method.decode(), BASE + head.target.decode(),
                                 headers=list(head.headers), content=body)  # fmt: skip


async def answer(stream: trio.SocketStream, conn: h11.Connection, response: httpx.Response):
    """Write ``response``; a `ScriptedStream` body goes out chunked, as engines stream."""
    headers = [(k, v) for k, v in response.headers.raw
               if k.lower() not in (b"content-length", b"transfer-encoding")]  # fmt: skip
    body = response.stream
    if not isinstance(body, ScriptedStream):
        content = response.content
        headers.append((b"content-length", str(len(content)).encode()))
        head = h11.Response(status_code=response.status_code, headers=headers)
        await stream.send_all(conn.send(head) + conn.send(h11.Data(data=content))
                              + conn.send(h11.EndOfMessage()))  # fmt: skip
        return
    await stream.send_all(conn.send(h11.Response(status_code=response.status_code,
                                                 headers=headers)))  # fmt: skip
    try:
        async for part in body:
            await stream.send_all(conn.send(h11.Data(data=part)))
    except httpx.ReadTimeout:
        await trio.sleep_forever()  # the engine falls silent
    except httpx.ReadError:  # the engine's connection is reset
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        return
    except httpx.HTTPError:
        return  # the engine dies: the body never ends
    except trio.BrokenResourceError:
        body.closed.set()  # the client closed the response
        return
    await stream.send_all(conn.send(h11.EndOfMessage()))


@pytest.fixture
async def make_backend(
    nursery: trio.Nursery,
) -> AsyncIterator[Callable[..., OpenAICompatBackend]]:
    """Build an adapter over a loopback engine running ``handler`` for each request (one
    request per connection, as llama.cpp's server does after a stream); closed at the end."""
    made: list[OpenAICompatBackend] = []

    def make(handler: Handler, **kwargs: Any) -> OpenAICompatBackend:
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]

        async def serve(stream: trio.SocketStream) -> None:
            async with stream:
                conn = h11.Connection(h11.SERVER)
                try:
                    request = await read_request(stream, conn)
                except trio.BrokenResourceError:
                    return
                if isinstance(request, httpx.Request):
                    try:
                        response = handler(request)
                    except httpx.ReadTimeout:
                        await trio.sleep_forever()  # the engine never answers
                    await answer(stream, conn, response)

        sock = trio.socket.from_stdlib_socket(listener)
        nursery.start_soon(trio.serve_listeners, serve, [trio.SocketListener(sock)])
        made.append(OpenAICompatBackend(f"http://127.0.0.1:{port}", **kwargs))
        return made[-1]

    yield make
    for backend in made:
        await backend.aclose()


def answering(response: httpx.Response, seen: list[httpx.Request] | None = None) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        if seen is not None:
            seen.append(request)
        return response

    return handler


async def stream_error(backend: OpenAICompatBackend) -> tuple[list[str], BackendError]:
    """Run a stream that must fail; return the texts seen before the error, and the error."""
    texts: list[str] = []
    with pytest.raises(BackendError) as info:
        async for item in backend.stream_chat(REQUEST):
            if isinstance(item, TextDelta):
                texts.append(item.text)
    return texts, info.value


# --- happy paths ---------------------------------------------------------------------------


async def test_chat_stream_yields_deltas_then_engine_usage(make_backend, drain) -> None:
    seen: list[httpx.Request] = []
    body = sse(
        chunk(""),  # role-only opening chunk: nothing to yield
        chunk("Hel"),
        chunk("lo"),
        chunk(None, "length"),
        USAGE,
        "[DONE]",
    )
    backend = make_backend(answering(sse_response(body), seen))
    texts, usage = await drain(backend.stream_chat(REQUEST))
    assert texts == ["Hel", "lo"]
    assert usage == Usage(prompt_tokens=7, completion_tokens=3, finish_reason="length")
    (request,) = seen
    assert request.method == "POST"
    assert request.url == f"{BASE}/v1/chat/completions"
    sent = json.loads(request.content)
    assert sent == {
        "model": "m",
        "stream": True,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": "Hi?"}],
        "max_tokens": 5,
        "stop": ["X"],
    }


async def test_usage_inside_the_last_content_chunk(make_backend, drain) -> None:
    # llama.cpp and vLLM differ in where usage goes; both shapes must work.
    last = chunk("!", "stop") | {"usage": USAGE["usage"]}
    backend = make_backend(answering(sse_response(sse(chunk("Hi"), last, "[DONE]"))))
    texts, usage = await drain(backend.stream_chat(REQUEST))
    assert texts == ["Hi", "!"]
    assert (usage.prompt_tokens, usage.completion_tokens, usage.finish_reason) == (7, 3, "stop")


async def test_usage_then_eof_without_done_is_complete(make_backend, drain) -> None:
    backend = make_backend(answering(sse_response(sse(chunk("a", "stop"), USAGE))))
    texts, usage = await drain(backend.stream_chat(REQUEST))
    assert texts == ["a"] and usage.completion_tokens == 3


async def test_prompt_formatter_uses_raw_completions(make_backend, drain) -> None:
    seen: list[httpx.Request] = []

    def formatter(request: ChatRequest) -> CompletionPrompt:
        return CompletionPrompt(prompt="Q: Hi?\nA:", stop=("\nQ:",), max_tokens=9, temperature=0.0)

    body = sse({"choices": [{"text": " yes", "finish_reason": None}]}, USAGE, "[DONE]")
    backend = make_backend(answering(sse_response(body), seen), prompt_formatter=formatter)
    texts, _ = await drain(backend.stream_chat(REQUEST))
    assert texts == [" yes"]
    assert seen[0].url == f"{BASE}/v1/completions"
    sent = json.loads(seen[0].content)
    assert "messages" not in sent
    assert sent["prompt"] == "Q: Hi?\nA:"
    assert (sent["stop"], sent["max_tokens"], sent["temperature"]) == (["\nQ:"], 9, 0.0)


async def test_streams_keep_the_connection_alive_and_probes_do_not(make_backend, drain) -> None:
    seen: list[httpx.Request] = []
    body = sse(chunk("a"), USAGE, "[DONE]")
    backend = make_backend(answering(sse_response(body), seen))
    # This engine hangs up after each answer, as llama.cpp's server does after a stream:
    # the second stream finds its pooled connection closed and goes out on a new one.
    await drain(backend.stream_chat(REQUEST))
    await drain(backend.stream_chat(REQUEST))
    await backend.health()
    assert [r.headers.get("connection") for r in seen] == [None, None, "close"]
    assert seen[0].headers["accept"] == "text/event-stream"
    assert seen[0].headers["content-type"] == "application/json"


async def test_closing_the_iteration_closes_the_response(make_backend) -> None:
    body = ScriptedStream([], endless=True)
    backend = make_backend(answering(sse_response(body)))
    async with aclosing(backend.stream_chat(REQUEST)) as items:
        async for item in items:
            assert item == TextDelta(text="more")
            break
    with trio.fail_after(10):  # the engine sees the connection go, so it stops generating
        await body.closed.wait()


# --- failures ------------------------------------------------------------------------------


async def test_malformed_chunk_is_internal_error(make_backend) -> None:
    backend = make_backend(answering(sse_response(sse(chunk("ok"), "{not json"))))
    texts, error = await stream_error(backend)
    assert texts == ["ok"]
    assert error.code == "internal_error"


async def test_error_event_mid_stream_is_internal_error(make_backend) -> None:
    event = {"error": {"code": 500, "message": "slot crashed", "type": "server_error"}}
    backend = make_backend(answering(sse_response(sse(event))))
    _, error = await stream_error(backend)
    assert error.code == "internal_error" and "slot crashed" in error.message


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (500, "internal_error"),
        (400, "bad_request"),
        (404, "model_not_found"),  # vLLM/SGLang: "The model `x` does not exist."
        (422, "bad_request"),
        (503, "backend_unavailable"),
    ],
)
async def test_error_status_keeps_engine_message(make_backend, status: int, code: str) -> None:
    body = {"error": {"code": status, "message": "the engine says no", "type": "x"}}
    backend = make_backend(answering(httpx.Response(status, json=body)))
    _, error = await stream_error(backend)
    assert error.code == code
    assert "the engine says no" in error.message and str(status) in error.message


async def test_error_status_with_plain_text_body(make_backend) -> None:
    backend = make_backend(answering(httpx.Response(502, text="bad gateway")))
    _, error = await stream_error(backend)
    assert error.code == "internal_error" and "bad gateway" in error.message


@pytest.mark.parametrize(
    "drop",
    [httpx.RemoteProtocolError("peer closed connection"), httpx.ReadError("reset by peer")],
)
async def test_connection_drop_mid_stream_is_node_disconnected(make_backend, drop) -> None:
    body = ScriptedStream([sse(chunk("par")), sse(chunk("tial"))], drop)
    backend = make_backend(answering(sse_response(body)))
    texts, error = await stream_error(backend)
    assert texts == ["par", "tial"]
    assert error.code == "node_disconnected"
    assert "died mid-stream" in error.message


async def test_eof_before_usage_is_node_disconnected(make_backend) -> None:
    backend = make_backend(answering(sse_response(sse(chunk("a"), chunk("b")))))
    texts, error = await stream_error(backend)
    assert texts == ["a", "b"]
    assert error.code == "node_disconnected" and "died mid-stream" in error.message


async def test_done_without_usage_is_internal_error(make_backend) -> None:
    backend = make_backend(answering(sse_response(sse(chunk("a", "stop"), "[DONE]"))))
    _, error = await stream_error(backend)
    assert error.code == "internal_error" and "usage" in error.message


async def test_read_timeout_mid_stream_is_timeout(make_backend) -> None:
    body = ScriptedStream([sse(chunk("a"))], httpx.ReadTimeout("read timed out"))
    backend = make_backend(answering(sse_response(body)), read_timeout=0.2)
    texts, error = await stream_error(backend)
    assert texts == ["a"]
    assert error.code == "timeout" and "0.2 s" in error.message


async def test_non_sse_answer_is_internal_error(make_backend) -> None:
    backend = make_backend(answering(httpx.Response(200, json={"choices": []})))
    _, error = await stream_error(backend)
    assert error.code == "internal_error"


# --- health, models, lifecycle -------------------------------------------------------------


@pytest.mark.parametrize(("status", "healthy"), [(200, True), (503, False), (500, False)])
async def test_health_reflects_status(make_backend, status: int, healthy: bool) -> None:
    seen: list[httpx.Request] = []
    backend = make_backend(answering(httpx.Response(status, json={"status": "x"}), seen))
    assert await backend.health() is healthy
    assert seen[0].url == f"{BASE}/health"


async def test_health_never_raises_on_timeout(make_backend) -> None:
    def hang(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    with trio.fail_after(10):
        assert await make_backend(hang, health_timeout=0.2).health() is False


async def test_list_models_parses_openai_listing(make_backend) -> None:
    listing = {
        "object": "list",
        "data": [
            {"id": "gemma3-270m", "object": "model",
             "meta": {"size": 246587904, "n_ctx": 2048, "n_params": 268098176,
                      "ftype": "Q4_K - Medium"}},
            {"id": "other", "object": "model", "owned_by": "vllm", "root": "/models/other"},
            {"id": "hf", "object": "model", "owned_by": "vllm", "root": "Qwen/Qwen2.5-7B"},
        ],
    }  # fmt: skip
    backend = make_backend(answering(httpx.Response(200, json=listing)))
    assert await backend.list_models() == [
        ModelInfo(name="gemma3-270m", size_bytes=246587904, parameter_count=268098176,
                  quantization="Q4_K - Medium"),
        ModelInfo(name="other", path="/models/other"),  # a local path it loaded
        ModelInfo(name="hf"),  # a repo id is not a path
    ]  # fmt: skip


@pytest.mark.parametrize(
    "response",
    [httpx.Response(200, text="<html>"), httpx.Response(200, json={"models": []})],
)
async def test_list_models_rejects_garbage(make_backend, response: httpx.Response) -> None:
    with pytest.raises(BackendError) as info:
        await make_backend(answering(response)).list_models()
    assert info.value.code == "internal_error"


async def test_aclose_closes_only_an_owned_client() -> None:
    shared = httpx.AsyncClient(transport=httpx.MockTransport(answering(httpx.Response(200))))
    borrowed = OpenAICompatBackend(BASE, client=shared)
    await borrowed.aclose()
    assert not shared.is_closed
    await shared.aclose()

    owned = OpenAICompatBackend(BASE + "/", name="vllm")
    assert (owned.name, owned.base_url) == ("vllm", BASE)
    await owned.aclose()
    assert owned._client.is_closed


# --- model checks, probe path, what the OpenAI API cannot do ------------------------------


def listing_then(stream_body: bytes, seen: list[httpx.Request], models=("m",)) -> Handler:
    listing = {"object": "list", "data": [{"id": m, "object": "model"} for m in models]}

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path == "/v1/models":
            return httpx.Response(200, json=listing)
        return sse_response(stream_body)

    return handler


async def test_unlisted_model_is_refused_after_one_fresh_listing(make_backend, drain) -> None:
    seen: list[httpx.Request] = []
    backend = make_backend(listing_then(sse(chunk("a"), USAGE, "[DONE]"), seen))
    await backend.list_models()
    other = ChatRequest(model="llama3", messages=REQUEST.messages)
    with pytest.raises(BackendError) as info:
        async for _ in backend.stream_chat(other):
            pass
    assert info.value.code == "model_not_found" and "serves m" in info.value.message
    assert [r.url.path for r in seen] == ["/v1/models", "/v1/models"]  # re-listed once
    await drain(backend.stream_chat(REQUEST))  # a listed model goes straight through
    assert [r.url.path for r in seen][-1] == "/v1/chat/completions"
    assert len(seen) == 3


async def test_no_model_check_before_any_listing(make_backend, drain) -> None:
    seen: list[httpx.Request] = []
    backend = make_backend(listing_then(sse(chunk("a"), USAGE, "[DONE]"), seen))
    await drain(backend.stream_chat(ChatRequest(model="anything", messages=REQUEST.messages)))
    assert [r.url.path for r in seen] == ["/v1/chat/completions"]  # no extra round trip


async def test_probe_path_and_naming_are_configurable(make_backend) -> None:
    seen: list[httpx.Request] = []
    backend = make_backend(answering(httpx.Response(200), seen), name="max",
                           probe_path="/v1/health", model_naming="huggingface")  # fmt: skip
    assert await backend.health()
    assert seen[0].url.path == "/v1/health"
    assert backend.capabilities.model_naming == "huggingface"
    assert not (backend.capabilities.pull or backend.capabilities.remove)


async def test_pull_and_remove_are_unsupported_with_a_hint(make_backend) -> None:
    backend = make_backend(answering(httpx.Response(200)), name="vllm",
                           install_hint="start `vllm serve NAME`")  # fmt: skip
    with pytest.raises(BackendError) as info:
        async for _ in backend.pull("Qwen/Qwen2.5-7B-Instruct"):
            pass
    assert info.value.code == "bad_request"
    assert "the vllm backend cannot pull" in info.value.message
    assert "vllm serve" in info.value.message
    with pytest.raises(BackendError) as info:
        await backend.remove("Qwen/Qwen2.5-7B-Instruct")
    assert info.value.code == "bad_request"


async def test_disk_full_message_is_called_out(make_backend) -> None:
    body = {"error": {"message": "write failed: No space left on device"}}
    backend = make_backend(answering(httpx.Response(500, json=body)))
    _, error = await stream_error(backend)
    assert error.code == "internal_error" and "ran out of disk space" in error.message


async def test_engine_calls_ignore_environment_proxies(make_backend, drain, monkeypatch) -> None:
    with socket.socket() as s:  # a "proxy" that refuses every connection
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "all_proxy"):
        monkeypatch.setenv(name, dead)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    backend = make_backend(answering(sse_response(sse(chunk("a"), USAGE, "[DONE]"))))
    assert await backend.health()
    texts, _ = await drain(backend.stream_chat(REQUEST))
    assert texts == ["a"]
    await backend.aclose()
