"""OpenAI wire shapes: parsing chat requests and building responses, SSE chunks and errors.

Owns: the subset of OpenAI's Chat Completions API the coordinator speaks (honoured fields are
passed through to the node; the other parameters of OpenAI's reference are accepted and
ignored, and a top-level field OpenAI does not define is refused with 400 as OpenAI refuses
it; nested objects stay lenient because new SDKs add keys there), the
``{"error": {code, message, type}}`` body the SDKs turn into typed exceptions, and the
served-by provenance (an extra ``infernet`` object the SDKs ignore but keep).

Pure: no I/O, no clock (``created`` is an argument).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Annotated, Any, Literal, TypeVar

import msgspec

from infernet.protocol.errors import ErrorCode, info
from infernet.protocol.frames import JobRequest, Message
from infernet.protocol.keys import KeyFormatError, PublicKey, encode_npub

__all__ = [
    "MAX_TOKENS",
    "BadRequest",
    "ChatCompletionRequest",
    "ContentPart",
    "ResponseMeta",
    "Role",
    "completion_body",
    "decode_body",
    "error_body",
    "npub_of",
    "parse_chat_request",
    "provenance",
    "provenance_headers",
    "sse",
    "stream_chunk",
    "to_job_request",
    "usage_chunk",
]

_MAX_MESSAGES = 1024
MAX_TOKENS = 131_072  # far past any context window served today; larger is a client bug
_TokenCount = Annotated[int, msgspec.Meta(ge=1, le=MAX_TOKENS)]
Role = Literal["system", "developer", "user", "assistant", "tool", "function"]


class ContentPart(msgspec.Struct, kw_only=True):
    """One part of a multi-part message; only text parts carry meaning here."""

    type: str
    text: str = ""


class ChatMessageIn(msgspec.Struct, kw_only=True):
    """A message as clients send it."""

    role: Role
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


class ChatCompletionRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``POST /v1/chat/completions``: the honoured fields, then OpenAI's other parameters
    (accepted so SDK code runs unchanged, not acted on)."""

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
    n: Annotated[int, msgspec.Meta(ge=1, le=1)] | None = None
    audio: Any = None
    frequency_penalty: Any = None
    function_call: Any = None
    functions: Any = None
    logit_bias: Any = None
    logprobs: Any = None
    metadata: Any = None
    modalities: Any = None
    parallel_tool_calls: Any = None
    prediction: Any = None
    presence_penalty: Any = None
    prompt_cache_key: Any = None
    reasoning_effort: Any = None
    response_format: Any = None
    safety_identifier: Any = None
    service_tier: Any = None
    store: Any = None
    tool_choice: Any = None
    tools: Any = None
    top_logprobs: Any = None
    user: Any = None
    verbosity: Any = None
    web_search_options: Any = None


T = TypeVar("T")


class BadRequest(ValueError):
    """Raised when a request body cannot be parsed; the message is safe to show."""


def parse_chat_request(body: bytes) -> ChatCompletionRequest:
    """Decode and validate a chat completion request body.

    Raises:
        BadRequest: malformed JSON, a missing or mistyped field, or an out-of-range value.
    """
    return decode_body(body, ChatCompletionRequest)


def decode_body(body: bytes, kind: type[T], error: type[ValueError] = BadRequest) -> T:
    """Decode a JSON request body (with model and messages) as ``kind``.

    Raises:
        ValueError: ``error``, with a message safe to show: an empty body, malformed JSON or
            UTF-8, nesting too deep, a missing or mistyped field, an out-of-range value.
    """
    if not body.strip():
        raise error("request body is empty; send a JSON object with model and messages")
    try:
        return msgspec.json.decode(body, type=kind)
    except msgspec.ValidationError as exc:
        raise error(f"invalid request: {exc}") from None
    except msgspec.DecodeError as exc:
        raise error(f"malformed JSON: {exc}") from None
    except UnicodeError:
        raise error("request body is not valid UTF-8") from None
    except RecursionError:
        raise error("request body nests too deeply") from None


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
    weights_hash: str | None = None
    receipt_id: str | None = None
    node_npub: str | None = None  # derived from node_pubkey once (bech32 is slow)

    def __post_init__(self) -> None:
        if self.node_npub is None and self.node_pubkey:
            object.__setattr__(self, "node_npub", npub_of(self.node_pubkey))

    def head(self, obj: str) -> dict[str, Any]:
        return {"id": f"chatcmpl-{self.job_id}", "object": obj, "created": self.created,
                "model": self.model}

    def provenance(self) -> dict[str, Any]:
        return {"job_id": self.job_id, "node_pubkey": self.node_pubkey or None,
                "node_npub": self.node_npub, "weights_hash": self.weights_hash,
                "receipt_id": self.receipt_id}

    def headers(self) -> dict[str, str]:
        """The provenance as response headers (``X-Infernet-*``)."""
        return provenance_headers(self.job_id, self.node_pubkey, self.weights_hash,
                                  self.receipt_id)


# Every answer names its node in bech32, which costs ~50 µs in pure Python, and a mesh has
# few nodes: memoised (a pure function, so the cache changes no answer), bounded.
@lru_cache(maxsize=4096)
def npub_of(pubkey_hex: str) -> str | None:
    """The ``npub1...`` form of a node key, or None if it is not a key."""
    try:
        return encode_npub(PublicKey.from_hex(pubkey_hex))
    except KeyFormatError:
        return None


def provenance(job_id: str, node_pubkey: str | None, weights_hash: str | None,
               receipt_id: str | None) -> dict[str, Any]:
    """Served-by provenance: the node that ran the job (hex and npub), its weights, its
    receipt. Unknown parts are null (a job still pending has no node yet)."""
    return {"job_id": job_id, "node_pubkey": node_pubkey,
            "node_npub": npub_of(node_pubkey) if node_pubkey else None,
            "weights_hash": weights_hash, "receipt_id": receipt_id}


def provenance_headers(job_id: str, node_pubkey: str | None, weights_hash: str | None,
                       receipt_id: str | None) -> dict[str, str]:
    """``X-Infernet-Job``/``-Node``/``-Weights``/``-Receipt`` (the known ones)."""
    out = {"X-Infernet-Job": job_id}
    for name, value in (("Node", node_pubkey), ("Weights", weights_hash),
                        ("Receipt", receipt_id)):
        if value:
            out[f"X-Infernet-{name}"] = value
    return out


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
