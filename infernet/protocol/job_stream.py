"""The per-side state machine of one job on `/infernet/job/1.0.0` (modelled on h11).

Owns: which frame may follow which, for the client and the node role. Spec:
``specs/job-protocol.md`` §"States". Sans-IO: `send` returns bytes to write,
`receive_data` buffers input, `next_event` returns a frame or `NEED_DATA`.

States: idle → requested → streaming → done | error | cancelled. The error state is sticky.
A frame for another job id is a protocol error.
"""

from __future__ import annotations

from typing import Final, Literal

from infernet.protocol.errors import LocalProtocolError, RemoteProtocolError
from infernet.protocol.frames import (
    NEED_DATA,
    Accepted,
    Cancel,
    Chunk,
    FinalFrame,
    Frame,
    FrameDecoder,
    JobErrorFrame,
    JobRequest,
    NeedData,
    encode_frame,
)

__all__ = ["TRANSITIONS", "JobStream", "Role", "State"]

Role = Literal["client", "node"]
State = Literal["idle", "requested", "streaming", "done", "error", "cancelled"]

# (state, frame type) -> next state. Who may send which frame is in _SENDERS.
TRANSITIONS: Final[dict[tuple[State, type[Frame]], State]] = {
    ("idle", JobRequest): "requested",
    ("requested", Accepted): "streaming",
    ("requested", JobErrorFrame): "error",
    ("requested", Cancel): "cancelled",
    ("streaming", Chunk): "streaming",
    ("streaming", FinalFrame): "done",
    ("streaming", JobErrorFrame): "error",
    ("streaming", Cancel): "cancelled",
    # A node may still accept, finish or report after a cancel raced with its frames.
    # After its final frame a node stops reading, so a cancel crossing it is never seen.
    ("cancelled", Accepted): "cancelled",
    ("cancelled", Chunk): "cancelled",
    ("cancelled", FinalFrame): "cancelled",
    ("cancelled", JobErrorFrame): "cancelled",
}

_SENDERS: Final[dict[type[Frame], Role]] = {
    JobRequest: "client",
    Cancel: "client",
    Accepted: "node",
    Chunk: "node",
    FinalFrame: "node",
    JobErrorFrame: "node",
}


class JobStream:
    """One side of one job's conversation."""

    def __init__(self, role: Role) -> None:
        self.role: Role = role
        self.state: State = "idle"
        self.job_id: str | None = None
        self._decoder = FrameDecoder()

    def _advance(self, frame: Frame, sender: Role, exc: type[Exception]) -> None:
        if _SENDERS[type(frame)] != sender:
            raise exc(f"{sender} may not send a {type(frame).__name__} frame")
        if self.job_id is not None and frame.job_id != self.job_id:
            raise exc(f"frame for job {frame.job_id!r} on the stream of job {self.job_id!r}")
        nxt = TRANSITIONS.get((self.state, type(frame)))
        if nxt is None:
            raise exc(f"{type(frame).__name__} frame not allowed in state {self.state}")
        if isinstance(frame, JobRequest):
            self.job_id = frame.job_id
        self.state = nxt

    def send(self, frame: Frame) -> bytes:
        """Check that this side may send `frame` now; return its bytes.

        Raises:
            LocalProtocolError: the frame is illegal for this role or state.
        """
        self.sent(frame)
        return encode_frame(frame)

    def sent(self, frame: Frame) -> None:
        """Check that this side may send `frame` now and advance (the caller encodes it).

        Raises:
            LocalProtocolError: the frame is illegal for this role or state.
        """
        self._advance(frame, self.role, LocalProtocolError)

    def received(self, frame: Frame) -> None:
        """Advance on a frame the peer sent that was decoded elsewhere (a shared session,
        `infernet.protocol.job_mux`).

        Raises:
            RemoteProtocolError: the frame is illegal here; the state is then ``error``.
        """
        try:
            self._advance(frame, "node" if self.role == "client" else "client",
                          RemoteProtocolError)
        except RemoteProtocolError:
            self.state = "error"
            raise

    def receive_data(self, data: bytes) -> None:
        """Buffer bytes read from the peer.

        Raises:
            RemoteProtocolError: the peer sent more than a frame may hold; the stream is
                then in the sticky error state.
        """
        try:
            self._decoder.receive_data(data)
        except RemoteProtocolError:
            self.state = "error"
            raise

    def next_event(self) -> Frame | NeedData:
        """Return the peer's next frame, or `NEED_DATA`.

        Raises:
            RemoteProtocolError: garbage, an oversized frame or an illegal transition;
                the stream is then in the sticky error state.
        """
        try:
            frame = self._decoder.next_frame()
            if frame is NEED_DATA or isinstance(frame, NeedData):
                return NEED_DATA
            peer: Role = "node" if self.role == "client" else "client"
            self._advance(frame, peer, RemoteProtocolError)
        except RemoteProtocolError:
            self.state = "error"
            raise
        return frame
