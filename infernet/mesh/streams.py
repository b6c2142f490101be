"""Reading and writing length-prefixed frames on libp2p streams, with the rules every
protocol here shares (`jobs`, `owner`, `directory`).

Owns: turning libp2p's stream exceptions into `TransportError`, putting a timeout on every
read and write, and closing (or resetting) a stream without letting a dead peer hang us.
Decoding stays with each protocol's sans-IO decoder in `infernet.protocol`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Final, TypeVar

import trio

from infernet.protocol.errors import InfernetError, TransportError

__all__ = ["READ_CHUNK", "WRITE_TIMEOUT", "finish", "read_until", "write"]

log = logging.getLogger("infernet.mesh.streams")

READ_CHUNK: Final = 64 << 10
WRITE_TIMEOUT: Final = 30.0
# A session's reader waits for frames without a timeout, once per frame: skip the cancel
# scope an infinite `fail_after` would still build (~3 per job on each side of a session).
_NO_TIMEOUT: Final = nullcontext()
CLOSE_TIMEOUT: Final = 2.0

T = TypeVar("T")


async def read_until(stream: Any, ready: Callable[[], T | None], feed: Callable[[bytes], None],
                     timeout: float, what: str = "frame") -> T:
    """Feed what ``stream`` sends into ``feed`` until ``ready()`` returns something.

    Raises:
        TransportError: EOF, reset, or nothing within ``timeout`` (code ``timeout``).
        RemoteProtocolError: from ``feed``/``ready`` (garbage, oversized frames).
    """
    if (item := ready()) is not None:  # already buffered: no read, no scope
        return item
    limit: AbstractContextManager[Any] = (
        _NO_TIMEOUT if timeout == math.inf else trio.fail_after(timeout))
    try:
        with limit:
            while (item := ready()) is None:
                data = await stream.read(READ_CHUNK)
                if not data:
                    raise TransportError("stream closed by peer")
                feed(data)
    except trio.TooSlowError:
        raise TransportError(f"no {what} within {timeout:.0f}s", code="timeout") from None
    except InfernetError:
        raise
    except Exception as exc:  # libp2p's StreamEOF/StreamReset/MuxedConn errors
        raise TransportError(f"stream broke: {type(exc).__name__}") from None
    return item


async def write(stream: Any, data: bytes, timeout: float = WRITE_TIMEOUT) -> None:
    """Write ``data``; a peer that stops reading costs at most ``timeout``.

    Raises:
        TransportError: the stream broke, or ``timeout`` passed (code ``timeout``).
    """
    try:
        with trio.fail_after(timeout):
            await stream.write(data)
    except trio.TooSlowError:
        raise TransportError("peer stopped reading", code="timeout") from None
    except Exception as exc:
        raise TransportError(f"stream broke on write: {type(exc).__name__}") from None


async def finish(stream: Any, ok: bool) -> None:
    """Close ``stream`` after a clean exchange, else reset it; shielded and bounded, never
    raises (a stream already gone has nothing left to release)."""
    with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT):
        try:
            await (stream.close() if ok else stream.reset())
        except Exception as exc:
            log.debug("stream %s failed: %s", "close" if ok else "reset", exc)
