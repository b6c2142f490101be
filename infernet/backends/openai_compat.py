"""Adapter for any engine that speaks the OpenAI HTTP API: llama.cpp / llama-swap, vLLM,
SGLang, Modular MAX (`infernet.backends.engines` lists how they differ).

Owns: the HTTP calls to the health probe, ``/v1/models`` and the streaming generation
endpoints, reading their SSE streams (`infernet.backends.sse` decodes them), and the
translation of every engine or transport failure into `BackendError` (DESIGN.md "Backends";
the contract is `infernet.backends.base.Backend`).

Invariants:
- Every request has an httpx timeout (connect, read, write, pool); nothing waits forever.
- `stream_chat` yields each non-empty text delta as the engine sent it, then exactly one
  `Usage` taken from the engine's own ``usage`` record (``stream_options.include_usage``);
  it never estimates token counts.
- Errors: connection refused → ``backend_unavailable``; the stream breaks or ends before the
  usage record → ``node_disconnected``; a read times out → ``timeout``; non-200 → the engine's
  own message with ``model_not_found`` (404), ``bad_request`` (other 4xx),
  ``backend_unavailable`` (503) or ``internal_error`` (other 5xx); an unparseable chunk or a
  chunk carrying ``error`` → ``internal_error``.
- Once `list_models` has run, a request for a model outside that listing is refused with
  ``model_not_found`` after one fresh listing (llama.cpp answers any name with its one model,
  which would serve a client the wrong weights). Before any listing nothing is checked, so
  the hot path never pays an extra round trip.
- The OpenAI API has no pull or delete: `pull` and `remove` raise ``bad_request`` with the
  engine's own way to install a model (``install_hint``).

Template hook: an engine serving a base model (no chat template) gets a ``prompt_formatter``
that turns the chat request into a raw prompt; the adapter then posts to ``/v1/completions``
instead of ``/v1/chat/completions`` and reads ``choices[].text`` instead of ``choices[].delta``.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from typing import Any, Final

import httpx
import msgspec

from infernet.backends.base import (
    BackendCapabilities,
    ChatRequest,
    ModelInfo,
    ModelNaming,
    PullProgress,
    StreamItem,
    TextDelta,
    Usage,
    unsupported,
)
from infernet.backends.http_stream import ConnectionPool, EngineEndpoint, open_stream
from infernet.backends.sse import EventDataDecoder
from infernet.backends.transport import MAX_ERROR_BODY, map_transport_errors, status_error
from infernet.protocol.errors import BackendError

__all__ = ["CompletionPrompt", "OpenAICompatBackend", "PromptFormatter"]

DEFAULT_CONNECT_TIMEOUT: Final = 5.0
DEFAULT_READ_TIMEOUT: Final = 120.0
DEFAULT_HEALTH_TIMEOUT: Final = 2.0
# llama.cpp's server closes the connection after a streamed response; a request sent on the
# pooled connection before that close arrives fails with "Server disconnected without sending
# a response" (measured: 6 of 30 back-to-back streams; none with a fresh connection each).
# A new connection costs well under a millisecond next to a generation, so none is reused.
_NO_KEEPALIVE: Final = {"Connection": "close"}
# The streamed request's headers (besides Host, Content-Type and Content-Length). Its
# connection is kept alive: `http_stream` checks a pooled connection before reuse and sends
# again on a fresh one a request the engine closed the connection on without answering.
_STREAM_HEADERS: Final = (("Accept", "text/event-stream"), ("Cache-Control", "no-store"))
_GENERIC_INSTALL_HINT: Final = (
    "start the engine with the model (it downloads the weights itself), then list the name "
    "in served_models"
)


class CompletionPrompt(msgspec.Struct, frozen=True, kw_only=True):
    """A chat request rendered as a raw completion prompt for a base model."""

    prompt: str
    stop: tuple[str, ...] = ()
    max_tokens: int | None = None
    temperature: float | None = None


PromptFormatter = Callable[[ChatRequest], CompletionPrompt]


# Wire shapes. msgspec ignores unknown fields, so engines may add whatever they like.
class _Delta(msgspec.Struct):
    content: str | None = None


class _Choice(msgspec.Struct):
    delta: _Delta | None = None
    text: str | None = None
    finish_reason: str | None = None


class _Usage(msgspec.Struct):
    prompt_tokens: int
    completion_tokens: int


class _ErrorBody(msgspec.Struct):
    message: str = ""


class _Chunk(msgspec.Struct):
    choices: list[_Choice] = msgspec.field(default_factory=list)
    usage: _Usage | None = None
    error: _ErrorBody | str | None = None


class _ModelMeta(msgspec.Struct):  # llama.cpp's extra model facts
    size: int | None = None
    n_params: int | None = None
    ftype: str | None = None


class _ModelEntry(msgspec.Struct):
    id: str
    meta: _ModelMeta | None = None
    root: str | None = None  # vLLM / SGLang: the HF repo id or local path it loaded


class _ModelList(msgspec.Struct):
    data: list[_ModelEntry]


class _ErrorEnvelope(msgspec.Struct):
    error: _ErrorBody | str | None = None
    detail: str | None = None  # FastAPI-style servers (vLLM) sometimes answer this way


_CHUNK_DECODER: Final = msgspec.json.Decoder(_Chunk)
_BODY_ENCODER: Final = msgspec.json.Encoder()
_MODELS_DECODER: Final = msgspec.json.Decoder(_ModelList)
_ERROR_DECODER: Final = msgspec.json.Decoder(_ErrorEnvelope)


class OpenAICompatBackend:
    """A `Backend` for an engine exposing the OpenAI API at ``base_url``.

    Pass ``client`` to share a connection pool; the adapter then never closes it. Otherwise
    it owns one and `aclose` closes it.
    """

    def __init__(
        self,
        base_url: str,
        name: str = "llamacpp",
        *,
        client: httpx.AsyncClient | None = None,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        read_timeout: float = DEFAULT_READ_TIMEOUT,
        health_timeout: float = DEFAULT_HEALTH_TIMEOUT,
        prompt_formatter: PromptFormatter | None = None,
        probe_path: str = "/health",
        model_naming: ModelNaming = "alias",
        install_hint: str = _GENERIC_INSTALL_HINT,
    ) -> None:
        self._base_url = base_url.rstrip("/")
        self._name = name
        self._owns_client = client is None
        self._client = client if client is not None else httpx.AsyncClient(trust_env=False)
        self._timeout = httpx.Timeout(read_timeout, connect=connect_timeout)
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._health_timeout = httpx.Timeout(health_timeout)
        self._prompt_formatter = prompt_formatter
        self._probe_path = probe_path
        self._capabilities = BackendCapabilities(model_naming=model_naming)
        self._install_hint = install_hint
        self._known_models: frozenset[str] | None = None
        self._parsed: EngineEndpoint | None = None
        self._pool = ConnectionPool()  # the streamed generations' keep-alive connections

    @property
    def name(self) -> str:
        """Short engine name used in announcements and logs."""
        return self._name

    @property
    def capabilities(self) -> BackendCapabilities:
        """Chat only: the OpenAI API has no pull or delete."""
        return self._capabilities

    @property
    def base_url(self) -> str:
        """The engine's root URL, without a trailing slash."""
        return self._base_url

    async def aclose(self) -> None:
        """Close the idle engine connections, and the HTTP client if this adapter created
        it. Idempotent."""
        self._pool.close()
        if self._owns_client:
            await self._client.aclose()

    async def health(self) -> bool:
        """Return True when the probe path (``/health``) answers 200 in time. Never raises."""
        try:
            response = await self._client.get(
                self._base_url + self._probe_path,
                headers=_NO_KEEPALIVE,
                timeout=self._health_timeout,
            )
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    async def list_models(self) -> list[ModelInfo]:
        """Return the models listed by ``GET /v1/models``.

        Raises:
            BackendError: the engine is unreachable (``backend_unavailable``), answered an
                error status, or answered something that is not an OpenAI model list
                (``internal_error``).
        """
        with map_transport_errors(streaming=False):
            response = await self._client.get(
                self._base_url + "/v1/models", headers=_NO_KEEPALIVE, timeout=self._timeout
            )
        if response.status_code != 200:
            raise self._status_error(response.status_code, response.content)
        try:
            listing = _MODELS_DECODER.decode(response.content)
        except msgspec.DecodeError as exc:
            raise BackendError(
                f"{self._name} answered a malformed model list: {exc}", code="internal_error"
            ) from exc
        models = [_model_info(m) for m in listing.data]
        self._known_models = frozenset(m.name for m in models)
        return models

    async def pull(self, model: str) -> AsyncGenerator[PullProgress, None]:
        """Not offered by the OpenAI API.

        Raises:
            BackendError: always ``bad_request``, with how to install a model on this engine.
        """
        unsupported(self._name, f"pull {model!r}", self._install_hint)
        yield PullProgress(status="unreachable")  # pragma: no cover - makes this a generator

    async def remove(self, model: str) -> None:
        """Not offered by the OpenAI API.

        Raises:
            BackendError: always ``bad_request``.
        """
        unsupported(
            self._name,
            f"remove {model!r}",
            "stop the engine (or drop the model from its config) and delete the weights "
            "where it keeps them",
        )

    async def _check_model(self, model: str) -> None:
        """Refuse a model outside the last listing, after one fresh listing.

        Raises:
            BackendError: ``model_not_found``, or the errors of `list_models`.
        """
        if self._known_models is None or model in self._known_models:
            return
        await self.list_models()
        if model not in self._known_models:
            served = ", ".join(sorted(self._known_models)) or "nothing"
            raise BackendError(
                f"{self._name} does not serve {model!r} (it serves {served})",
                code="model_not_found",
            )

    async def stream_chat(self, request: ChatRequest) -> AsyncGenerator[StreamItem, None]:
        """Yield `TextDelta` items as the engine generates, then exactly one final `Usage`.

        Cancel-safe: cancelling (or closing) the iteration closes the HTTP response, which
        makes the engine abort the generation.

        Raises:
            BackendError: engine unreachable (``backend_unavailable``), dead mid-stream
                (``node_disconnected``), silent past the read timeout (``timeout``), or
                answered an error status or malformed data.
        """
        await self._check_model(request.model)
        path, body = self._request_body(request)
        usage: _Usage | None = None
        finish_reason = "stop"
        done = False
        response = await open_stream(
            self._endpoint(),
            path,
            _BODY_ENCODER.encode(body),
            _STREAM_HEADERS,
            connect_timeout=self._connect_timeout,
            read_timeout=self._read_timeout,
            pool=self._pool,
        )
        try:
            if response.status != 200:
                raise self._status_error(response.status, await response.read(MAX_ERROR_BODY))
            if "text/event-stream" not in response.content_type:
                raise BackendError(
                    "engine answered a non-SSE stream: Expected response header Content-Type "
                    f"to contain 'text/event-stream', got {response.content_type!r}",
                    code="internal_error",
                )
            decoder = EventDataDecoder(response.encoding)
            while part := await response.receive():
                for data in decoder.feed(part):
                    # Read on to the end after [DONE]: the terminating chunk usually comes
                    # in the same read, and the engine then sees a clean close.
                    if done or data.strip() == "[DONE]":
                        done = True
                        continue
                    chunk = _decode_chunk(data)
                    if chunk.usage is not None:
                        usage = chunk.usage
                    for choice in chunk.choices:
                        finish_reason = choice.finish_reason or finish_reason
                        text = _choice_text(choice)
                        if text:
                            yield TextDelta(text=text)
        finally:
            await response.aclose()
        yield _final_usage(usage, finish_reason, done=done)

    def _endpoint(self) -> EngineEndpoint:
        """The engine's address for the streaming client, parsed on first use.

        Raises:
            BackendError: the base URL is not http(s) (``backend_unavailable``).
        """
        if self._parsed is None:
            try:
                self._parsed = EngineEndpoint.parse(self._base_url)
            except ValueError as exc:
                raise BackendError(
                    f"{self._name} engine URL is unusable: {exc}", code="backend_unavailable"
                ) from exc
        return self._parsed

    def _request_body(self, request: ChatRequest) -> tuple[str, dict[str, Any]]:
        """Return the endpoint path and JSON body for ``request``."""
        body: dict[str, Any] = {
            "model": request.model,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        max_tokens, temperature, stop = request.max_tokens, request.temperature, request.stop
        if self._prompt_formatter is None:
            path = "/v1/chat/completions"
            body["messages"] = [{"role": m.role, "content": m.content} for m in request.messages]
        else:
            path = "/v1/completions"
            rendered = self._prompt_formatter(request)
            body["prompt"] = rendered.prompt
            max_tokens, temperature, stop = rendered.max_tokens, rendered.temperature, rendered.stop
        optional = {
            "max_tokens": max_tokens,
            "temperature": temperature,
            "top_p": request.top_p,
            "seed": request.seed,
            "stop": list(stop) or None,
        }
        body.update({k: v for k, v in optional.items() if v is not None})
        return path, body

    def _status_error(self, status: int, body: bytes) -> BackendError:
        """Build the `BackendError` for a non-200 answer, keeping the engine's message."""
        return status_error(self._name, status, _error_message(body))


def _model_info(entry: _ModelEntry) -> ModelInfo:
    """Translate one ``/v1/models`` entry, keeping whatever facts the engine adds."""
    meta = entry.meta
    local = entry.root if entry.root is not None and entry.root.startswith("/") else None
    return ModelInfo(
        name=entry.id,
        size_bytes=meta.size if meta is not None else None,
        parameter_count=meta.n_params if meta is not None else None,
        quantization=meta.ftype if meta is not None else None,
        path=local,
    )


def _error_message(body: bytes) -> str:
    """The message in an OpenAI (or FastAPI) error body, else the body's start as text."""
    try:
        envelope = _ERROR_DECODER.decode(body[:MAX_ERROR_BODY])
    except msgspec.DecodeError:
        return body[:500].decode("utf-8", "replace").strip()
    if isinstance(envelope.error, _ErrorBody):
        return envelope.error.message
    return envelope.error or envelope.detail or ""


def _final_usage(usage: _Usage | None, finish_reason: str, *, done: bool) -> Usage:
    """Build the stream's closing `Usage` from the engine's own counts.

    A stream that broke after the usage record but before ``[DONE]`` still counts as
    complete: every token and the counts have arrived.

    Raises:
        BackendError: no usage record: ``node_disconnected`` if the stream just stopped,
            ``internal_error`` if the engine finished without reporting usage.
    """
    if usage is not None:
        return Usage(
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            finish_reason=finish_reason,
        )
    if done:
        raise BackendError(
            "engine finished without a usage record (does it support "
            "stream_options.include_usage?)",
            code="internal_error",
        )
    raise BackendError(
        "the engine died mid-stream: the stream ended before it finished",
        code="node_disconnected",
    )


def _choice_text(choice: _Choice) -> str | None:
    """Return the generated text in a chat (``delta.content``) or completion (``text``) chunk."""
    if choice.delta is not None:
        return choice.delta.content
    return choice.text


def _decode_chunk(data: str) -> _Chunk:
    """Decode one SSE ``data`` payload.

    Raises:
        BackendError: the payload is not a chunk (``internal_error``), or is an error the
            engine reported mid-stream (``internal_error`` with the engine's message).
    """
    try:
        chunk = _CHUNK_DECODER.decode(data)
    except msgspec.DecodeError as exc:
        raise BackendError(
            f"engine sent a malformed stream chunk: {exc}", code="internal_error"
        ) from exc
    if chunk.error is not None:
        message = chunk.error if isinstance(chunk.error, str) else chunk.error.message
        raise BackendError(f"engine error mid-stream: {message}", code="internal_error")
    return chunk
