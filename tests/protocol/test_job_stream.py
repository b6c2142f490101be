"""Tests for infernet.protocol.job_stream: the client and node state machines of one job."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import get_args

import pytest

from infernet.protocol.errors import LocalProtocolError, RemoteProtocolError
from infernet.protocol.frames import (
    NEED_DATA,
    Accepted,
    Cancel,
    Chunk,
    FinalFrame,
    Frame,
    JobErrorFrame,
    JobRequest,
    Message,
    encode_frame,
)
from infernet.protocol.job_stream import TRANSITIONS, JobStream, Role, State

JOB = "job-42"
REQUEST = JobRequest(
    job_id=JOB, model="gemma3:270m", messages=(Message(role="user", content="Hi"),),
    max_tokens=8,
)
ACCEPTED = Accepted(job_id=JOB, node_pubkey="ab" * 32, model="gemma3:270m")
FINAL = FinalFrame(job_id=JOB, prompt_tokens=3, completion_tokens=2, finish_reason="stop")
ERROR = JobErrorFrame(job_id=JOB, code="backend_unavailable", message="engine died")
CANCEL = Cancel(job_id=JOB)


def chunk(text: str) -> Chunk:
    return Chunk(job_id=JOB, text=text)


# One frame of each type, for the exhaustive table tests.
ONE_OF_EACH: dict[type[Frame], Frame] = {
    JobRequest: REQUEST,
    Accepted: ACCEPTED,
    Chunk: chunk("x"),
    FinalFrame: FINAL,
    JobErrorFrame: ERROR,
    Cancel: CANCEL,
}
SENDER: dict[type[Frame], Role] = {
    JobRequest: "client",
    Cancel: "client",
    Accepted: "node",
    Chunk: "node",
    FinalFrame: "node",
    JobErrorFrame: "node",
}
STATES: tuple[State, ...] = get_args(State)


def deliver(data: bytes, receiver: JobStream, frame: Frame) -> None:
    """Feed ``data`` to ``receiver`` and assert it decodes exactly ``frame``, then nothing."""
    assert receiver.next_event() is NEED_DATA
    receiver.receive_data(data)
    got = receiver.next_event()
    assert got == frame
    assert type(got) is type(frame)
    assert receiver.next_event() is NEED_DATA


@dataclass
class JobStreamPair:
    """A client and a node `JobStream` wired back to back, with no I/O in between."""

    client: JobStream = field(default_factory=lambda: JobStream("client"))
    node: JobStream = field(default_factory=lambda: JobStream("node"))

    def client_sends(self, frame: Frame) -> None:
        """The client sends ``frame``; the node must decode exactly that frame."""
        deliver(self.client.send(frame), self.node, frame)

    def node_sends(self, frame: Frame) -> None:
        """The node sends ``frame``; the client must decode exactly that frame."""
        deliver(self.node.send(frame), self.client, frame)

    @property
    def states(self) -> tuple[State, State]:
        return self.client.state, self.node.state


def pair_in(state: State) -> JobStreamPair:
    """A pair whose two sides both reached ``state`` through legal frames."""
    pair = JobStreamPair()
    steps: dict[State, list[tuple[Role, Frame]]] = {
        "idle": [],
        "requested": [("client", REQUEST)],
        "streaming": [("client", REQUEST), ("node", ACCEPTED)],
        "done": [("client", REQUEST), ("node", ACCEPTED), ("node", FINAL)],
        "error": [("client", REQUEST), ("node", ERROR)],
        "cancelled": [("client", REQUEST), ("client", CANCEL)],
    }
    for role, frame in steps[state]:
        (pair.client_sends if role == "client" else pair.node_sends)(frame)
    assert pair.states == (state, state)
    return pair


def side(pair: JobStreamPair, role: Role) -> JobStream:
    return pair.client if role == "client" else pair.node


def other(role: Role) -> Role:
    return "node" if role == "client" else "client"


# --- the helper itself -------------------------------------------------------------------


def test_pair_helper_detects_a_frame_that_differs() -> None:
    pair = JobStreamPair()
    data = pair.client.send(REQUEST)
    with pytest.raises(AssertionError):
        deliver(data, pair.node, JobRequest(job_id=JOB, model="other", messages=()))


def test_new_streams_are_idle_without_a_job() -> None:
    pair = JobStreamPair()
    assert pair.states == ("idle", "idle")
    assert (pair.client.role, pair.node.role) == ("client", "node")
    assert pair.client.job_id is None
    assert pair.node.job_id is None


# --- whole conversations ----------------------------------------------------------------


def test_happy_path() -> None:
    pair = JobStreamPair()
    pair.client_sends(REQUEST)
    assert pair.states == ("requested", "requested")
    assert pair.client.job_id == pair.node.job_id == JOB

    pair.node_sends(ACCEPTED)
    assert pair.states == ("streaming", "streaming")
    for text in ["Hel", "lo", "", " ✓"]:
        pair.node_sends(chunk(text))
        assert pair.states == ("streaming", "streaming")

    pair.node_sends(FINAL)
    assert pair.states == ("done", "done")


def test_final_right_after_accepted() -> None:
    pair = pair_in("streaming")
    pair.node_sends(FINAL)
    assert pair.states == ("done", "done")


def test_node_refuses_before_accepting() -> None:
    pair = pair_in("requested")
    pair.node_sends(JobErrorFrame(job_id=JOB, code="no_capacity"))
    assert pair.states == ("error", "error")


def test_node_fails_mid_stream() -> None:
    pair = pair_in("streaming")
    pair.node_sends(chunk("partial"))
    pair.node_sends(ERROR)
    assert pair.states == ("error", "error")


@pytest.mark.parametrize("start", ["requested", "streaming"])
def test_client_cancels(start: State) -> None:
    pair = pair_in(start)
    pair.client_sends(CANCEL)
    assert pair.states == ("cancelled", "cancelled")


@pytest.mark.parametrize(
    "late", [[chunk("a"), chunk("b"), FINAL], [chunk("a"), ERROR], [FINAL], [ERROR]],
    ids=["chunks then final", "chunk then error", "final", "error"],
)
def test_node_frames_after_a_cancel_are_still_accepted(late: list[Frame]) -> None:
    pair = pair_in("streaming")
    pair.client_sends(CANCEL)
    for frame in late:
        pair.node_sends(frame)
        assert pair.states == ("cancelled", "cancelled")


def test_cancel_racing_with_a_chunk_in_flight() -> None:
    pair = pair_in("streaming")
    in_flight = pair.node.send(chunk("late"))  # written by the node before the cancel arrives
    pair.client_sends(CANCEL)
    deliver(in_flight, pair.client, chunk("late"))
    assert pair.states == ("cancelled", "cancelled")


def test_cancel_racing_with_accepted_in_flight() -> None:
    pair = pair_in("requested")
    in_flight = pair.node.send(ACCEPTED)  # the node accepts before it sees the cancel
    pair.client_sends(CANCEL)
    deliver(in_flight, pair.client, ACCEPTED)
    assert pair.client.state == "cancelled"


# --- illegal sends: LocalProtocolError, state unchanged ----------------------------------


ILLEGAL_SENDS: list[tuple[State, Role, Frame]] = [
    ("idle", "node", ACCEPTED),
    ("requested", "node", chunk("too early")),
    ("requested", "node", FINAL),
    ("requested", "client", ACCEPTED),
    ("streaming", "client", chunk("not mine")),
    ("streaming", "client", FINAL),
    ("streaming", "node", ACCEPTED),
    ("requested", "client", REQUEST),
    ("idle", "node", REQUEST),
    ("idle", "client", CANCEL),
    ("done", "client", CANCEL),
    ("done", "node", chunk("after the end")),
    ("error", "node", FINAL),
    ("cancelled", "client", CANCEL),
]


@pytest.mark.parametrize(
    ("state", "role", "frame"), ILLEGAL_SENDS,
    ids=[f"{r}-{type(f).__name__}-in-{s}" for s, r, f in ILLEGAL_SENDS],
)
def test_illegal_send_is_a_local_protocol_error(state: State, role: Role, frame: Frame) -> None:
    pair = pair_in(state)
    js = side(pair, role)
    with pytest.raises(LocalProtocolError):
        js.send(frame)
    assert js.state == state  # a refused send changes nothing


def test_send_for_another_job_is_a_local_protocol_error() -> None:
    pair = pair_in("requested")
    with pytest.raises(LocalProtocolError, match="other-job"):
        pair.node.send(Accepted(job_id="other-job"))
    with pytest.raises(LocalProtocolError, match="other-job"):
        pair.client.send(Cancel(job_id="other-job"))
    assert pair.states == ("requested", "requested")
    pair.node_sends(ACCEPTED)  # the right job id still works


# --- illegal receives: RemoteProtocolError, sticky error --------------------------------


ILLEGAL_RECEIVES: list[tuple[State, Role, Frame]] = [
    ("requested", "client", chunk("before accepted")),
    ("requested", "client", FINAL),
    ("idle", "node", CANCEL),
    ("idle", "node", chunk("x")),
    ("requested", "node", ACCEPTED),
    ("streaming", "client", REQUEST),
    ("requested", "node", REQUEST),
    ("streaming", "client", ACCEPTED),
    ("done", "client", chunk("after final")),
    ("done", "node", REQUEST),
]


@pytest.mark.parametrize(
    ("state", "role", "frame"), ILLEGAL_RECEIVES,
    ids=[f"{r}-gets-{type(f).__name__}-in-{s}" for s, r, f in ILLEGAL_RECEIVES],
)
def test_illegal_receive_is_a_remote_protocol_error_and_sticky(
    state: State, role: Role, frame: Frame
) -> None:
    pair = pair_in(state)
    js = side(pair, role)
    js.receive_data(encode_frame(frame))  # bypasses the peer's own state machine
    with pytest.raises(RemoteProtocolError):
        js.next_event()
    assert js.state == "error"
    assert_stuck_in_error(js)


def assert_stuck_in_error(js: JobStream) -> None:
    """Nothing moves a stream out of the error state, in either direction."""
    for frame in ONE_OF_EACH.values():
        js.receive_data(encode_frame(frame))
        with pytest.raises(RemoteProtocolError):
            js.next_event()
        assert js.state == "error"
        with pytest.raises(LocalProtocolError):
            js.send(frame)
        assert js.state == "error"


@pytest.mark.parametrize("role", ["client", "node"])
def test_garbage_is_a_remote_protocol_error_and_sticky(role: Role) -> None:
    js = JobStream(role)
    js.receive_data(b"\x00\x00\x00\x01\xc1")
    with pytest.raises(RemoteProtocolError):
        js.next_event()
    assert js.state == "error"
    assert_stuck_in_error(js)


def test_oversized_frame_is_a_remote_protocol_error_and_sticky() -> None:
    js = JobStream("node")
    js.receive_data(b"\xff\xff\xff\xff")
    with pytest.raises(RemoteProtocolError):
        js.next_event()
    assert js.state == "error"


def test_invalid_utf8_frame_is_a_remote_protocol_error_and_sticky() -> None:
    js = JobStream("node")
    body = b"\x82\xa4type\xa6cancel\xa6job_id\xa2\xff\xfe"
    js.receive_data(len(body).to_bytes(4, "big") + body)
    with pytest.raises(RemoteProtocolError):
        js.next_event()
    assert js.state == "error"


@pytest.mark.parametrize(
    ("state", "role", "frame"),
    [
        ("requested", "client", Accepted(job_id="other-job")),
        ("streaming", "client", Chunk(job_id="other-job", text="x")),
        ("streaming", "client", FinalFrame(job_id="", prompt_tokens=1, completion_tokens=1)),
        ("requested", "node", Cancel(job_id="other-job")),
        ("cancelled", "client", Chunk(job_id="other-job", text="x")),
    ],
    ids=["accepted", "chunk", "final-empty-id", "cancel", "chunk-after-cancel"],
)
def test_frame_for_another_job_is_a_remote_protocol_error(
    state: State, role: Role, frame: Frame
) -> None:
    pair = pair_in(state)
    js = side(pair, role)
    js.receive_data(encode_frame(frame))
    with pytest.raises(RemoteProtocolError, match="job"):
        js.next_event()
    assert js.state == "error"
    assert js.job_id == JOB


def test_receive_side_learns_the_job_id_from_the_request() -> None:
    node = JobStream("node")
    node.receive_data(encode_frame(REQUEST))
    assert node.next_event() == REQUEST
    assert node.job_id == JOB
    node.receive_data(encode_frame(Cancel(job_id="job-43")))
    with pytest.raises(RemoteProtocolError):
        node.next_event()


def test_partial_frame_returns_need_data_without_changing_state() -> None:
    pair = pair_in("requested")
    data = pair.node.send(ACCEPTED)
    pair.client.receive_data(data[:-1])
    assert pair.client.next_event() is NEED_DATA
    assert pair.states == ("requested", "streaming")
    pair.client.receive_data(data[-1:])
    assert pair.client.next_event() == ACCEPTED
    assert pair.states == ("streaming", "streaming")


def test_two_frames_in_one_read_both_advance_the_state() -> None:
    pair = pair_in("requested")
    pair.client.receive_data(pair.node.send(ACCEPTED) + pair.node.send(chunk("hi")))
    assert pair.client.next_event() == ACCEPTED
    assert pair.client.next_event() == chunk("hi")
    assert pair.client.next_event() is NEED_DATA
    assert pair.client.state == "streaming"


# --- the table, exhaustively -------------------------------------------------------------


def test_done_and_error_are_terminal() -> None:
    assert {state for state, _ in TRANSITIONS}.isdisjoint({"done", "error"})


def test_every_transition_names_a_frame_type_and_a_known_state() -> None:
    for (state, ftype), nxt in TRANSITIONS.items():
        assert state in STATES
        assert nxt in STATES
        assert ftype in ONE_OF_EACH


CASES = list(itertools.product(STATES, ONE_OF_EACH, ["client", "node"]))


@pytest.mark.parametrize(
    ("state", "ftype", "role"), CASES,
    ids=[f"{r}-{t.__name__}-in-{s}" for s, t, r in CASES],
)
def test_send_and_receive_follow_the_table(
    state: State, ftype: type[Frame], role: Role
) -> None:
    frame = ONE_OF_EACH[ftype]
    pair = pair_in(state)
    sender, receiver = side(pair, role), side(pair, other(role))
    nxt = TRANSITIONS.get((state, ftype)) if SENDER[ftype] == role else None
    if nxt is None:
        with pytest.raises(LocalProtocolError):
            sender.send(frame)
        assert sender.state == state
        receiver.receive_data(encode_frame(frame))
        with pytest.raises(RemoteProtocolError):
            receiver.next_event()
        assert receiver.state == "error"
    else:
        (pair.client_sends if role == "client" else pair.node_sends)(frame)
        assert pair.states == (nxt, nxt)
