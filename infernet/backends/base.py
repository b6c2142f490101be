"""The one interface every inference engine adapter implements.

Owns: the records exchanged between the node and an engine adapter (`ChatRequest`,
`TextDelta`, `Usage`, `ModelInfo`, `PullProgress`, `BackendCapabilities`) and the `Backend`
protocol (DESIGN.md "Backends").

Invariants: adapters never estimate usage when the engine reports it; every network call an
adapter makes has a timeout; engine failures surface as `BackendError`, never as a foreign
exception. The codes are: ``backend_unavailable`` (engine not running or refusing),
``node_disconnected`` (engine died mid-stream), ``timeout`` (engine silent past the read
timeout), ``internal_error`` (malformed answer, engine 5xx, disk full during a pull),
``model_not_found`` (unknown model, also for a pull), ``bad_request`` (the engine refused the
request, or the adapter cannot do the operation at all, see `unsupported`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Literal, NoReturn, Protocol

import msgspec

from infernet.protocol.errors import BackendError

__all__ = [
    "Backend",
    "BackendCapabilities",
    "ChatMessage",
    "ChatRequest",
    "ModelInfo",
    "ModelNaming",
    "PullProgress",
    "StreamItem",
    "TextDelta",
    "Usage",
    "unsupported",
]

# How an engine names its models: Ollama tags (``qwen2.5:7b``), HuggingFace repo ids
# (``Qwen/Qwen2.5-7B-Instruct``: vLLM, SGLang, MAX), or whatever alias / GGUF file name the
# operator configured (llama.cpp, llama-swap, the embedded engine).
ModelNaming = Literal["ollama", "huggingface", "alias"]


class ChatMessage(msgspec.Struct, frozen=True, kw_only=True):
    """One OpenAI-style chat message."""

    role: str
    content: str


class ChatRequest(msgspec.Struct, frozen=True, kw_only=True):
    """A chat generation request in OpenAI terms; ``None`` means the engine's default."""

    model: str
    messages: tuple[ChatMessage, ...]
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None


class TextDelta(msgspec.Struct, frozen=True, kw_only=True):
    """A piece of generated text (one or more tokens)."""

    text: str


class Usage(msgspec.Struct, frozen=True, kw_only=True):
    """Token counts as the engine reported them, and why generation stopped."""

    prompt_tokens: int
    completion_tokens: int
    finish_reason: str = "stop"


StreamItem = TextDelta | Usage


class ModelInfo(msgspec.Struct, frozen=True, kw_only=True):
    """A model the engine can serve; ``None`` means the engine does not tell.

    ``size_bytes`` is the weights' size on disk; ``digest`` the engine's content hash
    (``sha256:<hex>``); ``path`` a local weights file or directory the engine reported;
    ``loaded`` whether it is resident in (V)RAM right now.
    """

    name: str
    size_bytes: int | None = None
    digest: str | None = None
    parameter_count: int | None = None
    quantization: str | None = None
    path: str | None = None
    loaded: bool | None = None


class PullProgress(msgspec.Struct, frozen=True, kw_only=True):
    """One progress record of a model pull, as the engine reported it.

    ``completed``/``total`` are bytes of the part named by ``digest`` (one weights layer),
    or None while the engine is doing something without a size (resolving, verifying).
    The last record of a successful pull has ``status == "success"``.
    """

    status: str
    completed: int | None = None
    total: int | None = None
    digest: str | None = None


class BackendCapabilities(msgspec.Struct, frozen=True, kw_only=True):
    """What an adapter can do beyond chat: the CLI and the daemon ask before they try."""

    pull: bool = False
    remove: bool = False
    loaded_models: bool = False  # list_models() fills ModelInfo.loaded
    multi_model: bool = True  # can serve more than one model at a time
    supervised: bool = False  # the node restarts the engine when it dies
    model_naming: ModelNaming = "alias"


class Backend(Protocol):
    """An inference engine adapter."""

    @property
    def name(self) -> str:
        """Short engine name used in announcements and logs (``embedded``, ``ollama``...)."""
        ...

    @property
    def capabilities(self) -> BackendCapabilities:
        """What this adapter supports besides chat."""
        ...

    async def health(self) -> bool:
        """Return True when the engine answers its health probe. Never raises."""
        ...

    async def list_models(self) -> list[ModelInfo]:
        """Return the models the engine serves.

        Raises:
            BackendError: the engine is unreachable or answered garbage.
        """
        ...

    def stream_chat(self, request: ChatRequest) -> AsyncIterator[StreamItem]:
        """Yield `TextDelta` items as the engine generates, then exactly one final `Usage`.

        Cancel-safe: cancelling the iteration aborts the engine request.

        Raises:
            BackendError: engine unreachable (``backend_unavailable``), dead mid-stream
                (``node_disconnected``) or answered malformed data (``internal_error``).
        """
        ...

    def pull(self, model: str) -> AsyncIterator[PullProgress]:
        """Download ``model`` into the engine, yielding its progress records.

        Cancel-safe: cancelling the iteration abandons the download (the engine may keep
        the parts it already has).

        Raises:
            BackendError: ``model_not_found`` (no such model in the engine's registry),
                ``internal_error`` (disk full, corrupt download), ``bad_request`` (this
                engine cannot pull), or the transport codes of `stream_chat`.
        """
        ...

    async def remove(self, model: str) -> None:
        """Delete ``model``'s weights from the engine.

        Raises:
            BackendError: ``model_not_found`` (not installed), ``bad_request`` (this engine
                cannot remove models), or a transport code.
        """
        ...


def unsupported(engine: str, operation: str, hint: str) -> NoReturn:
    """Raise the error for an operation an engine does not offer.

    Raises:
        BackendError: always, with code ``bad_request`` (retrying cannot help) and ``hint``
            telling the operator what to do instead.
    """
    raise BackendError(f"the {engine} backend cannot {operation}: {hint}", code="bad_request")
