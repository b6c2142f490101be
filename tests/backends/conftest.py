"""Shared fixtures for the backend tests: the model cache and a stream-contract checker."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from infernet.backends.base import StreamItem, TextDelta, Usage

Drain = Callable[[AsyncIterator[StreamItem]], Awaitable[tuple[list[str], Usage]]]


@pytest.fixture(scope="session")
def model_cache() -> Path:
    """Where the embedded GGUF is assembled: shared across tests and runs (~240 MB)."""
    configured = os.environ.get("INFERNET_MODEL_CACHE")
    return Path(configured) if configured else Path.home() / ".cache" / "infernet" / "models"


async def _drain(stream: AsyncIterator[StreamItem]) -> tuple[list[str], Usage]:
    """Consume a `Backend.stream_chat` stream, checking the contract every adapter keeps:
    non-empty `TextDelta`s, then exactly one `Usage`, last."""
    texts: list[str] = []
    usage: Usage | None = None
    async for item in stream:
        assert usage is None, f"item after the final Usage: {item!r}"
        if isinstance(item, TextDelta):
            assert item.text, "empty TextDelta"
            texts.append(item.text)
        else:
            assert isinstance(item, Usage)
            usage = item
    assert usage is not None, "stream ended without a Usage"
    return texts, usage


@pytest.fixture
def drain() -> Drain:
    """The stream-contract checker (see `_drain`)."""
    return _drain
