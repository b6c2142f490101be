"""The OpenAI-compatible routes: ``GET /v1/models`` and ``POST /v1/chat/completions``.

Owns: turning a chat request into a job (`coordinator.jobs`), answering routing failures
with a proper status before any byte of the answer, and rendering the job's text as a
``chat.completion`` or as ``chat.completion.chunk`` server-sent events.
Spec: ``specs/http-api.md`` §"OpenAI API".

`answer_chat` is the whole of ``POST /v1/chat/completions`` short of HTTP framing: the Quart
route here and `coordinator.asgi_chat` (which serves it in production, without Quart's
per-request cost) both call it, so the two answer alike.

Invariants: headers go out only once the job has its first text (or ended), so a node lost
before the first token is invisible to the client and the provenance headers name the node
that really answered; a stream that breaks mid-answer ends with an SSE error event, never a
hang; the client going away cancels the job.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass, replace
from functools import partial

import msgspec
import trio
from quart import Response, g, request
from quart_trio import QuartTrio

from coordinator.http_common import (
    ApiError,
    CoordinatorState,
    authenticate,
    check_token,
    hit_rate,
    json_response,
    peek_rate,
    read_body,
    refuse_if_limited,
)
from coordinator.jobs import LiveJob, new_job_id
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
from coordinator.ratelimit import Decision
from infernet.protocol.errors import InfernetError

__all__ = ["ChatAnswer", "JobWait", "answer_chat", "register", "wait_for_job"]

JobWait = Callable[[LiveJob, bool], Awaitable[None]]
"""Waits until a job has ended (True) or has text or has ended (False)."""


async def wait_for_job(job: LiveJob, end: bool) -> None:
    """The plain `JobWait`, on the job's own events."""
    await (job.wait_ended() if end else job.wait_output())


@dataclass(frozen=True, slots=True)
class ChatAnswer:
    """A chat completion ready to go out with status 200: whole, or as SSE events that
    detach the job's reader when they end (iterate under ``aclosing``)."""

    content_type: str
    headers: dict[str, str]
    body: bytes | AsyncGenerator[bytes, None]


def register(app: QuartTrio, state: CoordinatorState) -> None:
    """Add the ``/v1`` routes to ``app``."""

    @app.get("/v1/models")
    async def openai_models() -> Response:
        await authenticate(state)
        counts: dict[str, int] = {}
        for entry in state.table.online(trio.current_time()):
            for offer in entry.announcement.caps.models:
                counts[offer.name] = counts.get(offer.name, 0) + 1
        data = [{"id": name, "object": "model", "created": 0, "owned_by": "infernet",
                 "infernet": {"nodes": n}} for name, n in sorted(counts.items())]
        return json_response({"object": "list", "data": data})

    @app.post("/v1/chat/completions")
    async def chat_completions() -> Response:
        # In production `coordinator.asgi_chat` answers before Quart routes; this stays the
        # route Quart knows (405 for other methods, OPTIONS) and the reference it is tested
        # against.
        answer = await answer_chat(state, request.headers.get("Authorization", ""),
                                   partial(read_body, state), _keep_rate)
        return Response(answer.body, status=200, content_type=answer.content_type,
                        headers=answer.headers)


def _keep_rate(decision: Decision) -> None:
    g.rate = decision  # `coordinator.app` puts it on the response


