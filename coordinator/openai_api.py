"""OpenAI wire shapes: parsing chat requests and building responses, SSE chunks and errors.

Owns: the subset of OpenAI's Chat Completions API the coordinator speaks (request fields are
passed through to the node; unknown fields are ignored as OpenAI's own SDKs add new ones), the
``{"error": {code, message, type}}`` body the SDKs turn into typed exceptions, and the
served-by provenance (an extra ``infernet`` object the SDKs ignore but keep).

Pure: no I/O, no clock (``created`` is an argument).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

import msgspec

from infernet.protocol.errors import ErrorCode, info
from infernet.protocol.frames import JobRequest, Message

__all__ = [
    "BadRequest",
    "ChatCompletionRequest",
    "ResponseMeta",
    "completion_body",
    "error_body",
    "parse_chat_request",
    "sse",
    "stream_chunk",
    "to_job_request",
    "usage_chunk",
]

_MAX_MESSAGES = 1024
_TokenCount = Annotated[int, msgspec.Meta(ge=1, le=1_000_000)]


class ContentPart(msgspec.Struct, kw_only=True):
    """One part of a multi-part message; only text parts carry meaning here."""

    type: str
    text: str = ""


class ChatMessageIn(msgspec.Struct, kw_only=True):
    """A message as clients send it."""

    role: str
    content: str | list[ContentPart] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content if p.type == "text")


class StreamOptions(msgspec.Struct, kw_only=True):
    """``stream_options``: only ``include_usage`` matters."""

    include_usage: bool = False


class ChatCompletionRequest(msgspec.Struct, kw_only=True):
    """The fields of ``POST /v1/chat/completions`` the network honours."""

    model: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    messages: Annotated[list[ChatMessageIn], msgspec.Meta(min_length=1, max_length=_MAX_MESSAGES)]
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: _TokenCount | None = None
    max_completion_tokens: _TokenCount | None = None
    temperature: Annotated[float, msgspec.Meta(ge=0, le=2)] | None = None
    top_p: Annotated[float, msgspec.Meta(ge=0, le=1)] | None = None
    stop: str | list[str] | None = None
    seed: Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)] | None = None


class BadRequest(ValueError):
    """Raised when a request body cannot be parsed; the message is safe to show."""


def parse_chat_request(body: bytes) -> ChatCompletionRequest:
    """Decode and validate a chat completion request body.

    Raises:
        BadRequest: malformed JSON, a missing or mistyped field, or an out-of-range value.
    """
    if not body.strip():
        raise BadRequest("request body is empty; send a JSON object with model and messages")
    try:
        return msgspec.json.decode(body, type=ChatCompletionRequest)
    except msgspec.ValidationError as exc:
        raise BadRequest(f"invalid request: {exc}") from None
    except msgspec.DecodeError as exc:
        raise BadRequest(f"malformed JSON: {exc}") from None
    except UnicodeError:
        raise BadRequest("request body is not valid UTF-8") from None
    except RecursionError:
        raise BadRequest("request body nests too deeply") from None


def to_job_request(req: ChatCompletionRequest, job_id: str) -> JobRequest:
    """The job frame that carries ``req`` to a node."""
    stop: tuple[str, ...]
    if req.stop is None:
        stop = ()
    elif isinstance(req.stop, str):
        stop = (req.stop,)
    else:
        stop = tuple(req.stop)
    return JobRequest(
        job_id=job_id,
        model=req.model,
        messages=tuple(Message(role=m.role, content=m.text()) for m in req.messages),
        max_tokens=req.max_completion_tokens or req.max_tokens,
        temperature=req.temperature,
        top_p=req.top_p,
        stop=stop,
        seed=req.seed,
    )


def error_body(code: ErrorCode, message: str | None = None) -> dict[str, Any]:
    """The OpenAI-shaped error object for ``code``."""
    entry = info(code)
    return {"error": {"code": code, "message": message or entry.message,
                      "type": entry.type, "param": None}}


@dataclass(frozen=True, slots=True)
class ResponseMeta:
    """What every response and chunk of one job repeats: ids, model, time, provenance."""

    job_id: str
    model: str
    created: int
    node_pubkey: str

    def head(self, obj: str) -> dict[str, Any]:
        return {"id": f"chatcmpl-{self.job_id}", "object": obj, "created": self.created,
                "model": self.model}

    def provenance(self) -> dict[str, str]:
        return {"job_id": self.job_id, "node_pubkey": self.node_pubkey}


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}


def completion_body(
    meta: ResponseMeta, text: str, finish_reason: str, prompt_tokens: int, completion_tokens: int
) -> dict[str, Any]:
    """A non-streaming ``chat.completion`` response."""
    return {
        **meta.head("chat.completion"),
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                     "finish_reason": finish_reason, "logprobs": None}],
        "usage": _usage(prompt_tokens, completion_tokens),
        "infernet": meta.provenance(),
    }


def stream_chunk(
    meta: ResponseMeta, delta: dict[str, str], finish_reason: str | None = None
) -> dict[str, Any]:
    """One ``chat.completion.chunk``."""
    return {
        **meta.head("chat.completion.chunk"),
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason,
                     "logprobs": None}],
        "infernet": meta.provenance(),
    }


def usage_chunk(meta: ResponseMeta, prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    """The trailing chunk of ``stream_options.include_usage``: no choices, only usage."""
    return {
        **meta.head("chat.completion.chunk"),
        "choices": [],
        "usage": _usage(prompt_tokens, completion_tokens),
        "infernet": meta.provenance(),
    }


def sse(data: dict[str, Any] | str) -> bytes:
    """One server-sent event carrying ``data`` (JSON-encoded unless already a string)."""
    payload = data if isinstance(data, str) else msgspec.json.encode(data).decode()
    return f"data: {payload}\n\n".encode()
