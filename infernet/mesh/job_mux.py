"""Many jobs on one long-lived stream: `/infernet/job-mux/1.0.0`, both sides.

Owns: the node's session handler, the client's `JobSession` (one stream, many jobs) and
the writer that coalesces frames. Why: a stream per job costs a yamux open, a
multistream-select exchange, window updates and a close on each side, and each frame its
own yamux frame and Noise message. On one session, frames of jobs that are ready together
leave in one write (``bench/gateway_instant.py`` measures the difference). Frame rules
live in `infernet.protocol.job_mux`; spec: ``specs/job-protocol.md`` §9.

Invariants:
- Each session runs in one nursery: a writer task, the reader, and (node side) one task
  per job. When any of them fails, or the peer closes, every job on it ends: the node
  cancels its jobs, the client's jobs raise `TransportError` (``node_disconnected``).
- Bounded everywhere: frames waiting to be written (`OUTBOX_FRAMES`, writers wait),
  frames waiting for a client job to read them (`INBOX_FRAMES`, then the session's reader
  waits for that job: sessions are for clients that read every job promptly), jobs
  per session on a node (`MAX_SESSION_JOBS`, more are refused ``no_capacity``) and
  sessions per node (`MAX_SESSIONS`, more are reset at once).
- A node ends every job it accepted on a session with ``final`` or ``error``: a job the
  client cancelled ends with ``error``/``cancelled``, one whose runner broke with
  ``error``/``internal_error``.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from typing import Any, Final

import trio
from trio_typing import TaskStatus

from infernet.mesh.host import MeshHost, ProtocolNotOffered, lone_exception
from infernet.mesh.jobs import JobCall, JobRunner
from infernet.mesh.streams import finish, read_until, write
from infernet.protocol.errors import (
    ErrorCode,
    InfernetError,
    RemoteProtocolError,
    TransportError,
)
from infernet.protocol.frames import Cancel, Frame, JobErrorFrame, JobRequest, NeedData
from infernet.protocol.job_mux import JobMux

__all__ = ["JOB_MUX_PROTOCOL", "JobSession", "SessionPool", "SessionServer", "serve_job_session"]

log = logging.getLogger("infernet.mesh.job_mux")

JOB_MUX_PROTOCOL: Final = "/infernet/job-mux/1.0.0"
MAX_SESSION_JOBS: Final = 256
MAX_SESSIONS: Final = 64
OUTBOX_FRAMES: Final = 512
INBOX_FRAMES: Final = 256
COALESCE_BYTES: Final = 256 << 10  # one write at most; yamux splits by window anyway


class _Outbox:
    """Encoded frames waiting for the session's writer, which sends what is queued at
    once: frames that became ready together share one yamux frame and one Noise message."""

    def __init__(self) -> None:
        self._send, self._receive = trio.open_memory_channel[bytes](OUTBOX_FRAMES)

    async def put(self, data: bytes) -> None:
        """Queue ``data``; waits while the outbox is full.

        Raises:
            TransportError: the session's writer is gone.
        """
        try:
            self._send.send_nowait(data)  # no checkpoint when there is room: most puts
        except trio.WouldBlock:
            try:
                await self._send.send(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                raise TransportError("the job session is closed") from None
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise TransportError("the job session is closed") from None

    def put_nowait(self, data: bytes) -> None:
        """Queue ``data`` if there is room (a cancel from a job that is leaving: if the
        outbox is full, or the session is gone, the node learns of it when the session ends)."""
        with suppress(trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            self._send.send_nowait(data)

    async def run(self, stream: Any) -> None:
        """Write queued frames until cancelled.

        Raises:
            TransportError: a write failed or the peer stopped reading.
        """
        with self._receive:
            async for data in self._receive:
                parts, size = [data], len(data)
                while size < COALESCE_BYTES:
                    try:
                        more = self._receive.receive_nowait()
                    except trio.WouldBlock:
                        break
                    parts.append(more)
                    size += len(more)
                await write(stream, data if len(parts) == 1 else b"".join(parts))


def _reader(mux: JobMux) -> Callable[[], Frame | None]:
    def ready() -> Frame | None:
        event = mux.next_event()
        return None if isinstance(event, NeedData) else event

    return ready


# --- node side ----------------------------------------------------------------------------


class SessionServer:
    """The node's handler for job sessions, with a bound on how many run at once."""

    def __init__(self, runner: JobRunner, *, max_sessions: int = MAX_SESSIONS,
                 max_jobs: int = MAX_SESSION_JOBS) -> None:
        self._runner = runner
        self._max_sessions = max_sessions
        self._max_jobs = max_jobs
        self.sessions = 0

    async def handle(self, stream: Any) -> None:
        """Serve one inbound session stream to its end. Never raises."""
        if self.sessions >= self._max_sessions:
            log.warning("job session refused: %d sessions already open", self.sessions)
            await finish(stream, ok=False)
            return
        self.sessions += 1
        try:
            await serve_job_session(stream, self._runner, max_jobs=self._max_jobs)
        finally:
            self.sessions -= 1


