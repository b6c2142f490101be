"""`coordinator.asgi_chat` answers ``POST /v1/chat/completions`` exactly as the Quart route
would: the same script of requests goes to two coordinators, one through `ChatRoute` and one
straight to the Quart app behind it, and every status, header, body, log line and metric
must match (ids, keys and times aside)."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from werkzeug.exceptions import RequestEntityTooLarge, RequestTimeout

from coordinator.asgi_chat import PATH, ChatRoute, _Body
from coordinator.ratelimit import Limits
from tests.coordinator.fakes import MODEL, Script
from tests.coordinator.harness import Harness, open_harness

CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Capital of France?"}]}
App = Callable[[Any, Any, Any], Awaitable[None]]
Reply = tuple[int | None, list[str], str]


def _normalise(text: str) -> str:
    text = re.sub(r"job_[0-9a-f]{24}", "JOB", text)
    text = re.sub(r"[0-9a-f]{64}", "HEX", text)
    text = re.sub(r"node=[0-9a-f]{16}", "node=NODE", text)
    text = re.sub(r"npub1[0-9a-z]+", "NPUB", text)
    text = re.sub(r"(ttft_ms|latency_ms)=[0-9.]+", r"\1=T", text)
    return re.sub(r'"created":\d+', '"created":T', text)


def _scope(method: str, path: str, headers: dict[str, str]) -> dict[str, Any]:
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "method": method, "scheme": "http", "path": path, "raw_path": path.encode(),
            "query_string": b"", "root_path": "", "client": ("127.0.0.1", 5000),
            "server": ("127.0.0.1", 80), "extensions": {}, "state": {},
            "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]}


async def call(app: App, body: bytes | list[bytes], headers: dict[str, str], *,
               method: str = "POST", path: str = PATH) -> Reply:
    """One request through ``app`` as hypercorn would make it; the body may come in parts."""
    parts = [body] if isinstance(body, bytes) else body
    inbox = [{"type": "http.request", "body": p, "more_body": i < len(parts) - 1}
             for i, p in enumerate(parts)]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if inbox:
            return inbox.pop(0)
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(_scope(method, path, headers), receive, send)
    status, names, payload = None, [], b""
    for message in sent:
        if message["type"] == "http.response.start":
            status = message["status"]
            names = sorted(_normalise(f"{k.decode()}: {v.decode()}") for k, v in message["headers"]
                           if k != b"x-ratelimit-reset")
        else:
            payload += message.get("body", b"")
    return status, names, _normalise(payload.decode())


async def _script(h: Harness, app: App) -> list[Reply]:
    """Every way the route can answer, in one coordinator."""
    def auth(token: str | None = None, **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or h.token}",
                "Content-Type": "application/json", **extra}

    def post(body: Any, headers: dict[str, str] | None = None) -> Awaitable[Reply]:
        raw = body if isinstance(body, bytes | list) else json.dumps(body).encode()
        return call(app, raw, auth() if headers is None else headers)

    out = [await post(CHAT)]  # 503: no node at all
    node = h.nodes.add(weights_hash="sha256:w")
    out += [await post(CHAT), await post({**CHAT, "stream": True}),
            await post({**CHAT, "stream": True, "stream_options": {"include_usage": True}}),
            await post(CHAT, {"Content-Type": "application/json"}),
            await post(CHAT, auth("inf_unknown")),
            await post(CHAT, {"Authorization": "Basic abc"}),
            await post(CHAT, {"authorization": f"bearer {h.token}"}),
            await post(b""), await post(b'{"model": '), await post({**CHAT, "frob": 1}),
            await post([b'{"model": "', b'x', b'"}']),
            await post({**CHAT, "model": "nope"}),
            await post(b"{}", auth(**{"Content-Length": str(5 << 20)})),
            await post([b"x" * (3 << 20), b"x" * (3 << 20)]),
            await call(app, b"", auth(), method="GET"),
            await call(app, b"", auth(), path=PATH + "/")]
    h.nodes.by_peer[node.peer_id].script = Script(lose_after_texts=2)
    out += [await post(CHAT), await post({**CHAT, "stream": True})]
    h.nodes.by_peer[node.peer_id].script = Script(refuse="bad_request")
    out += [await post(CHAT)]
    h.nodes.by_peer[node.peer_id].script = Script()
    out += [await post(CHAT) for _ in range(3)]  # the last ones over the limit: 429
    return out


async def _run(tmp_path: Path, fast: bool, caplog: pytest.LogCaptureFixture
               ) -> tuple[list[Reply], list[str], list[str]]:
    caplog.clear()
    async with open_harness(tmp_path, limits=Limits(per_minute=9, per_hour=1000)) as h:
        route = h.client.app.asgi_app
        assert isinstance(route, ChatRoute)
        replies = await _script(h, route if fast else route.app)
        metrics = [line for line in h.state.metrics.render().decode().splitlines()
                   if line.startswith(("infernet_http_requests_total", "infernet_jobs_total",
                                       "infernet_rate_limited_total"))]
    logs = [_normalise(f"{r.name} {r.levelname} {r.getMessage()} {r.exc_info is not None}")
            for r in caplog.records if r.name in ("coordinator.api", "coordinator.jobs")]
    return replies, sorted(metrics), logs


async def test_the_fast_route_answers_as_the_quart_route(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    quart = await _run(tmp_path / "quart", False, caplog)
    fast = await _run(tmp_path / "fast", True, caplog)
    statuses = [status for status, _, _ in quart[0]]
    assert statuses == [503, 200, 200, 200, 401, 401, 401, 200, 400, 400, 400, 400, 404, 413,
                        413, 405, 404, 502, 200, 400, 200, 200, 429]
    for i, (want, got) in enumerate(zip(quart[0], fast[0], strict=True)):
        assert got == want, i
    assert fast[1] == quart[1]
    assert fast[2] == quart[2]


async def test_an_unexpected_error_is_a_logged_500(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def broken(token: str) -> None:
        raise RuntimeError("the store is gone")

    replies = []
    for name in ("quart", "fast"):
        async with open_harness(tmp_path / name) as h:
            h.state.tokens.check = broken  # type: ignore[method-assign, assignment]
            route = h.client.app.asgi_app
            caplog.clear()
            replies.append(await call(route if name == "fast" else route.app,
                                      json.dumps(CHAT).encode(), h.auth()))
            [record] = [r for r in caplog.records if r.name == "coordinator.api"]
            assert record.getMessage() == f"POST {PATH} failed" and record.exc_info
    assert replies[0] == replies[1]
    assert replies[0][0] == 500


async def test_only_the_chat_post_skips_quart(tmp_path: Path) -> None:
    async with open_harness(tmp_path) as h:
        route = h.client.app.asgi_app
        seen: list[str] = []

        async def inner(scope: Any, receive: Any, send: Any) -> None:
            seen.append(f"{scope['method']} {scope['path']}")
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b"", "more_body": False})

        fast = ChatRoute(inner, h.state, max_body=1 << 20, body_timeout=60)
        h.nodes.add()
        assert (await call(fast, json.dumps(CHAT).encode(), h.auth()))[0] == 200
        for method, path in (("GET", PATH), ("POST", "/v1/chat/completions/"),
                             ("POST", "/api/v1/jobs"), ("OPTIONS", PATH)):
            assert (await call(fast, b"", h.auth(), method=method, path=path))[0] == 204
        assert seen == ["GET /v1/chat/completions", "POST /v1/chat/completions/",
                        "POST /api/v1/jobs", "OPTIONS /v1/chat/completions"]
        assert isinstance(route, ChatRoute)


async def test_a_body_is_cut_off_after_the_timeout(autojump_clock: trio.testing.MockClock
                                                   ) -> None:
    body = _Body(None, 100)
    messages = iter([{"type": "http.request", "body": b"abc", "more_body": True}])

    async def receive() -> Any:
        message = next(messages, None)
        if message is None:
            await trio.sleep_forever()
        return message

    assert await body.collect(receive, 60.0)
    assert trio.current_time() == pytest.approx(60.0)
    with pytest.raises(RequestTimeout):
        await body.read()


async def test_a_body_over_the_limit_is_refused() -> None:
    async def unread() -> Any:
        raise AssertionError("a body its Content-Length refuses is not read")

    body = _Body(101, 100)
    assert await body.collect(unread, 60.0)
    with pytest.raises(RequestEntityTooLarge):
        await body.read()
    body = _Body(None, 4)
    messages = iter([{"type": "http.request", "body": b"abc", "more_body": True},
                     {"type": "http.request", "body": b"de", "more_body": True}])

    async def receive() -> Any:
        return next(messages)

    assert await body.collect(receive, 60.0)  # stops reading past the limit
    with pytest.raises(RequestEntityTooLarge):
        await body.read()


async def test_a_client_gone_before_its_body_ends_gets_no_answer(tmp_path: Path) -> None:
    async with open_harness(tmp_path) as h:
        route = h.client.app.asgi_app
        messages = iter([{"type": "http.request", "body": b'{"mod', "more_body": True},
                         {"type": "http.disconnect"}])

        async def receive() -> Any:
            return next(messages)

        async def send(message: Any) -> None:
            raise AssertionError(f"nothing is sent to a client that left: {message}")

        h.nodes.add()
        await route(_scope("POST", PATH, h.auth()), receive, send)
        assert h.state.jobs.running() == 0


@pytest.mark.parametrize("stream", [False, True])
async def test_the_client_going_away_cancels_its_job(tmp_path: Path, stream: bool) -> None:
    async with open_harness(tmp_path) as h:
        route = h.client.app.asgi_app
        gate = trio.Event()
        node = h.nodes.add(Script(gate=gate, stall_after=1))
        gone, answered = trio.Event(), trio.Event()
        sent: list[Any] = []
        messages = [{"type": "http.request", "more_body": False,
                     "body": json.dumps({**CHAT, "stream": stream}).encode()}]

        async def receive() -> Any:
            if messages:
                return messages.pop(0)
            await gone.wait()
            return {"type": "http.disconnect"}

        async def send(message: Any) -> None:
            sent.append(message)
            answered.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(route, _scope("POST", PATH, h.auth()), receive, send)
            await node.opened.wait()
            [job] = [h.live(j.job_id) for j in node.jobs]
            if stream:
                gate.set()  # the first text: the answer has started when the client leaves
                await answered.wait()
            gone.set()
            await job.wait_ended()
        assert (job.status, job.error_code) == ("failed", "cancelled")
        assert node.cancelled == 1
        assert [m["status"] for m in sent if m["type"] == "http.response.start"] == (
            [200] if stream else [])
