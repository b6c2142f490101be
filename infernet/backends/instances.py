"""Several engine instances behind one `Backend`, each serving its own model (vLLM).

Owns: `InstanceRouter`, which lists every instance's models, routes each chat request to the
instance that serves its model, and `parse_instances`, which reads the ``vllm_instances``
config entries (``URL`` or ``MODEL=URL``). DESIGN.md "Backends": a vLLM server serves one
model, so a node with several models runs several instances.

Invariants:
- A model is routed to the instance named for it in config (``MODEL=URL``) if any, else to
  the first instance (in config order) whose ``/v1/models`` lists it.
- An unknown model triggers one fresh listing of every instance before ``model_not_found``,
  so an instance that came up after the node started is found without a restart.
- One instance down does not hide the others: `list_models` skips it with a warning and
  raises only when no instance answers.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from contextlib import aclosing
from typing import TypeVar

import trio

from infernet.backends.base import (
    BackendCapabilities,
    ChatRequest,
    ModelInfo,
    PullProgress,
    StreamItem,
    unsupported,
)
from infernet.backends.openai_compat import OpenAICompatBackend
from infernet.protocol.errors import BackendError

__all__ = ["InstanceRouter", "parse_instances"]

log = logging.getLogger(__name__)
_T = TypeVar("_T")


def parse_instances(entries: Sequence[str]) -> list[tuple[str | None, str]]:
    """Split ``vllm_instances`` entries into (pinned model or None, URL) pairs.

    Raises:
        BackendError: an entry is empty (``bad_request``).
    """
    parsed: list[tuple[str | None, str]] = []
    for entry in entries:
        text = entry.strip()
        model, sep, url = text.partition("=")
        if sep and "://" not in model and model and url:
            parsed.append((model.strip(), url.strip()))
        elif text:
            parsed.append((None, text))
        else:
            raise BackendError("empty entry in vllm_instances", code="bad_request")
    return parsed


class InstanceRouter:
    """A `Backend` over several OpenAI-compatible instances of one engine kind."""

    def __init__(
        self,
        name: str,
        instances: Sequence[OpenAICompatBackend],
        pinned: dict[str, OpenAICompatBackend] | None = None,
        *,
        install_hint: str = "",
    ) -> None:
        if not instances:
            raise BackendError("an instance router needs at least one instance")
        self._name = name
        self._instances = tuple(instances)
        self._pinned = dict(pinned or {})
        self._routes: dict[str, OpenAICompatBackend] = dict(self._pinned)
        self._install_hint = install_hint or "start another instance serving it"
        naming = self._instances[0].capabilities.model_naming
        self._capabilities = BackendCapabilities(model_naming=naming)

    @property
    def name(self) -> str:
        """The engine kind (``vllm``)."""
        return self._name

    @property
    def capabilities(self) -> BackendCapabilities:
        """Chat only, like each instance."""
        return self._capabilities

    @property
    def instances(self) -> tuple[OpenAICompatBackend, ...]:
        """The instances, in config order."""
        return self._instances

    def route(self, model: str) -> OpenAICompatBackend | None:
        """The instance that serves ``model`` as of the last listing, or None."""
        return self._routes.get(model)

    async def aclose(self) -> None:
        """Close every instance's own HTTP client."""
        for instance in self._instances:
            await instance.aclose()

    async def health(self) -> bool:
        """True when at least one instance answers its health probe. Never raises."""
        results = await _gather([instance.health for instance in self._instances])
        return any(r is True for r in results)

    async def list_models(self) -> list[ModelInfo]:
        """Return every instance's models (each once) and refresh the routing table.

        Raises:
            BackendError: no instance answered (the first instance's error).
        """
        results = await _gather([instance.list_models for instance in self._instances])
        routes = dict(self._pinned)
        models: dict[str, ModelInfo] = {}
        for instance, result in zip(self._instances, results, strict=True):
            if isinstance(result, BackendError):
                log.warning("%s instance %s: %s", self._name, instance.base_url, result)
                continue
            for model in result:
                routes.setdefault(model.name, instance)
                models.setdefault(model.name, model)
        if not models and all(isinstance(r, BackendError) for r in results):
            first = results[0]
            raise first if isinstance(first, BackendError) else BackendError()
        self._routes = routes
        return list(models.values())

    async def stream_chat(self, request: ChatRequest) -> AsyncGenerator[StreamItem, None]:
        """Stream from the instance serving ``request.model``.

        Cancel-safe: cancelling aborts the instance's request.

        Raises:
            BackendError: ``model_not_found`` when no instance serves the model, else the
                instance's errors (see `OpenAICompatBackend.stream_chat`).
        """
        instance = self._routes.get(request.model)
        if instance is None:
            await self.list_models()
            instance = self._routes.get(request.model)
        if instance is None:
            raise BackendError(
                f"no {self._name} instance serves {request.model!r}; {self._install_hint}",
                code="model_not_found",
            )
        async with aclosing(instance.stream_chat(request)) as items:
            async for item in items:
                yield item

    async def pull(self, model: str) -> AsyncGenerator[PullProgress, None]:
        """Not offered by the OpenAI API.

        Raises:
            BackendError: always ``bad_request``.
        """
        unsupported(self._name, f"pull {model!r}", self._install_hint)
        yield PullProgress(status="unsupported")  # pragma: no cover - makes a generator

    async def remove(self, model: str) -> None:
        """Not offered by the OpenAI API.

        Raises:
            BackendError: always ``bad_request``.
        """
        unsupported(self._name, f"remove {model!r}", "stop the instance that serves it")


async def _gather(calls: Sequence[Callable[[], Awaitable[_T]]]) -> list[_T | BackendError]:
    """Run ``calls`` concurrently; return each result or the `BackendError` it raised."""
    results: list[_T | BackendError] = [BackendError("not run")] * len(calls)

    async def one(index: int, call: Callable[[], Awaitable[_T]]) -> None:
        try:
            results[index] = await call()
        except BackendError as exc:
            results[index] = exc

    async with trio.open_nursery() as nursery:
        for index, call in enumerate(calls):
            nursery.start_soon(one, index, call)
    return results
