"""The job API routes (``/api/v1``): jobs, models, nodes, receipts (CPRs), bootstrap.

Owns: the HTTP side of the job lifecycle in ``specs/http-api.md`` §"Job API" (the book,
chapter 4): ``stream: false`` answers ``202 {id, status: pending}`` at once and the job runs
in the coordinator's nursery; ``stream: true`` or ``Accept: text/event-stream`` answers an
SSE stream of ``{"text": ...}`` events. A job can be polled or (re)attached by id by the
token that submitted it; other tokens get 404, as for an unknown id.

Invariants: a job id is returned only once the job is in the store; a stream names the job
in ``X-Infernet-Job`` so a client that loses the connection can attach again.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any, Final

import trio
from quart import Response, request
from quart_trio import QuartTrio

from coordinator.http_common import (
    ApiError,
    CoordinatorState,
    authenticate,
    count_request,
    json_response,
    read_body,
)
from coordinator.http_registry import registered_user
from coordinator.job_api import (
    BadJobRequest,
    iso_time,
    job_body,
    normalize_node_id,
    parse_iso_time,
    parse_job_create,
    sse_end,
    sse_error,
    sse_text,
    to_job_request,
)
from coordinator.jobs import JobView, LiveJob, new_job_id
from coordinator.openai_api import provenance_headers
from coordinator.receipts import receipt_body
from coordinator.store import Store
from infernet.protocol.errors import InfernetError

__all__ = ["register"]

MAX_LIST: Final = 100
DEFAULT_LIST: Final = 20
_STATUSES: Final = frozenset({"pending", "processing", "completed", "failed"})
_SSE_HEADERS: Final = {"Cache-Control": "no-cache"}


def register(app: QuartTrio, state: CoordinatorState) -> None:
    """Add the ``/api/v1`` routes to ``app``."""

    @app.post("/api/v1/jobs")
    async def submit_job() -> Response:
        token = await authenticate(state)
        try:
            req = parse_job_create(await read_body(state))
        except BadJobRequest as exc:
            raise ApiError("bad_request", str(exc)) from None
        pinned = (normalize_node_id(req.node_id) or "") if req.node_id else ""
        weights = req.weights_hash or ""
        try:
            state.jobs.check_routable(req.model, weights_hash=weights, pinned=pinned)
        except InfernetError as exc:
            raise ApiError(exc.code, str(exc)) from None
        count_request(state, token)  # only requests that become jobs count (specs §2)
        stream = req.stream or "text/event-stream" in request.headers.get("Accept", "")
        job = state.jobs.submit(token.id, to_job_request(req, new_job_id()), "jobs",
                                interactive=stream, weights_hash=weights, pinned=pinned)
        try:
            await job.wait_persisted()
        except Exception as exc:  # sqlite errors: the job was never accepted
            job.cancel("internal_error")
            raise ApiError("internal_error", f"the job could not be recorded: {exc}") from None
        if not stream:
            body = {"id": job.id, "object": "job", "status": "pending", "model": req.model,
                    "created_at": iso_time(job.created_at)}
            return json_response(body, 202, {"Location": f"/api/v1/jobs/{job.id}",
                                             "X-Infernet-Job": job.id})
        await job.wait_output()
        if job.status == "failed" and not job.parts:
            raise ApiError(job.error_code or "internal_error", job.error_message)
        return _sse_response(_follow_live(job), job.view())

    @app.get("/api/v1/jobs/<job_id>")
    async def get_job(job_id: str) -> Response:
        token = await authenticate(state)
        return json_response(job_body(await _own_job(state, token.id, job_id)))

    @app.get("/api/v1/jobs/<job_id>/stream")
    async def stream_job(job_id: str) -> Response:
        token = await authenticate(state)
        view = await _own_job(state, token.id, job_id)
        live = state.jobs.get(job_id)
        if live is not None:
            return _sse_response(_follow_live(live), view)
        return _sse_response(_replay(view), view)

    @app.get("/api/v1/jobs")
    async def list_jobs() -> Response:
        token = await authenticate(state)
        limit, status, since = _list_args()
        records = await state.store.read(Store.list_jobs, token.id, limit=limit,
                                         status=status, since=since)
        views = []
        for rec in records:  # the store may lag a running job by a commit; memory does not
            live = state.jobs.get(rec.id)
            views.append(live.view() if live is not None else JobView.from_record(rec))
        return json_response({"object": "list", "jobs": [job_body(v) for v in views]})

    @app.get("/api/v1/models")
    async def job_api_models() -> Response:
        await authenticate(state)
        return json_response({"models": _models(state)})

    @app.get("/api/v1/nodes/<node_id>/status")
    async def node_status(node_id: str) -> Response:
        pubkey = normalize_node_id(node_id)
        if pubkey is None:
            raise ApiError("bad_request", "node id must be a node public key (hex or npub)")
        doc = await _node_status(state, pubkey)
        return json_response({**doc, **await registered_user(state, pubkey)})

    @app.get("/api/v1/cprs/<receipt_id>")
    async def get_receipt(receipt_id: str) -> Response:
        token = await authenticate(state)
        record = await state.store.read(Store.get_receipt, receipt_id)
        if record is not None:
            owner = await state.jobs.view(record.job_id)
            if owner is not None and owner[0] == token.id:
                return json_response(receipt_body(record, state.coordinator_pubkey))
        raise ApiError("not_found", f"no receipt {receipt_id!r} for this token")

    @app.get("/api/v1/bootstrap")
    async def bootstrap() -> Response:
        now = trio.current_time()
        peers = [{"node_id": e.pubkey, "peer_id": e.peer_id,
                  "addrs": list(e.announcement.caps.listen_addrs)}
                 for e in state.table.online(now) if e.announcement.caps.listen_addrs]
        return json_response({
            "coordinator": {"peer_id": state.peer_id, "pubkey": state.coordinator_pubkey,
                            "addrs": list(state.bootstrap_addrs())},
            "peers": peers})


async def _own_job(state: CoordinatorState, token_id: str, job_id: str) -> JobView:
    found = await state.jobs.view(job_id)
    if found is None or found[0] != token_id:
        raise ApiError("not_found", f"no job {job_id!r} for this token")
    return found[1]


def _list_args() -> tuple[int, str | None, float | None]:
    args = request.args
    try:
        limit = int(args.get("limit", DEFAULT_LIST))
    except ValueError:
        raise ApiError("bad_request", "`limit` must be an integer") from None
    if not 1 <= limit <= MAX_LIST:
        raise ApiError("bad_request", f"`limit` must be between 1 and {MAX_LIST}")
    status = args.get("status") or None
    if status == "all":
        status = None
    if status is not None and status not in _STATUSES:
        raise ApiError("bad_request", f"`status` must be one of {', '.join(sorted(_STATUSES))}")
    since_text = args.get("since")
    since: float | None = None
    if since_text:
        since = parse_iso_time(since_text)
        if since is None:
            raise ApiError("bad_request", "`since` must be an ISO 8601 time")
    return limit, status, since


def _sse_response(body: AsyncIterator[bytes], view: JobView) -> Response:
    headers = {**provenance_headers(view.id, view.node_pubkey, view.weights_hash,
                                    view.receipt_id), **_SSE_HEADERS}
    return Response(body, status=200, content_type="text/event-stream", headers=headers)


async def _follow_live(job: LiveJob) -> AsyncIterator[bytes]:
    async with aclosing(job.follow()) as batches:
        async for batch in batches:  # one write per batch of pieces that arrived together
            yield b"".join(sse_text(text) for text in batch)
    yield _ending(job.view())


async def _replay(view: JobView) -> AsyncIterator[bytes]:
    if view.text:
        yield sse_text(view.text)
    yield _ending(view)


def _ending(view: JobView) -> bytes:
    if view.status == "completed":
        return sse_end(view)
    return sse_error(view.error_code or "internal_error", view.error_message or "")


def _models(state: CoordinatorState) -> list[dict[str, Any]]:
    nodes: dict[str, list[str]] = {}
    for entry in state.table.online(trio.current_time()):
        for offer in entry.announcement.caps.models:
            nodes.setdefault(offer.name, []).append(entry.pubkey)
    out = []
    for name, pubkeys in sorted(nodes.items()):
        speeds = [s for p in pubkeys if (st := state.router.stats(p))
                  and (s := st.tokens_per_s.get(name))]
        out.append({"id": name, "nodes": len(pubkeys),
                    "avg_tokens_per_second": round(sum(speeds) / len(speeds), 1)
                    if speeds else None})
    return out


async def _node_status(state: CoordinatorState, pubkey: str) -> dict[str, Any]:
    entry = state.table.get(pubkey)
    if entry is not None:
        now = trio.current_time()
        caps = entry.announcement.caps
        return {"node_id": pubkey, "status": "online" if state.table.is_online(entry, now)
                else "offline",
                "last_seen": iso_time(time.time() - (now - entry.last_seen)),
                "models": [m.name for m in caps.models], "backend": caps.backend,
                "slots_total": caps.slots_total, "slots_free": state.router.free_slots(entry, now)}
    saved = await state.store.read(Store.get_peer, pubkey)
    return {"node_id": pubkey, "status": "offline",
            "last_seen": iso_time(saved.last_seen) if saved else None}