async def answer_chat(state: CoordinatorState, authorization: str,
                      read: Callable[[], Awaitable[bytes]],
                      keep_rate: Callable[[Decision], None],
                      wait: JobWait = wait_for_job) -> ChatAnswer:
    """Run a chat completion request up to its first text (whole answer if not streamed).

    ``authorization`` is the request's header value, ``read`` returns its body,
    ``keep_rate`` receives each rate-limit state the response must report, and ``wait``
    waits for the job (what it raises passes through; the job is then dropped).

    Raises:
        ApiError: every refusal and every job failure before the first text.
        HTTPException: whatever ``read`` raises (body too large, too slow).
    """
    token = await check_token(state, authorization)
    keep_rate(peek_rate(state, token))
    try:
        chat = parse_chat_request(await read())
    except BadRequest as exc:
        raise ApiError("bad_request", str(exc)) from None
    try:
        state.jobs.check_routable(chat.model)
    except InfernetError as exc:
        raise ApiError(exc.code, str(exc)) from None
    decision = hit_rate(state, token)  # only requests that become jobs count (specs §2)
    keep_rate(decision)
    refuse_if_limited(state, decision)
    job = state.jobs.submit(token.id, to_job_request(chat, new_job_id()), "openai",
                            interactive=True)
    state.jobs.attach(job)
    handed_over = False  # once the SSE body runs, it detaches when it ends
    try:
        if not chat.stream:
            return await _collect(job, chat.model, wait)
        await _first_output(job, wait)
        meta = ResponseMeta(job.id, chat.model, int(time.time()), job.node_pubkey or "",
                            weights_hash=job.served_weights)
        handed_over = True
        return ChatAnswer("text/event-stream", {**meta.headers(), "Cache-Control": "no-cache"},
                          _sse_body(state, chat, job, meta))
    finally:
        if not handed_over:
            state.jobs.detach(job)


async def _first_output(job: LiveJob, wait: JobWait) -> None:
    """Wait until the job is recorded and has text or ended; answer its failure if it ended
    without text.

    Raises:
        ApiError: the job failed before its first text (routing, capacity, the node).
    """
    await _persisted(job)
    await wait(job, False)
    if job.status == "failed" and not job.parts:
        raise ApiError(job.error_code or "internal_error", job.error_message)


async def _persisted(job: LiveJob) -> None:
    """Wait until the job's record committed.

    Raises:
        ApiError: ``internal_error``, the record could not be written (the job is stopped).
    """
    try:
        await job.wait_persisted()
    except Exception as exc:  # sqlite errors: nothing was promised to the client yet
        job.cancel("internal_error")
        raise ApiError("internal_error", f"the job could not be recorded: {exc}") from None


async def _collect(job: LiveJob, model: str, wait: JobWait) -> ChatAnswer:
    """The whole answer of a job that is not streamed, once it ended.

    One wait, for the end: the job's record commits before its end does (the store's
    writes commit in order), so the check that it was recorded waits no more, and the
    request's task wakes once per job instead of three times.

    Raises:
        ApiError: the job could not be recorded, or it failed.
    """
    await wait(job, True)  # the text accumulates in job.parts
    await _persisted(job)
    if job.status == "failed":
        raise ApiError(job.error_code or "internal_error", job.error_message)
    final = job.final
    if final is None:
        raise ApiError("internal_error", "the job ended without a result")
    meta = ResponseMeta(job.id, model, int(job.created_at), job.node_pubkey or "",
                        weights_hash=job.served_weights, receipt_id=job.receipt_id)
    body = completion_body(meta, "".join(job.parts), final.finish_reason, final.prompt_tokens,
                           final.completion_tokens)
    return ChatAnswer("application/json", meta.headers(), msgspec.json.encode(body))


async def _sse_body(state: CoordinatorState, chat: ChatCompletionRequest, job: LiveJob,
                    meta: ResponseMeta) -> AsyncGenerator[bytes, None]:
    include_usage = bool(chat.stream_options and chat.stream_options.include_usage)
    # Events are joined into one write where they are ready together (each write costs a
    # send through hypercorn): the role chunk rides with the first text, the end together.
    head = sse(stream_chunk(meta, {"role": "assistant", "content": ""}))
    try:
        async with aclosing(job.follow()) as batches:
            async for batch in batches:
                yield head + b"".join(sse(stream_chunk(meta, {"content": t})) for t in batch)
                head = b""
        if job.status == "failed":
            yield head + sse(error_body(job.error_code or "internal_error", job.error_message))
            return
        final = job.final
        if final is not None:
            meta = replace(meta, receipt_id=job.receipt_id)  # known only now
            head += sse(stream_chunk(meta, {}, final.finish_reason))
            if include_usage:
                head += sse(usage_chunk(meta, final.prompt_tokens, final.completion_tokens))
        yield head + sse("[DONE]")
    finally:
        state.jobs.detach(job)