async def serve_job_session(stream: Any, runner: JobRunner, *,
                            max_jobs: int = MAX_SESSION_JOBS) -> None:
    """Serve jobs arriving on one session stream until the client closes it.

    Never raises: protocol and transport failures are logged and the stream is reset.
    """
    peer = stream.muxed_conn.peer_id.to_base58()
    mux = JobMux("node")
    outbox = _Outbox()
    scopes: dict[str, trio.CancelScope] = {}
    ready = _reader(mux)
    ok = False

    async def serve_one(request: JobRequest, scope: trio.CancelScope) -> None:
        job_id = request.job_id

        async def send(frame: Frame) -> None:
            await outbox.put(mux.send(frame))

        code: ErrorCode = "internal_error"
        message = "the job ended without a result"
        try:
            with scope:
                await runner(request, peer, send)
        except InfernetError as exc:  # e.g. TransportError: what a stream reset would say
            log.warning("job %s on a session from %s: %s", job_id, peer, exc)
            code, message = exc.code, str(exc)
        except Exception:  # one job's bug must not end the other jobs on the session
            log.exception("job %s on a session from %s failed", job_id, peer)
        finally:
            del scopes[job_id]
        if mux.state(job_id) is not None:  # the runner ended without final or error
            if scope.cancel_called:
                code, message = "cancelled", "cancelled by the client"
            await outbox.put(mux.send(JobErrorFrame(job_id=job_id, code=code, message=message)))

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(outbox.run, stream)
            while True:
                try:
                    frame: Frame = await read_until(stream, ready, mux.receive_data, math.inf)
                except TransportError:  # the client closed the session: its jobs end too
                    break
                if isinstance(frame, Cancel):
                    if (scope := scopes.get(frame.job_id)) is not None:
                        log.info("job %s cancelled by client", frame.job_id)
                        scope.cancel()
                elif isinstance(frame, JobRequest):  # JobMux lets a client send nothing else
                    if len(scopes) >= max_jobs:
                        await outbox.put(mux.send(JobErrorFrame(
                            job_id=frame.job_id, code="no_capacity",
                            message=f"{max_jobs} jobs already run on this session")))
                        continue
                    scopes[frame.job_id] = trio.CancelScope()
                    nursery.start_soon(serve_one, frame, scopes[frame.job_id])
            nursery.cancel_scope.cancel()
        ok = True
    except BaseExceptionGroup as group:
        exc = lone_exception(group)
        if isinstance(exc, RemoteProtocolError):
            log.warning("job session from %s: protocol error: %s", peer, exc)
        elif isinstance(exc, InfernetError):
            log.info("job session from %s ended: %s", peer, exc)
        else:
            raise exc from None
    finally:
        await finish(stream, ok)


# --- client side --------------------------------------------------------------------------


class _Inbox:
    """Frames that arrived for one client job, until it reads them. Cheaper than a memory
    channel per job. Bounded: while a job holds `INBOX_FRAMES` unread frames the session's
    reader waits for it (`room`), which stalls the other jobs too, so sessions are for
    clients that consume every job promptly (the coordinator buffers each job's text)."""

    __slots__ = ("_frames", "_room", "_wakeup", "failure")

    def __init__(self) -> None:
        self._frames: deque[Frame] = deque()
        self._wakeup: trio.Event | None = None
        self._room: trio.Event | None = None
        self.failure: TransportError | None = None

    def put(self, frame: Frame) -> bool:
        """Hand ``frame`` to the job (or drop it: the job ended); False when it is full."""
        if self.failure is not None:
            return True
        if len(self._frames) >= INBOX_FRAMES:
            return False
        self._frames.append(frame)
        if self._wakeup is not None:
            self._wakeup.set()
        return True

    async def room(self) -> None:
        """Wait until the job reads a frame or ends."""
        self._room = trio.Event()
        await self._room.wait()

    def fail(self, failure: TransportError) -> None:
        """End the job: once its frames are read, `get` raises ``failure``."""
        if self.failure is None:
            self.failure = failure
        for event in (self._wakeup, self._room):
            if event is not None:
                event.set()

    async def get(self, timeout: float) -> Frame:
        """The next frame, waiting at most ``timeout``.

        Raises:
            TransportError: nothing within ``timeout`` (``timeout``), or the job failed.
        """
        while not self._frames:
            if self.failure is not None:
                raise self.failure
            self._wakeup = trio.Event()
            try:
                with trio.fail_after(timeout):
                    await self._wakeup.wait()
            except trio.TooSlowError:
                raise TransportError(f"no frame within {timeout:.0f}s", code="timeout") from None
            finally:
                self._wakeup = None
        if self._room is not None:
            self._room.set()
            self._room = None
        return self._frames.popleft()


