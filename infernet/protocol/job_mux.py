"""Many jobs on one stream: the per-side state of a `/infernet/job-mux/1.0.0` session.

Owns: which job each frame on a shared stream belongs to, the per-job rules (one
`JobStream` per live job, the same table as a one-job stream) and when a job's entry ends.
Spec: ``specs/job-protocol.md`` §9. Sans-IO like `JobStream`: `send` returns bytes to
write, `receive_data` buffers input, `next_event` returns a frame or `NEED_DATA`.

Invariants:
- A job lives from its ``request`` until the node's ``final`` or ``error`` for it; a
  client also forgets a job as soon as it sends ``cancel`` (it stops caring; the node
  still ends the job with a terminal frame, which the client then ignores).
- Frames for a job id this side does not track are ignored when they can be late: a
  node's frames after the client cancelled, or a client's ``cancel`` that crossed the
  node's last frame. Anything else out of place is a `RemoteProtocolError`, and the
  session is then in the sticky error state: one bad frame ends every job on it, since
  the byte stream can no longer be trusted.
"""

from __future__ import annotations

from typing import Final

from infernet.protocol.errors import LocalProtocolError, RemoteProtocolError
from infernet.protocol.frames import (
    NEED_DATA,
    Cancel,
    FinalFrame,
    Frame,
    FrameDecoder,
    JobErrorFrame,
    JobRequest,
    NeedData,
    encode_frame,
)
from infernet.protocol.job_stream import JobStream, Role, State

__all__ = ["JobMux"]

_TERMINAL: Final = (FinalFrame, JobErrorFrame)
_ENDS_ON_SEND: Final = (FinalFrame, JobErrorFrame, Cancel)  # cancel: the client stops caring


class JobMux:
    """One side of a multiplexed job session."""

    def __init__(self, role: Role) -> None:
        self.role: Role = role
        self.ignored = 0  # late frames dropped (see the module's invariants)
        self._decoder = FrameDecoder()
        self._jobs: dict[str, JobStream] = {}
        self._error = False

    @property
    def live(self) -> int:
        """Jobs this side still tracks."""
        return len(self._jobs)

    def state(self, job_id: str) -> State | None:
        """The job's state, or None once it ended here (or never started)."""
        js = self._jobs.get(job_id)
        return js.state if js is not None else None

    def send(self, frame: Frame) -> bytes:
        """Check that this side may send `frame` now; return its bytes.

        Raises:
            LocalProtocolError: the frame is illegal for this role, this job's state, or
                names a job that is not live (or, for a request, one that already is).
        """
        job_id = frame.job_id
        js = self._jobs.get(job_id)
        if isinstance(frame, JobRequest):
            if js is not None:
                raise LocalProtocolError(f"job {job_id!r} is already running on this session")
            js = JobStream(self.role)
        elif js is None:
            raise LocalProtocolError(f"no job {job_id!r} on this session")
        data = encode_frame(frame)  # first: a frame too big to encode changes no state
        js.sent(frame)
        if isinstance(frame, JobRequest):
            self._jobs[job_id] = js
        elif isinstance(frame, _ENDS_ON_SEND):
            del self._jobs[job_id]
        return data

    def receive_data(self, data: bytes) -> None:
        """Buffer bytes read from the peer.

        Raises:
            RemoteProtocolError: more than a frame may hold; the session is then broken.
        """
        self._check()
        try:
            self._decoder.receive_data(data)
        except RemoteProtocolError:
            self._error = True
            raise

    def next_event(self) -> Frame | NeedData:
        """Return the peer's next frame that concerns a live job, or `NEED_DATA`.

        Raises:
            RemoteProtocolError: garbage, an oversized frame or an illegal frame; the
                session is then in the sticky error state.
        """
        self._check()
        try:
            while True:
                frame = self._decoder.next_frame()
                if isinstance(frame, NeedData):
                    return NEED_DATA
                if self._admit(frame):
                    return frame
                self.ignored += 1
        except RemoteProtocolError:
            self._error = True
            raise

    def _admit(self, frame: Frame) -> bool:
        job_id = frame.job_id
        js = self._jobs.get(job_id)
        if isinstance(frame, JobRequest):
            if js is not None:
                raise RemoteProtocolError(f"job {job_id!r} is already running on this session")
            if self.role != "node":
                raise RemoteProtocolError("a node may not send a request frame")
            js = self._jobs[job_id] = JobStream(self.role)
        elif js is None:
            if self.role == "client" or isinstance(frame, Cancel):
                return False  # late: the job ended on this side first
            raise RemoteProtocolError(f"{type(frame).__name__} frame for unknown job {job_id!r}")
        js.received(frame)
        if isinstance(frame, _TERMINAL):
            del self._jobs[job_id]
        return True

    def _check(self) -> None:
        if self._error:
            raise RemoteProtocolError("the session already failed")
