"""The one interface every inference engine adapter implements.

Owns: the request/response records exchanged between the node and an engine adapter
(`ChatRequest`, `TextDelta`, `Usage`, `ModelInfo`) and the `Backend` protocol.

Invariants: adapters never estimate usage when the engine reports it; every network call an
adapter makes has a timeout; engine failures surface as `BackendError` (code
``backend_unavailable`` or ``node_disconnected`` when the engine dies mid-stream), never as a
foreign exception.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

import msgspec

__all__ = ["Backend", "ChatMessage", "ChatRequest", "ModelInfo", "StreamItem", "TextDelta", "Usage"]


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
    """A model the engine can serve."""

    name: str
    size_bytes: int | None = None
    digest: str | None = None


class Backend(Protocol):
    """An inference engine adapter."""

    @property
    def name(self) -> str:
        """Short engine name used in announcements and logs (``embedded``, ``ollama``...)."""
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
