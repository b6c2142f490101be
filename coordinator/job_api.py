"""Wire shapes of the job API (``/api/v1``): parsing submissions and building bodies and events.

Owns: the ``POST /api/v1/jobs`` request (unknown fields are refused: this API is ours, and a
misspelt field silently ignored would be a bug report later), the job, list, model, node and
bootstrap bodies, the flat error body ``{"error": code, "error_message": ...}`` of this API,
and its SSE events (``data: {"text": ...}``, ``data: {"error": code, "message": ...}``,
``data: [DONE]``). Spec: ``specs/http-api.md`` §"Job API".

Pure: no I/O, no clock (times are arguments).
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Final, Literal

import msgspec

from coordinator.jobs import JobView
from coordinator.openai_api import ContentPart, Role, decode_body, provenance
from infernet.protocol.errors import ErrorCode, info
from infernet.protocol.frames import JobRequest, Message
from infernet.protocol.keys import KeyFormatError, PublicKey, decode_npub

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "MAX_TOKENS",
    "BadJobRequest",
    "JobCreate",
    "error_body",
    "iso_time",
    "job_body",
    "normalize_node_id",
    "parse_iso_time",
    "parse_job_create",
    "sse_end",
    "sse_error",
    "sse_text",
    "to_job_request",
]

DEFAULT_MAX_TOKENS: Final = 512
MAX_TOKENS: Final = 131_072
_MAX_MESSAGES: Final = 1024
_MAX_STOP: Final = 16

_Tokens = Annotated[int, msgspec.Meta(ge=1, le=MAX_TOKENS)]


class JobMessage(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """One chat message of a job submission."""

    role: Role
    content: str | list[ContentPart]
    name: Annotated[str, msgspec.Meta(max_length=256)] | None = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content if p.type == "text")


class JobCreate(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The body of ``POST /api/v1/jobs``."""

    model: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    messages: Annotated[list[JobMessage], msgspec.Meta(min_length=1, max_length=_MAX_MESSAGES)]
    max_tokens: _Tokens = DEFAULT_MAX_TOKENS
    temperature: Annotated[float, msgspec.Meta(ge=0, le=2)] | None = None
    top_p: Annotated[float, msgspec.Meta(ge=0, le=1)] | None = None
    stop: (Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
           | Annotated[list[Annotated[str, msgspec.Meta(min_length=1, max_length=256)]],
                       msgspec.Meta(max_length=_MAX_STOP)]
           | None) = None
    seed: Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)] | None = None
    stream: bool = False
    node_id: Annotated[str, msgspec.Meta(min_length=1, max_length=128)] | None = None
    weights_hash: Annotated[str, msgspec.Meta(min_length=1, max_length=128)] | None = None


class BadJobRequest(ValueError):
    """Raised when a job submission cannot be accepted; the message is safe to show."""


def parse_job_create(body: bytes) -> JobCreate:
    """Decode and validate a job submission.

    Raises:
        BadJobRequest: malformed JSON or UTF-8, an unknown, missing or mistyped field, an
            out-of-range value, or a ``node_id`` that is no node key.
    """
    req = decode_body(body, JobCreate, BadJobRequest)
    if req.node_id is not None and normalize_node_id(req.node_id) is None:
        raise BadJobRequest("invalid request: `node_id` is not a node public key (hex or npub)")
    return req


def normalize_node_id(text: str) -> str | None:
    """A node id (64 hex chars or ``npub1...``) as lowercase hex, or None if it is neither."""
    try:
        if text.startswith("npub1"):
            return decode_npub(text).hex()
        return PublicKey.from_hex(text).hex()
    except (KeyFormatError, ValueError):
        return None


def to_job_request(req: JobCreate, job_id: str) -> JobRequest:
    """The job frame that carries ``req`` to a node."""
    stop = () if req.stop is None else (req.stop,) if isinstance(req.stop, str) else tuple(req.stop)
    return JobRequest(
        job_id=job_id, model=req.model,
        messages=tuple(Message(role=m.role, content=m.text()) for m in req.messages),
        max_tokens=req.max_tokens, temperature=req.temperature, top_p=req.top_p, stop=stop,
        seed=req.seed)


def iso_time(unix: float) -> str:
    """``2026-04-30T14:23:41Z`` (UTC, whole seconds)."""
    return dt.datetime.fromtimestamp(int(unix), dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_iso_time(text: str) -> float | None:
    """Unix seconds of an ISO 8601 time (``Z`` or an offset; naive means UTC), else None."""
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00").replace(" ", "+"))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()


def job_body(view: JobView) -> dict[str, Any]:
    """``GET /api/v1/jobs/:id``: the job in its current state."""
    body: dict[str, Any] = {"id": view.id, "object": "job", "status": view.status,
                            "model": view.model, "created_at": iso_time(view.created_at),
                            "node_id": view.node_pubkey}
    if view.status == "completed":
        prompt, completion = view.prompt_tokens or 0, view.completion_tokens or 0
        body["result"] = {
            "content": view.text or "", "finish_reason": view.finish_reason,
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                      "total_tokens": prompt + completion}}
    if view.status == "failed":
        body["error"] = view.error_code
        body["error_message"] = view.error_message
    if view.completed_at is not None:
        body["completed_at"] = iso_time(view.completed_at)
    if view.latency_ms is not None:
        body["latency_ms"] = round(view.latency_ms)
    if view.ttft_ms is not None:
        body["ttft_ms"] = round(view.ttft_ms, 1)
    body["infernet"] = provenance(view.id, view.node_pubkey, view.weights_hash,
                                  view.receipt_id)
    return body


def error_body(code: ErrorCode, message: str | None = None) -> dict[str, Any]:
    """The job API's error body: ``{"error": code, "error_message": ...}``."""
    return {"error": code, "error_message": message or info(code).message}


def sse_text(text: str) -> bytes:
    """One ``data: {"text": ...}`` event."""
    return b"data: " + msgspec.json.encode({"text": text}) + b"\n\n"


def sse_error(code: ErrorCode | str, message: str) -> bytes:
    """The error event that ends a stream."""
    return b"data: " + msgspec.json.encode({"error": code, "message": message}) + b"\n\n"


def sse_end(view: JobView) -> bytes:
    """The closing events of a completed stream: a summary (no ``text``), then ``[DONE]``."""
    prompt, completion = view.prompt_tokens or 0, view.completion_tokens or 0
    summary = {"done": True, "id": view.id, "finish_reason": view.finish_reason,
               "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                         "total_tokens": prompt + completion},
               "infernet": provenance(view.id, view.node_pubkey, view.weights_hash,
                                      view.receipt_id)}
    return b"data: " + msgspec.json.encode(summary) + b"\n\ndata: [DONE]\n\n"


StatusFilter = Literal["pending", "processing", "completed", "failed"]