class JobSession:
    """The client side of one session stream: open jobs on it with `open_job`.

    `run` must be running (in the owner's nursery) for jobs to make progress; once it
    returns, `closed` is true and every job still open on it has failed.
    """

    def __init__(self, stream: Any, peer_id: str) -> None:
        self.peer_id = peer_id
        self.closed = False
        self._stream = stream
        self._mux = JobMux("client")
        self._outbox = _Outbox()
        self._inbox: dict[str, _Inbox] = {}
        self._failure: TransportError | None = None
        self._stop = trio.CancelScope()

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Read and write the session until it breaks or `close` is called. Never raises."""
        ready = _reader(self._mux)
        failure = TransportError("the job session was closed")
        try:
            with self._stop:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._outbox.run, self._stream)
                    task_status.started()
                    while True:
                        frame: Frame = await read_until(self._stream, ready,
                                                        self._mux.receive_data, math.inf)
                        inbox = self._inbox.get(frame.job_id)
                        while inbox is not None and not inbox.put(frame):
                            await inbox.room()
        except BaseExceptionGroup as group:
            exc = lone_exception(group)
            if not isinstance(exc, InfernetError):
                raise exc from None
            log.info("job session to %s ended: %s", self.peer_id, exc)
            failure = (exc if isinstance(exc, TransportError) else TransportError(
                f"the node broke the job protocol: {exc}", code="protocol_error"))
        finally:
            self.closed = True
            self._failure = failure
            for inbox in self._inbox.values():
                inbox.fail(failure)
            await finish(self._stream, ok=False)

    def close(self) -> None:
        """Stop the session; its open jobs fail with ``node_disconnected``."""
        self._stop.cancel()

    @asynccontextmanager
    async def open_job(self, request: JobRequest, *,
                       read_timeout: float = 60.0) -> AsyncIterator[JobCall]:
        """Send ``request`` on this session; yield the call. Cancel-safe.

        On exit before the job's last frame the node is told to cancel it.

        Raises:
            TransportError: the session is closed or breaks.
        """
        if self.closed:
            raise self._failure or TransportError("the job session is closed")
        job_id = request.job_id
        data = self._mux.send(request)  # LocalProtocolError: the id is already in use here
        inbox = self._inbox[job_id] = _Inbox()
        try:
            await self._outbox.put(data)
            yield JobCall(inbox.get, read_timeout)
        finally:
            del self._inbox[job_id]
            inbox.fail(TransportError("the job ended"))  # frees a reader waiting for room
            if self._mux.state(job_id) is not None and not self.closed:
                self._outbox.put_nowait(self._mux.send(Cancel(job_id=job_id)))


class SessionPool:
    """One job session per node, opened on first use and replaced when it breaks.

    `serve` must run (in the owner's nursery) for sessions to run; a node that does not
    speak the session protocol is remembered (until `drop`) so callers can fall back to a
    stream per job.
    """

    def __init__(self, mesh: MeshHost) -> None:
        self._mesh = mesh
        self._sessions: dict[str, JobSession] = {}
        self._opening: dict[str, trio.Event] = {}
        self._unsupported: set[str] = set()
        self._nursery: trio.Nursery | None = None

    async def serve(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Host the sessions' tasks until cancelled; then close them all."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None
            self._sessions.clear()

    def speaks(self, peer_id: str) -> bool:
        """False once ``peer_id`` refused the session protocol (an older node)."""
        return peer_id not in self._unsupported

    def drop(self, peer_id: str) -> None:
        """The peer's connection closed: end its session and forget what it spoke."""
        self._unsupported.discard(peer_id)
        if (session := self._sessions.pop(peer_id, None)) is not None:
            session.close()

    def open_sessions(self) -> int:
        """Sessions running now."""
        return sum(not s.closed for s in self._sessions.values())

    @asynccontextmanager
    async def open_job(self, peer_id: str, request: JobRequest, *,
                       read_timeout: float = 60.0) -> AsyncIterator[JobCall]:
        """Run ``request`` on the node's session (opening one if needed). Cancel-safe.

        Raises:
            ProtocolNotOffered: the node does not speak the session protocol.
            TransportError: the node is unreachable, or the session breaks.
        """
        session = await self._session(peer_id)
        async with session.open_job(request, read_timeout=read_timeout) as call:
            yield call

    async def _session(self, peer_id: str) -> JobSession:
        while True:
            session = self._sessions.get(peer_id)
            if session is not None and not session.closed:
                return session
            opening = self._opening.get(peer_id)
            if opening is None:
                break
            await opening.wait()  # another job is opening it: share that one
        if self._nursery is None:
            raise TransportError("the session pool is not running")
        if peer_id in self._unsupported:
            raise ProtocolNotOffered(f"{peer_id} does not speak {JOB_MUX_PROTOCOL}")
        opening = self._opening[peer_id] = trio.Event()
        try:
            try:
                stream = await self._mesh.new_stream(peer_id, JOB_MUX_PROTOCOL)
            except ProtocolNotOffered:
                self._unsupported.add(peer_id)
                raise
            session = JobSession(stream, peer_id)
            await self._nursery.start(session.run)
            self._sessions[peer_id] = session
            return session
        finally:
            del self._opening[peer_id]
            opening.set()
