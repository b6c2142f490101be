"""``POST /v1/chat/completions`` served straight on ASGI, in front of the Quart app.

Owns: `ChatRoute`, which wraps the Quart app's ``asgi_app``, answers the hot route itself
and hands every other request (other paths, other methods, a non-empty ``root_path``) to
Quart untouched. Spec: ``specs/http-api.md`` §"OpenAI API".

Why: at the job rates the coordinator is built for, Quart's per-request machinery (request
and app contexts, werkzeug headers, signals, two tasks per request) cost ~0.25 ms of CPU per
job, more than the route's own work. `coordinator.http_openai.answer_chat` does the work;
this module only frames it.

Invariants: a request answered here gets exactly what the Quart route would give it (same
status, body, headers, logs and ``/metrics`` count; ``tests/coordinator/test_asgi_chat.py``
holds the two side by side):
- errors go through the helpers `coordinator.app`'s error handlers use, and the response
  gets the token's ``X-RateLimit-*`` headers and its count as in ``app._finish``;
- the body is read as quart-trio reads it: refused with 413 past ``max_body`` (at once when
  ``Content-Length`` says so), with 408 after ``body_timeout`` s;
- a client going away cancels its job, as in quart-trio. While the job runs, the request's
  own task waits on the connection (``http.disconnect``) and the job's progress cancels
  that wait (`LiveJob.cancel_at`); only a streamed answer, which waits on the job between
  its writes, has a second task watching the connection. Quart-trio gives every request
  that second task, and each costs a spawn and several trips through the scheduler.
"""

from __future__ import annotations

import math
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import aclosing
from functools import partial
from typing import Final

import msgspec
import trio
from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable, HTTPScope, Scope
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge, RequestTimeout
from werkzeug.sansio.utils import get_content_length

from coordinator import openai_api
from coordinator.http_common import (
    ApiError,
    CoordinatorState,
    http_error_code,
    log,
    log_api_error,
)
from coordinator.http_openai import answer_chat
from coordinator.jobs import LiveJob
from coordinator.ratelimit import Decision
from infernet.protocol.errors import ErrorCode

__all__ = ["PATH", "ChatRoute"]

PATH: Final = "/v1/chat/completions"

ASGIApp = Callable[[Scope, ASGIReceiveCallable, ASGISendCallable], Awaitable[None]]


class ChatRoute:
    """ASGI app: ``POST /v1/chat/completions`` here, everything else to ``app``."""

    def __init__(self, app: ASGIApp, state: CoordinatorState, *, max_body: int,
                 body_timeout: float | None) -> None:
        self.app = app
        self._state = state
        self._max_body = max_body
        self._body_timeout = math.inf if body_timeout is None else body_timeout

    async def __call__(self, scope: Scope, receive: ASGIReceiveCallable,
                       send: ASGISendCallable) -> None:
        if (scope["type"] != "http" or scope["path"] != PATH or scope["method"] != "POST"
                or scope.get("root_path")):
            await self.app(scope, receive, send)
            return
        await self._serve(scope, receive, send)

    async def _serve(self, scope: HTTPScope, receive: ASGIReceiveCallable,
                     send: ASGISendCallable) -> None:
        # Quart reads the first of each header, decoded as latin-1.
        found: dict[bytes, str] = {}
        for name, value in scope["headers"]:
            found.setdefault(bytes(name).lower(), bytes(value).decode("latin-1"))
        body = _Body(get_content_length(found.get(b"content-length"),
                                        found.get(b"transfer-encoding")), self._max_body)
        if not await body.collect(receive, self._body_timeout):
            return  # the client left before its request was whole: no one to answer
        await self._answer(found.get(b"authorization", ""), body, receive, send)

    async def _answer(self, authorization: str, body: _Body, receive: ASGIReceiveCallable,
                      send: ASGISendCallable) -> None:
        rate: Decision | None = None

        def keep_rate(decision: Decision) -> None:
            nonlocal rate
            rate = decision

        payload: bytes | AsyncGenerator[bytes, None]
        try:
            answer = await answer_chat(self._state, authorization, body.read, keep_rate,
                                       partial(_wait_watching, receive))
            for value in answer.headers.values():
                _check_header_value(value)
            status, content_type, headers = 200, answer.content_type, dict(answer.headers)
            payload = answer.body
        except _ClientGone:
            log.debug("%s %s: the client went away; its job was cancelled", "POST", PATH)
            return
        except ApiError as exc:
            log_api_error("POST", PATH, exc)
            status, content_type, headers = exc.status, "application/json", dict(exc.headers)
            payload = _error(exc.code, str(exc))
        except HTTPException as exc:  # the body: too large, too slow
            status, content_type, headers = exc.code or 500, "application/json", {}
            payload = _error(http_error_code(status), exc.description or exc.name)
        except Exception:
            log.exception("%s %s failed", "POST", PATH)
            status, content_type, headers = 500, "application/json", {}
            payload = _error("internal_error", "an internal error occurred")
        if rate is not None:
            headers.update(rate.headers())
        self._state.metrics.request(PATH, "POST", status)
        await _send(send, receive, status, content_type, headers, payload)


