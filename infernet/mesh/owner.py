"""Owner commands over libp2p: `/infernet/owner/1.0.0`, both sides.

Owns: reading one `CommandRequest` and writing one `CommandResult` on a stream, with a
timeout on every read and write (frames in `infernet.protocol.owner`; ``specs/keys.md``
§5.2). What a command means is the node's business (`infernet.node.owner`).

Invariants: every stream is closed (or reset on error) in a ``finally``; a silent peer costs
at most `READ_TIMEOUT`; the handler runs one command per stream.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final

import trio

from infernet.mesh.host import MeshHost
from infernet.mesh.streams import finish, read_until, write
from infernet.protocol.errors import RemoteProtocolError, TransportError
from infernet.protocol.owner import (
    CommandRequest,
    CommandResult,
    OwnerFrame,
    OwnerFrameDecoder,
    encode_owner_frame,
)

__all__ = ["OWNER_PROTOCOL", "CommandHandler", "send_owner_command", "serve_owner_stream"]

log = logging.getLogger("infernet.mesh.owner")

OWNER_PROTOCOL: Final = "/infernet/owner/1.0.0"
READ_TIMEOUT: Final = 10.0
WRITE_TIMEOUT: Final = 10.0
RESULT_TIMEOUT: Final = 600.0  # a pull of a large model can take minutes

# The node's logic: given the signed command bytes and the sender's peer id, the result.
CommandHandler = Callable[[bytes, str], Awaitable[CommandResult]]


async def _read_frame(stream: Any, decoder: OwnerFrameDecoder, timeout: float) -> OwnerFrame:
    """Read until one frame is complete.

    Raises:
        TransportError: EOF, a broken stream, or no frame within ``timeout``.
        RemoteProtocolError: garbage or an oversized frame.
    """
    return await read_until(stream, decoder.next_frame, decoder.receive_data, timeout,
                            "owner frame")


async def _write(stream: Any, data: bytes) -> None:
    await write(stream, data, WRITE_TIMEOUT)


async def serve_owner_stream(stream: Any, handler: CommandHandler) -> None:
    """Serve one inbound owner stream: one command in, one result out.

    Never raises: protocol and transport failures are logged and the stream is reset.
    """
    peer = stream.muxed_conn.peer_id.to_base58()
    ok = False
    try:
        frame = await _read_frame(stream, OwnerFrameDecoder(), READ_TIMEOUT)
        if not isinstance(frame, CommandRequest):
            raise RemoteProtocolError("the first owner frame must be a command")
        result = await handler(frame.command, peer)
        await _write(stream, encode_owner_frame(result))
        ok = True
    except RemoteProtocolError as exc:
        log.warning("owner stream from %s: %s", peer, exc)
        with trio.move_on_after(1):
            try:
                await stream.write(encode_owner_frame(CommandResult(
                    status="refused", code="bad_request", message=str(exc)[:2000])))
            except Exception as write_exc:
                log.debug("could not report the protocol error: %s", write_exc)
    except TransportError as exc:
        log.warning("owner stream from %s: %s", peer, exc)
    finally:
        await finish(stream, ok)


async def send_owner_command(mesh: MeshHost, peer_id: str, command: bytes, *,
                             timeout: float = RESULT_TIMEOUT) -> CommandResult:
    """Send one signed command (canonical CBOR) to ``peer_id``; return the node's result.

    Raises:
        TransportError: the peer is unreachable, does not speak the protocol, goes silent
            past ``timeout``, or the stream breaks.
        RemoteProtocolError: the node answered something else than a result.
    """
    stream = await mesh.new_stream(peer_id, OWNER_PROTOCOL)
    ok = False
    try:
        await _write(stream, encode_owner_frame(CommandRequest(command=command)))
        frame = await _read_frame(stream, OwnerFrameDecoder(), timeout)
        if not isinstance(frame, CommandResult):
            raise RemoteProtocolError("the node answered with something else than a result")
        ok = True
        return frame
    finally:
        await finish(stream, ok)
