"""Translating HTTP failures into `BackendError`, shared by every HTTP engine adapter.

Owns: the mapping from httpx exceptions and engine HTTP statuses to the project's error
codes (see `infernet.backends.base` for the code list), and bounded reading of an engine's
error body. Adapters parse the body's shape themselves and pass the message in.

Invariants: nothing here lets a foreign exception escape `map_transport_errors`; an error
body is read up to `MAX_ERROR_BODY` bytes only; a message mentioning a full disk always
says so, whatever the status.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

import httpx

from infernet.protocol.errors import BackendError

__all__ = [
    "MAX_ERROR_BODY",
    "disk_full_error",
    "is_disk_full",
    "map_transport_errors",
    "read_error_body",
    "status_error",
]

# An engine's error body is read only up to this size; anything longer is not a message.
MAX_ERROR_BODY: Final = 64 * 1024
_DISK_FULL_MARKERS: Final = ("no space left on device", "disk full", "not enough space")


def is_disk_full(message: str) -> bool:
    """True when an engine's error message says the disk is full (ENOSPC and friends)."""
    lowered = message.lower()
    return any(marker in lowered for marker in _DISK_FULL_MARKERS)


def disk_full_error(engine: str, message: str) -> BackendError:
    """The error for an engine that ran out of disk space (during a pull, mostly)."""
    return BackendError(
        f"{engine} ran out of disk space: {message}; free space on the engine's model "
        "directory (or point it at a bigger disk) and retry",
        code="internal_error",
    )


def status_error(engine: str, status: int, message: str) -> BackendError:
    """Build the `BackendError` for an engine's non-2xx answer, keeping its message.

    404 means an unknown model (vLLM, SGLang and Ollama all answer it for one), 503 an
    engine that is still loading or overloaded, other 4xx a request the engine refused,
    5xx an engine fault.
    """
    text = f"{engine} answered HTTP {status}" + (f": {message}" if message else "")
    if is_disk_full(message):
        return disk_full_error(engine, text)
    if status == 404:
        return BackendError(text, code="model_not_found")
    if status == 503:
        return BackendError(text, code="backend_unavailable")
    return BackendError(text, code="bad_request" if status < 500 else "internal_error")


async def read_error_body(response: httpx.Response) -> bytes:
    """Read at most `MAX_ERROR_BODY` bytes of a streamed response's body.

    Raises:
        BackendError: the connection broke while reading (see `map_transport_errors`).
    """
    body = b""
    with map_transport_errors(streaming=False):
        async for part in response.aiter_bytes():
            body += part
            if len(body) >= MAX_ERROR_BODY:
                break
    return body[:MAX_ERROR_BODY]


@contextmanager
def map_transport_errors(*, streaming: bool) -> Iterator[None]:
    """Translate httpx exceptions into `BackendError` at the adapter's edge.

    ``streaming`` says whether the engine already accepted the request: a broken connection
    then means it died mid-stream (``node_disconnected``) rather than being unavailable.
    """
    try:
        yield
    except httpx.TimeoutException as exc:
        if isinstance(exc, httpx.ConnectTimeout | httpx.PoolTimeout):
            raise BackendError(f"engine unreachable: {exc!r}", code="backend_unavailable") from exc
        raise BackendError(f"engine did not answer in time: {exc!r}", code="timeout") from exc
    except httpx.TransportError as exc:
        if streaming:
            raise BackendError(
                f"the engine died mid-stream: {exc!r}", code="node_disconnected"
            ) from exc
        raise BackendError(f"engine unreachable: {exc!r}", code="backend_unavailable") from exc