class _ClientGone(Exception):
    """The client closed its connection before its answer was ready."""


async def _wait_watching(receive: ASGIReceiveCallable, job: LiveJob, end: bool) -> None:
    """`coordinator.http_openai.JobWait` in the request's own task: parked on the client's
    connection, woken by the job (see the module's invariants).

    Raises:
        _ClientGone: the client went away first (the caller drops the job).
    """
    with trio.CancelScope() as scope:
        job.cancel_at(scope, end=end)
        while True:
            if (await receive())["type"] == "http.disconnect":
                raise _ClientGone()


async def _watch(receive: ASGIReceiveCallable, on_disconnect: trio.CancelScope) -> None:
    """Cancel ``on_disconnect`` when the client goes away."""
    while (await receive())["type"] != "http.disconnect":
        pass
    on_disconnect.cancel()


class _Body:
    """A request body as quart-trio collects it (`quart.wrappers.request.Body`)."""

    __slots__ = ("_complete", "_data", "_max", "_too_large")

    def __init__(self, content_length: int | None, max_body: int) -> None:
        self._data = bytearray()
        self._max = max_body
        self._too_large = content_length is not None and content_length > max_body
        self._complete = self._too_large  # refused without reading it

    async def collect(self, receive: ASGIReceiveCallable, timeout: float) -> bool:
        """Take the body, for at most ``timeout`` seconds (then `read` raises 408), none of
        it past the limit (then `read` raises 413). False: the client went away."""
        with trio.move_on_after(timeout):
            while not self._complete:
                message = await receive()
                if message["type"] == "http.request":
                    self._append(message.get("body", b""))
                    if not message.get("more_body", False):
                        self._complete = True
                elif message["type"] == "http.disconnect":
                    return False
        return True

    def _append(self, data: bytes) -> None:
        if not data or self._too_large:
            return
        self._data.extend(data)
        if len(self._data) > self._max:
            self._too_large = True
            self._complete = True

    async def read(self) -> bytes:
        """The whole body, once `collect` returned True.

        Raises:
            RequestEntityTooLarge: past the limit (413).
            RequestTimeout: not complete within `collect`'s timeout (408).
        """
        if self._too_large:
            raise RequestEntityTooLarge()
        if not self._complete:
            raise RequestTimeout()
        return bytes(self._data)


def _check_header_value(value: str) -> None:
    """Refuse what werkzeug's ``Headers`` refuses (the Quart route answers it with a 500).

    Raises:
        ValueError: a CR or LF in ``value``.
    """
    if "\n" in value or "\r" in value:
        raise ValueError("Header values must not contain newline characters.")


def _error(code: ErrorCode, message: str) -> bytes:
    return msgspec.json.encode(openai_api.error_body(code, message))


async def _send(send: ASGISendCallable, receive: ASGIReceiveCallable, status: int,
                content_type: str, headers: dict[str, str],
                payload: bytes | AsyncGenerator[bytes, None]) -> None:
    raw = [(b"content-type", content_type.encode())]
    if isinstance(payload, bytes):
        raw.append((b"content-length", str(len(payload)).encode()))
    raw.extend((name.lower().encode(), value.encode()) for name, value in headers.items())
    await send({"type": "http.response.start", "status": status, "headers": raw})
    if isinstance(payload, bytes):
        await send({"type": "http.response.body", "body": payload, "more_body": False})
        return
    # A client going away cancels the stream wherever it is; the generator's end detaches
    # the job's reader, which drops the job.
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_watch, receive, nursery.cancel_scope)
        async with aclosing(payload) as events:
            async for data in events:
                await send({"type": "http.response.body", "body": data, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        nursery.cancel_scope.cancel()
