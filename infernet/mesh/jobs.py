"""The job protocol over libp2p streams: `/infernet/job/1.0.0`, both sides.

Owns: reading and writing frames on a stream with a timeout on every read, the node-side
stream handler and the client-side call. Frame rules live in `protocol.job_stream`;
spec: ``specs/job-protocol.md``.

Invariants:
- Every stream is closed (or reset on error) in a ``finally``: a handler never returns
  leaving the reader hanging (notes/py-libp2p.md, default 6).
- Every read is under `trio.fail_after`; a peer that goes silent costs at most one timeout.
- The client keeps its write side open until the job ends; EOF from the client means
  it went away, and the node stops generating.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import aclosing, asynccontextmanager
from typing import Any, Final

import trio

from infernet.mesh.host import MeshHost, lone_exception
from infernet.mesh.streams import WRITE_TIMEOUT, finish, read_until, write
from infernet.protocol.errors import (
    InfernetError,
    JobFailed,
    LocalProtocolError,
    RemoteProtocolError,
    TransportError,
)
from infernet.protocol.frames import (
    Accepted,
    Cancel,
    Chunk,
    FinalFrame,
    Frame,
    JobErrorFrame,
    JobRequest,
    NeedData,
    encode_frame,
)
from infernet.protocol.job_stream import JobStream

__all__ = ["JOB_PROTOCOL", "JobCall", "JobRunner", "open_job", "serve_job_stream"]

log = logging.getLogger("infernet.mesh.jobs")

JOB_PROTOCOL: Final = "/infernet/job/1.0.0"
REQUEST_TIMEOUT: Final = 10.0

SendFrame = Callable[[Frame], Awaitable[None]]
# The node's job logic: given the request, the client's peer id and a way to send frames.
JobRunner = Callable[[JobRequest, str, SendFrame], Awaitable[None]]


async def _read_frame(stream: Any, js: JobStream, timeout: float) -> Frame:
    """Read until `js` yields a frame.

    Raises:
        TransportError: EOF, reset or no frame within ``timeout``.
        RemoteProtocolError: the peer sent garbage or an illegal frame.
    """

    def ready() -> Frame | None:
        ev = js.next_event()
        return None if isinstance(ev, NeedData) else ev

    return await read_until(stream, ready, js.receive_data, timeout)


async def _write(stream: Any, data: bytes) -> None:
    await write(stream, data, WRITE_TIMEOUT)


async def _abort(stream: Any) -> None:
    await finish(stream, ok=False)


async def _close(stream: Any) -> None:
    await finish(stream, ok=True)


async def serve_job_stream(stream: Any, runner: JobRunner) -> None:
    """Serve one inbound job stream: read the request, stream the runner's frames back.

    Never raises: protocol and transport failures are logged and the stream is reset.
    """
    peer = stream.muxed_conn.peer_id.to_base58()
    js = JobStream("node")
    ok = False
    try:
        request = await _read_frame(stream, js, REQUEST_TIMEOUT)
        if not isinstance(request, JobRequest):  # the state machine only admits a request
            raise RemoteProtocolError("first frame must be a request")
        await _run_watched(stream, js, request, peer, runner)
        ok = True
    except RemoteProtocolError as exc:
        log.warning("job stream from %s: protocol error: %s", peer, exc)
        with trio.move_on_after(1):
            try:
                err = JobErrorFrame(job_id=js.job_id or "", code="protocol_error", message=str(exc))
                # Bypass the state machine: the stream is already in its error state.
                await stream.write(encode_frame(err))
            except Exception as write_exc:
                log.debug("could not report protocol error: %s", write_exc)
    except (TransportError, LocalProtocolError) as exc:
        if js.job_id is None:  # a pre-opened stream closed or recycled before any request
            log.debug("idle job stream from %s ended: %s", peer, exc)
        else:
            log.warning("job %s from %s: %s", js.job_id, peer, exc)
    finally:
        await (_close(stream) if ok else _abort(stream))


async def _run_watched(
    stream: Any, js: JobStream, request: JobRequest, peer: str, runner: JobRunner
) -> None:
    """Run the job while watching the client for cancel or EOF.

    Raises: whatever the runner or the writes raised, unwrapped from the nursery's group.
    """

    async def send(frame: Frame) -> None:
        await _write(stream, js.send(frame))

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_watch_client, stream, js, nursery.cancel_scope, request.job_id)
            await runner(request, peer, send)
            nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        raise lone_exception(group) from None


async def _watch_client(stream: Any, js: JobStream, scope: trio.CancelScope, job_id: str) -> None:
    """Cancel the job when the client sends Cancel, goes away or breaks the protocol."""
    try:
        frame = await _read_frame(stream, js, float("inf"))
        if isinstance(frame, Cancel):
            log.info("job %s cancelled by client", job_id)
    except InfernetError as exc:
        log.info("job %s: client gone (%s)", job_id, exc)
    scope.cancel()


class JobCall:
    """The client side of one job: await `accepted()`, then iterate chunks to the final frame."""

    def __init__(self, read: Callable[[float], Awaitable[Frame]], read_timeout: float) -> None:
        self._read = read  # the job's next frame within a timeout: its own stream or a session
        self._read_timeout = read_timeout
        self.final: FinalFrame | None = None
        self.accepted_frame: Accepted | None = None

    async def accepted(self, timeout: float) -> Accepted:
        """Wait for the node to accept the job.

        Raises:
            JobFailed: the node refused (code from its error frame).
            TransportError: the node went away or said nothing within ``timeout``.
        """
        frame = await self._read(timeout)
        if isinstance(frame, JobErrorFrame):
            raise JobFailed(frame.message, code=frame.code)
        if not isinstance(frame, Accepted):
            raise RemoteProtocolError(f"expected accepted, got {type(frame).__name__}")
        self.accepted_frame = frame
        return frame

    async def chunks(
        self, opener: Callable[[Chunk], str] | None = None
    ) -> AsyncGenerator[str, None]:
        """Yield text until the final frame (then stored in ``self.final``); ``opener``
        decrypts end-to-end sealed chunks (`infernet.protocol.e2e.ChunkOpener.open`).

        Raises:
            JobFailed: the node reported an error mid-stream.
            TransportError: the node died or went silent (code node_disconnected/timeout).
            RemoteProtocolError: a sealed chunk without an opener, or one that fails to open.
        """
        async with aclosing(self.chunk_frames()) as frames:
            async for frame in frames:
                if not frame.encrypted:
                    yield frame.text
                elif opener is None:
                    raise RemoteProtocolError("the node sent a sealed chunk to a clear request")
                else:
                    yield opener(frame)

    async def chunk_frames(self) -> AsyncGenerator[Chunk, None]:
        """Yield chunk frames as they arrive (a relay forwards them unopened).

        Raises:
            JobFailed, TransportError: as `chunks`.
        """
        while True:
            frame = await self._read(self._read_timeout)
            if isinstance(frame, Chunk):
                yield frame
            elif isinstance(frame, FinalFrame):
                self.final = frame
                return
            elif isinstance(frame, JobErrorFrame):
                raise JobFailed(frame.message, code=frame.code)
            else:
                raise RemoteProtocolError(f"unexpected {type(frame).__name__} frame")


@asynccontextmanager
async def open_job(
    mesh: MeshHost, peer_id: str, request: JobRequest, *, read_timeout: float = 60.0
) -> AsyncIterator[JobCall]:
    """Open a job stream to ``peer_id`` and send ``request``.

    On exit before the final frame the node is told to cancel. Cancel-safe.

    Raises:
        TransportError: the peer is unreachable.
    """
    stream = await mesh.new_stream(peer_id, JOB_PROTOCOL)
    js = JobStream("client")
    call = JobCall(lambda timeout: _read_frame(stream, js, timeout), read_timeout)
    finished = False
    try:
        await _write(stream, js.send(request))
        yield call
        finished = js.state in ("done", "error")
    finally:
        if not finished and js.state in ("requested", "streaming"):
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                try:
                    await stream.write(js.send(Cancel(job_id=request.job_id)))
                except Exception as exc:
                    log.debug("cancel of %s not delivered: %s", request.job_id, exc)
        await (_close(stream) if finished else _abort(stream))
