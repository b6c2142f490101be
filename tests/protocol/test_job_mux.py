"""The sans-IO job session (`infernet.protocol.job_mux`): many jobs, one byte stream."""

from __future__ import annotations

import pytest

from infernet.protocol.errors import LocalProtocolError, RemoteProtocolError
from infernet.protocol.frames import (
    Accepted,
    Cancel,
    Chunk,
    FinalFrame,
    Frame,
    JobErrorFrame,
    JobRequest,
    Message,
    NeedData,
    encode_frame,
)
from infernet.protocol.job_mux import JobMux


def _request(job_id: str) -> JobRequest:
    return JobRequest(job_id=job_id, model="m", messages=(Message(role="user", content="hi"),))


def _drain(mux: JobMux) -> list[Frame]:
    frames: list[Frame] = []
    while not isinstance(event := mux.next_event(), NeedData):
        frames.append(event)
    return frames


def _pair() -> tuple[JobMux, JobMux]:
    return JobMux("client"), JobMux("node")


def test_interleaved_jobs_reach_the_right_job_in_order() -> None:
    client, node = _pair()
    node.receive_data(client.send(_request("a")) + client.send(_request("b")))
    assert [f.job_id for f in _drain(node)] == ["a", "b"]
    wire = b"".join(node.send(f) for f in (
        Accepted(job_id="b"), Accepted(job_id="a"), Chunk(job_id="a", text="x"),
        Chunk(job_id="b", text="y"), FinalFrame(job_id="b", prompt_tokens=1,
                                                completion_tokens=1),
        Chunk(job_id="a", text="z"), FinalFrame(job_id="a", prompt_tokens=1,
                                                completion_tokens=2)))
    assert node.live == 0
    client.receive_data(wire[:7])  # byte-by-byte boundaries do not matter
    got = _drain(client)
    client.receive_data(wire[7:])
    got += _drain(client)
    assert [(type(f).__name__, f.job_id) for f in got] == [
        ("Accepted", "b"), ("Accepted", "a"), ("Chunk", "a"), ("Chunk", "b"),
        ("FinalFrame", "b"), ("Chunk", "a"), ("FinalFrame", "a")]
    assert client.live == 0


def test_a_job_id_cannot_run_twice_at_once_but_can_be_reused_after_it_ended() -> None:
    client, node = _pair()
    node.receive_data(client.send(_request("a")))
    _drain(node)
    with pytest.raises(LocalProtocolError):
        client.send(_request("a"))
    client.receive_data(node.send(JobErrorFrame(job_id="a", code="no_capacity")))
    assert [f.job_id for f in _drain(client)] == ["a"]
    node.receive_data(client.send(_request("a")))  # ended on both sides: free again
    assert [f.job_id for f in _drain(node)] == ["a"]


def test_a_node_refuses_a_duplicate_request_as_a_protocol_error() -> None:
    node = JobMux("node")
    node.receive_data(encode_frame(_request("a")) + encode_frame(_request("a")))
    assert _request("a") == node.next_event()
    with pytest.raises(RemoteProtocolError):
        node.next_event()
    with pytest.raises(RemoteProtocolError):  # sticky: the byte stream is not trusted again
        node.receive_data(b"")


def test_frames_after_a_client_cancel_are_ignored() -> None:
    client, node = _pair()
    node.receive_data(client.send(_request("a")))
    _drain(node)
    late = node.send(Accepted(job_id="a")) + node.send(Chunk(job_id="a", text="x"))
    node.receive_data(client.send(Cancel(job_id="a")))
    assert [type(f) for f in _drain(node)] == [Cancel]
    late += node.send(JobErrorFrame(job_id="a", code="cancelled"))
    assert client.live == 0  # the client forgot the job when it cancelled
    client.receive_data(late)
    assert _drain(client) == []
    assert client.ignored == 3
    assert node.live == 0


def test_a_cancel_that_crosses_the_final_frame_is_ignored() -> None:
    client, node = _pair()
    node.receive_data(client.send(_request("a")))
    _drain(node)
    node.send(Accepted(job_id="a"))
    node.send(FinalFrame(job_id="a", prompt_tokens=1, completion_tokens=1))
    node.receive_data(client.send(Cancel(job_id="a")))
    assert _drain(node) == []
    assert node.ignored == 1


@pytest.mark.parametrize("frame", [
    Accepted(job_id="ghost"),
    Chunk(job_id="ghost", text="x"),
    FinalFrame(job_id="ghost", prompt_tokens=0, completion_tokens=0),
])
def test_a_node_rejects_node_frames_from_its_client(frame: Frame) -> None:
    node = JobMux("node")
    node.receive_data(encode_frame(frame))
    with pytest.raises(RemoteProtocolError):
        node.next_event()


def test_a_client_rejects_a_request_from_the_node() -> None:
    client = JobMux("client")
    client.receive_data(encode_frame(_request("a")))
    with pytest.raises(RemoteProtocolError):
        client.next_event()


def test_an_illegal_order_within_one_job_breaks_the_session() -> None:
    client, node = _pair()
    node.receive_data(client.send(_request("a")))
    _drain(node)
    # a chunk before accepted: illegal for job a
    client.receive_data(encode_frame(Chunk(job_id="a", text="x")))
    with pytest.raises(RemoteProtocolError):
        client.next_event()


def test_a_side_cannot_send_for_a_job_it_does_not_track() -> None:
    client, node = _pair()
    with pytest.raises(LocalProtocolError):
        node.send(Accepted(job_id="nobody"))
    with pytest.raises(LocalProtocolError):
        client.send(Cancel(job_id="nobody"))


def test_a_frame_too_big_to_encode_changes_no_state() -> None:
    client = JobMux("client")
    huge = JobRequest(job_id="a", model="m",
                      messages=(Message(role="user", content="x" * (2 << 20)),))
    with pytest.raises(LocalProtocolError):
        client.send(huge)
    assert client.live == 0
    client.send(_request("a"))
    assert client.state("a") == "requested"


def test_garbage_breaks_the_session() -> None:
    node = JobMux("node")
    node.receive_data(b"\x00\x00\x00\x03\xff\xff\xff")
    with pytest.raises(RemoteProtocolError):
        node.next_event()
