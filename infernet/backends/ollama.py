"""Adapter for Ollama's native HTTP API.

Owns: ``GET /api/tags`` (health probe and model list, with sizes, digests, parameter sizes
and quantization), ``GET /api/ps`` (which models are loaded), ``POST /api/chat`` (NDJSON
streaming), ``POST /api/pull`` (NDJSON progress) and ``DELETE /api/delete``, and the
translation of every Ollama or transport failure into `BackendError` (DESIGN.md "Backends";
the contract is `infernet.backends.base.Backend`; the wire format is Ollama's docs/api.md).

Invariants:
- Every request has an httpx timeout; the read timeout applies between two NDJSON lines, so
  a long pull that keeps reporting progress never times out.
- `stream_chat` yields each non-empty ``message.content`` as Ollama sent it, then exactly one
  `Usage` from the final ``done`` line's ``prompt_eval_count`` / ``eval_count`` (Ollama
  omits ``prompt_eval_count`` when the whole prompt came from its cache: that is 0 tokens
  evaluated, not an estimate). A stream that ends without a ``done`` line is
  ``node_disconnected``; an ``error`` line or an undecodable line is ``internal_error``.
- `pull` yields one `PullProgress` per progress line and returns after ``success``; an
  unknown model is ``model_not_found``; a full disk is ``internal_error`` saying so.
- Model digests are reported as ``sha256:<hex>`` (Ollama's manifest digest).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from contextlib import AsyncExitStack, aclosing
from typing import Any, Final, TypeVar, cast

import httpx
import msgspec

from infernet.backends.base import (
    BackendCapabilities,
    ChatRequest,
    ModelInfo,
    PullProgress,
    StreamItem,
    TextDelta,
    Usage,
)
from infernet.backends.fit import parse_parameter_count
from infernet.backends.transport import (
    disk_full_error,
    is_disk_full,
    map_transport_errors,
    read_error_body,
    status_error,
)
from infernet.protocol.errors import BackendError

__all__ = ["OLLAMA_BACKEND", "OllamaBackend"]

OLLAMA_BACKEND: Final = "ollama"
DEFAULT_CONNECT_TIMEOUT: Final = 5.0
DEFAULT_READ_TIMEOUT: Final = 300.0  # the first line waits for Ollama to load the model
DEFAULT_HEALTH_TIMEOUT: Final = 2.0
_CAPABILITIES: Final = BackendCapabilities(
    pull=True, remove=True, loaded_models=True, model_naming="ollama"
)
# What Ollama says when a registry has no such model (messages vary between versions).
_UNKNOWN_MODEL_MARKERS: Final = ("file does not exist", "not found", "manifest unknown")


# Wire shapes (docs/api.md). msgspec ignores unknown fields.
class _Details(msgspec.Struct):
    parameter_size: str | None = None
    quantization_level: str | None = None


class _Model(msgspec.Struct):
    name: str
    size: int | None = None
    digest: str | None = None
    details: _Details | None = None


class _ModelList(msgspec.Struct):
    models: list[_Model] = msgspec.field(default_factory=list)


class _Message(msgspec.Struct):
    content: str = ""


class _ChatLine(msgspec.Struct):
    message: _Message | None = None
    done: bool = False
    done_reason: str | None = None
    prompt_eval_count: int | None = None
    eval_count: int | None = None
    error: str | None = None


class _PullLine(msgspec.Struct):
    status: str = ""
    digest: str | None = None
    total: int | None = None
    completed: int | None = None
    error: str | None = None


class _ErrorBody(msgspec.Struct):
    error: str = ""


_T = TypeVar("_T")
_LIST_DECODER: Final = msgspec.json.Decoder(_ModelList)
_CHAT_DECODER: Final = msgspec.json.Decoder(_ChatLine)
_PULL_DECODER: Final = msgspec.json.Decoder(_PullLine)
_ERROR_DECODER: Final = msgspec.json.Decoder(_ErrorBody)


class OllamaBackend:
    """A `Backend` for an Ollama server at ``base_url`` (``http://127.0.0.1:11434``).

    Pass ``client`` to share a connection pool; the adapter then never closes it.
    """

    def __init__(
        self,
        base_url: str,
        *,
        client: httpx.AsyncClient | None = None,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        read_timeout: float = DEFAULT_READ_TIMEOUT,
        health_timeout: float = DEFAULT_HEALTH_TIMEOUT,
    ) -> None:
        self._base_url = base_url.rstrip("/")
        self._owns_client = client is None
        self._client = client if client is not None else httpx.AsyncClient(trust_env=False)
        self._timeout = httpx.Timeout(read_timeout, connect=connect_timeout)
        self._health_timeout = httpx.Timeout(health_timeout)

    @property
    def name(self) -> str:
        """Always ``ollama``."""
        return OLLAMA_BACKEND

    @property
    def capabilities(self) -> BackendCapabilities:
        """Ollama pulls, removes and reports loaded models."""
        return _CAPABILITIES

    @property
    def base_url(self) -> str:
        """Ollama's root URL, without a trailing slash."""
        return self._base_url

    async def aclose(self) -> None:
        """Close the HTTP client if this adapter created it. Idempotent."""
        if self._owns_client:
            await self._client.aclose()

    async def health(self) -> bool:
        """Return True when ``GET /api/tags`` answers 200 in time. Never raises."""
        try:
            response = await self._client.get(
                self._base_url + "/api/tags", timeout=self._health_timeout
            )
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    async def list_models(self) -> list[ModelInfo]:
        """Return the pulled models (``/api/tags``), marking those loaded (``/api/ps``).

        Raises:
            BackendError: Ollama is unreachable (``backend_unavailable``), answered an error
                status, or answered something that is not a model list (``internal_error``).
        """
        pulled = await self._get_models("/api/tags")
        try:
            loaded: set[str] | None = {m.name for m in await self._get_models("/api/ps")}
        except BackendError:
            loaded = None  # an older Ollama without /api/ps: loaded state unknown
        return [_model_info(m, loaded) for m in pulled]

    async def stream_chat(self, request: ChatRequest) -> AsyncGenerator[StreamItem, None]:
        """Yield `TextDelta` items as Ollama generates, then exactly one final `Usage`.

        Cancel-safe: cancelling (or closing) the iteration closes the HTTP response, which
        makes Ollama abort the generation.

        Raises:
            BackendError: Ollama unreachable (``backend_unavailable``), dead mid-stream
                (``node_disconnected``), silent past the read timeout (``timeout``), unknown
                model (``model_not_found``), or an error line or malformed line
                (``internal_error``).
        """
        final: _ChatLine | None = None
        failure: BackendError | None = None
        async with self._open_stream("POST", "/api/chat", _chat_body(request)) as lines:
            with map_transport_errors(streaming=True):
                async for line in lines:
                    # After the done line or a failure, read on to EOF instead of leaving:
                    # trio flags httpx's nested response generators when they are
                    # abandoned half-way (encode/httpx#3686); Ollama ends the stream there.
                    if final is not None or failure is not None or not line.strip():
                        continue
                    try:
                        item = _decode(_CHAT_DECODER, line, "chat")
                    except BackendError as exc:
                        failure = exc
                        continue
                    if item.error is not None:
                        failure = BackendError(
                            f"ollama error mid-stream: {item.error}", code="internal_error"
                        )
                        continue
                    if item.message is not None and item.message.content:
                        yield TextDelta(text=item.message.content)
                    if item.done:
                        final = item
        if failure is not None:
            raise failure
        if final is None:
            raise BackendError(
                "ollama died mid-stream: the stream ended before its done line",
                code="node_disconnected",
            )
        yield Usage(
            prompt_tokens=final.prompt_eval_count or 0,
            completion_tokens=final.eval_count or 0,
            finish_reason="length" if final.done_reason == "length" else "stop",
        )

    async def pull(self, model: str) -> AsyncGenerator[PullProgress, None]:
        """Pull ``model`` from Ollama's registry, yielding each progress record.

        Cancel-safe: cancelling abandons the download; Ollama keeps finished layers.

        Raises:
            BackendError: ``model_not_found`` (the registry has no such model),
                ``internal_error`` (disk full, digest mismatch, any error line), or a
                transport code (``node_disconnected`` if Ollama dies mid-pull).
        """
        body = {"model": model, "name": model, "stream": True}  # "name": Ollama < 0.5
        succeeded = False
        failure: BackendError | None = None

        def refused(status: int, message: str) -> BackendError:
            if not message:
                return status_error("ollama", status, message)
            return _pull_error(model, f"HTTP {status}: {message}")

        async with self._open_stream("POST", "/api/pull", body, refused) as lines:
            with map_transport_errors(streaming=True):
                async for line in lines:
                    if succeeded or failure is not None or not line.strip():
                        continue  # read on to EOF (see stream_chat)
                    try:
                        item = _decode(_PULL_DECODER, line, "pull")
                    except BackendError as exc:
                        failure = exc
                        continue
                    if item.error is not None:
                        failure = _pull_error(model, item.error)
                        continue
                    yield PullProgress(
                        status=item.status,
                        completed=item.completed,
                        total=item.total,
                        digest=item.digest,
                    )
                    succeeded = item.status == "success"
        if failure is not None:
            raise failure
        if not succeeded:
            raise BackendError(
                f"ollama stopped pulling {model!r} before it finished", code="node_disconnected"
            )

    async def remove(self, model: str) -> None:
        """Delete ``model`` (``DELETE /api/delete``).

        Raises:
            BackendError: ``model_not_found`` (not pulled), or a transport/status code.
        """
        with map_transport_errors(streaming=False):
            response = await self._client.request(
                "DELETE",
                self._base_url + "/api/delete",
                json={"model": model, "name": model},
                timeout=self._timeout,
            )
        if response.status_code != 200:
            raise _status_error(response.status_code, response.content)

    async def _get_models(self, path: str) -> list[_Model]:
        with map_transport_errors(streaming=False):
            response = await self._client.get(self._base_url + path, timeout=self._timeout)
        if response.status_code != 200:
            raise _status_error(response.status_code, response.content)
        return _decode(_LIST_DECODER, response.content, "model list").models

    def _open_stream(
        self,
        method: str,
        path: str,
        body: dict[str, Any],
        refused: _Refused | None = None,
    ) -> _LineStream:
        return _LineStream(
            self._client,
            self._client.build_request(
                method, self._base_url + path, json=body, timeout=self._timeout
            ),
            refused or (lambda status, message: status_error("ollama", status, message)),
        )


_Refused = Callable[[int, str], BackendError]


class _LineStream:
    """``async with`` an NDJSON response: check its status, then iterate its lines."""

    def __init__(
        self, client: httpx.AsyncClient, request: httpx.Request, refused: _Refused
    ) -> None:
        self._client = client
        self._request = request
        self._refused = refused
        self._stack = AsyncExitStack()

    async def __aenter__(self) -> AsyncGenerator[str, None]:
        stack = self._stack
        try:
            with map_transport_errors(streaming=False):
                response = await self._client.send(self._request, stream=True)
            stack.push_async_callback(response.aclose)
            if response.status_code != 200:
                message = _error_message(await read_error_body(response))
                raise self._refused(response.status_code, message)
            lines = cast(AsyncGenerator[str, None], response.aiter_lines())
            return await stack.enter_async_context(aclosing(lines))
        except BaseException:
            await stack.aclose()
            raise

    async def __aexit__(self, *exc_info: object) -> None:
        await self._stack.aclose()


def _chat_body(request: ChatRequest) -> dict[str, Any]:
    """The ``/api/chat`` body: OpenAI sampling fields become Ollama ``options``."""
    optional = {
        "num_predict": request.max_tokens,
        "temperature": request.temperature,
        "top_p": request.top_p,
        "seed": request.seed,
        "stop": list(request.stop) or None,
    }
    return {
        "model": request.model,
        "messages": [{"role": m.role, "content": m.content} for m in request.messages],
        "stream": True,
        "options": {k: v for k, v in optional.items() if v is not None},
    }


def _model_info(model: _Model, loaded: set[str] | None) -> ModelInfo:
    details = model.details
    size_label = details.parameter_size if details is not None else None
    digest = model.digest
    if digest and ":" not in digest:
        digest = f"sha256:{digest}"
    return ModelInfo(
        name=model.name,
        size_bytes=model.size,
        digest=digest or None,
        parameter_count=parse_parameter_count(size_label) if size_label else None,
        quantization=details.quantization_level or None if details is not None else None,
        loaded=None if loaded is None else model.name in loaded,
    )


def _decode(decoder: msgspec.json.Decoder[_T], data: str | bytes, what: str) -> _T:
    """Decode one Ollama JSON document.

    Raises:
        BackendError: it is not the expected shape (``internal_error``).
    """
    try:
        return decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise BackendError(
            f"ollama sent a malformed {what} answer: {exc}", code="internal_error"
        ) from exc


def _pull_error(model: str, message: str) -> BackendError:
    """Classify an error line of a pull: unknown model, full disk, or anything else."""
    if is_disk_full(message):
        return disk_full_error("ollama", f"pulling {model!r}: {message}")
    if any(marker in message.lower() for marker in _UNKNOWN_MODEL_MARKERS):
        return BackendError(
            f"ollama's registry has no model {model!r} ({message}); check the name and tag "
            "on ollama.com/library",
            code="model_not_found",
        )
    return BackendError(f"ollama failed to pull {model!r}: {message}", code="internal_error")


def _error_message(body: bytes) -> str:
    """Ollama's ``{"error": ...}`` message, else the body's start as text."""
    try:
        return _ERROR_DECODER.decode(body).error
    except msgspec.DecodeError:
        return body[:500].decode("utf-8", "replace").strip()


def _status_error(status: int, body: bytes) -> BackendError:
    """The `BackendError` for a non-200 answer, with Ollama's message."""
    return status_error("ollama", status, _error_message(body))
