"""The OpenAI-compatible routes: ``GET /v1/models`` and ``POST /v1/chat/completions``.

Owns: turning a chat request into a job (`coordinator.jobs`), answering routing failures
with a proper status before any byte of the answer, and rendering the job's text as a
``chat.completion`` or as ``chat.completion.chunk`` server-sent events.
Spec: ``specs/http-api.md`` §"OpenAI API".

Invariants: headers go out only once the job has its first text (or ended), so a node lost
before the first token is invisible to the client and the provenance headers name the node
that really answered; a stream that breaks mid-answer ends with an SSE error event, never a
hang; the client going away cancels the job.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import replace

import trio
from quart import Response
from quart_trio import QuartTrio

from coordinator.http_common import (
    ApiError,
    CoordinatorState,
    authenticate,
    count_request,
    json_response,
    read_body,
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
from infernet.protocol.errors import InfernetError

__all__ = ["register"]


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
        token = await authenticate(state)
        try:
            chat = parse_chat_request(await read_body(state))
        except BadRequest as exc:
            raise ApiError("bad_request", str(exc)) from None
        try:
            state.jobs.check_routable(chat.model)
        except InfernetError as exc:
            raise ApiError(exc.code, str(exc)) from None
        count_request(state, token)  # only requests that become jobs count (specs §2)
        request = to_job_request(chat, new_job_id())
        job = state.jobs.submit(token.id, request, "openai", interactive=True)
        state.jobs.attach(job)
        handed_over = False  # once the SSE body runs, it detaches when it ends
        try:
            await _first_output(job)
            meta = ResponseMeta(job.id, chat.model, int(time.time()), job.node_pubkey or "",
                                weights_hash=job.served_weights)
            if chat.stream:
                handed_over = True
                return Response(_sse_body(state, chat, job, meta), status=200,
                                content_type="text/event-stream",
                                headers={**meta.headers(), "Cache-Control": "no-cache"})
            return await _collect(job, meta)
        finally:
            if not handed_over:
                state.jobs.detach(job)


async def _first_output(job: LiveJob) -> None:
    """Wait until the job is recorded and has text or ended; answer its failure if it ended
    without text.

    Raises:
        ApiError: the job failed before its first text (routing, capacity, the node).
    """
    try:
        await job.wait_persisted()
    except Exception as exc:  # sqlite errors: nothing was promised to the client yet
        job.cancel("internal_error")
        raise ApiError("internal_error", f"the job could not be recorded: {exc}") from None
    await job.wait_output()
    if job.status == "failed" and not job.parts:
        raise ApiError(job.error_code or "internal_error", job.error_message)


async def _collect(job: LiveJob, meta: ResponseMeta) -> Response:
    await job.wait_ended()  # the text accumulates in job.parts
    if job.status == "failed":
        raise ApiError(job.error_code or "internal_error", job.error_message)
    final = job.final
    if final is None:
        raise ApiError("internal_error", "the job ended without a result")
    meta = replace(meta, receipt_id=job.receipt_id)
    body = completion_body(meta, "".join(job.parts), final.finish_reason, final.prompt_tokens,
                           final.completion_tokens)
    return json_response(body, headers=meta.headers())


async def _sse_body(state: CoordinatorState, chat: ChatCompletionRequest, job: LiveJob,
                    meta: ResponseMeta) -> AsyncIterator[bytes]:
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
