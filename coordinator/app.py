"""The coordinator's HTTP API (quart-trio): OpenAI ``/v1`` on top of the mesh.

Owns: routes, bearer-token auth, JSON error bodies for every failure (including Quart's own
404/405/413), and the streaming bridge from job frames to server-sent events.
Routes decode, call pure logic or the router, update the store, and respond.

Invariants: every error is ``{"error": {"code", "message", "type"}}`` with the status of its
code; a stream that breaks mid-answer ends with an SSE error event, never a hang (every
mesh read has a timeout); every job is recorded in the store with its outcome.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Any, Final

import msgspec
import trio
from quart import Response, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from coordinator.openai_api import (
    BadRequest,
    ChatCompletionRequest,
    ResponseMeta,
    completion_body,
    error_body,
    parse_chat_request,
    sse,
    stream_chunk,
    to_job_request,
    usage_chunk,
)
from coordinator.router import dispatch
from coordinator.store import AsyncStore, TokenRecord
from infernet.mesh.host import MeshHost
from infernet.mesh.peer_table import PeerTable
from infernet.protocol.errors import ErrorCode, InfernetError, info

__all__ = ["CoordinatorState", "create_app"]

log = logging.getLogger("coordinator.api")

MAX_BODY: Final = 4 << 20
_HTTP_CODES: Final[dict[int, ErrorCode]] = {400: "bad_request", 401: "unauthorized",
                                            404: "bad_request", 405: "bad_request",
                                            413: "bad_request"}


@dataclass(slots=True)
class CoordinatorState:
    """What the routes work with: the mesh, the peer table and the store."""

    mesh: MeshHost
    table: PeerTable
    store: AsyncStore


class ApiError(Exception):
    """Raised inside a route to answer with an error body."""

    def __init__(self, code: ErrorCode, message: str | None = None, status: int | None = None):
        super().__init__(message or info(code).message)
        self.code = code
        self.status = status or info(code).status


def _json_error(code: ErrorCode, message: str | None, status: int) -> Response:
    return Response(
        _dumps(error_body(code, message)), status=status, content_type="application/json"
    )


def _dumps(obj: dict[str, Any]) -> bytes:
    return msgspec.json.encode(obj)


def create_app(state: CoordinatorState) -> QuartTrio:
    """Build the ASGI app bound to ``state``."""
    app = QuartTrio("infernet-coordinator")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY
    app.config["RESPONSE_TIMEOUT"] = None  # long generations stream for minutes

    @app.errorhandler(ApiError)
    async def _api_error(exc: ApiError) -> Response:
        return _json_error(exc.code, str(exc), exc.status)

    @app.errorhandler(HTTPException)
    async def _http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        code = _HTTP_CODES.get(status, "internal_error")
        return _json_error(code, exc.description or exc.name, status)

    async def authenticate() -> TokenRecord:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError("unauthorized",
                           "missing bearer token: send 'Authorization: Bearer <token>'")
        record = await state.store.call(state.store.sync.check_token, token.strip())
        if record is None:
            raise ApiError("unauthorized", "invalid or revoked API token")
        return record

    @app.get("/health")
    async def health() -> dict[str, Any]:
        now = trio.current_time()
        return {"status": "ok", "peer_id": state.mesh.peer_id,
                "nodes_online": len(state.table.online(now))}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        await authenticate()
        counts: dict[str, int] = {}
        for entry in state.table.online(trio.current_time()):
            for offer in entry.announcement.caps.models:
                counts[offer.name] = counts.get(offer.name, 0) + 1
        data = [{"id": name, "object": "model", "created": 0, "owned_by": "infernet",
                 "infernet": {"nodes": n}} for name, n in sorted(counts.items())]
        return {"object": "list", "data": data}

    @app.post("/v1/chat/completions")
    async def chat_completions() -> Response:
        token = await authenticate()
        try:
            body = await request.get_data(as_text=False)
            chat = parse_chat_request(body if isinstance(body, bytes) else body.encode())
        except BadRequest as exc:
            raise ApiError("bad_request", str(exc)) from None
        job_id = secrets.token_hex(12)
        await state.store.call(state.store.sync.create_job, job_id, token.id, chat.model)
        events = _run_job(state, chat, job_id)
        try:
            first = await events.__anext__()  # routing errors surface here, before headers
        except InfernetError as exc:
            await events.aclose()
            await state.store.call(state.store.sync.fail_job, job_id, exc.code, str(exc))
            raise ApiError(exc.code, str(exc)) from None
        if not isinstance(first, _Started):  # _run_job always starts with _Started
            raise ApiError("internal_error", "job produced no start event")
        headers = {"X-Infernet-Node": first.node_pubkey, "X-Infernet-Job": job_id}
        if chat.stream:
            return Response(_sse_body(chat, job_id, first, events), status=200,
                            content_type="text/event-stream",
                            headers={**headers, "Cache-Control": "no-cache"})
        return await _collect(chat, job_id, first, events, headers)

    return app


@dataclass(frozen=True, slots=True)
class _Started:
    node_pubkey: str
    created: int


@dataclass(frozen=True, slots=True)
class _Text:
    text: str


@dataclass(frozen=True, slots=True)
class _Done:
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str


@dataclass(frozen=True, slots=True)
class _Failed:
    code: ErrorCode
    message: str


_Event = _Started | _Text | _Done | _Failed


async def _run_job(
    state: CoordinatorState, chat: ChatCompletionRequest, job_id: str
) -> AsyncGenerator[_Event, None]:
    """Route the job and turn its frames into events; the first is `_Started`.

    Raises (only before `_Started`): InfernetError with ``no_capacity``/``model_not_found``.
    After that, failures arrive as a `_Failed` event and are recorded in the store.
    """
    job = to_job_request(chat, job_id)
    async with dispatch(state.mesh, state.table, job, trio.current_time()) as (call, entry):
        await state.store.call(state.store.sync.start_job, job_id, entry.pubkey)
        yield _Started(entry.pubkey, int(time.time()))
        try:
            async for text in call.chunks():
                yield _Text(text)
        except InfernetError as exc:
            log.warning("job %s failed mid-stream on %s: %s: %s", job_id, entry.pubkey[:12],
                        exc.code, exc)
            await state.store.call(state.store.sync.fail_job, job_id, exc.code, str(exc))
            yield _Failed(exc.code, str(exc))
            return
        final = call.final
        if final is None:  # chunks() only returns after a final frame
            raise InfernetError("stream ended without a final frame")
        await state.store.call(state.store.sync.finish_job, job_id, final.prompt_tokens,
                               final.completion_tokens)
        yield _Done(final.prompt_tokens, final.completion_tokens, final.finish_reason)


async def _sse_body(
    chat: ChatCompletionRequest, job_id: str, started: _Started,
    events: AsyncGenerator[_Event, None],
) -> AsyncIterator[bytes]:
    meta = ResponseMeta(job_id, chat.model, started.created, started.node_pubkey)
    include_usage = bool(chat.stream_options and chat.stream_options.include_usage)
    async with _closing(events):
        yield sse(stream_chunk(meta, {"role": "assistant", "content": ""}))
        async for ev in events:
            if isinstance(ev, _Text):
                yield sse(stream_chunk(meta, {"content": ev.text}))
            elif isinstance(ev, _Failed):
                yield sse(error_body(ev.code, ev.message))
                return
            elif isinstance(ev, _Done):
                yield sse(stream_chunk(meta, {}, ev.finish_reason))
                if include_usage:
                    yield sse(usage_chunk(meta, ev.prompt_tokens, ev.completion_tokens))
        yield sse("[DONE]")


async def _collect(
    chat: ChatCompletionRequest, job_id: str, started: _Started,
    events: AsyncGenerator[_Event, None], headers: dict[str, str],
) -> Response:
    parts: list[str] = []
    async with _closing(events):
        async for ev in events:
            if isinstance(ev, _Text):
                parts.append(ev.text)
            elif isinstance(ev, _Failed):
                raise ApiError(ev.code, ev.message)
            elif isinstance(ev, _Done):
                meta = ResponseMeta(job_id, chat.model, started.created, started.node_pubkey)
                body = completion_body(meta, "".join(parts), ev.finish_reason,
                                       ev.prompt_tokens, ev.completion_tokens)
                return Response(_dumps(body), status=200, content_type="application/json",
                                headers=headers)
    raise ApiError("internal_error", "the job ended without a result")


class _closing:
    """``async with`` that acloses an async generator (contextlib.aclosing, typed for mypy)."""

    def __init__(self, gen: AsyncGenerator[_Event, None]) -> None:
        self._gen = gen

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *exc: object) -> None:
        await self._gen.aclose()
