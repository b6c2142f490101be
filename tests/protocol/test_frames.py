"""Tests for infernet.protocol.frames: encoding, length-prefixed decoding and its bounds."""

from __future__ import annotations

import contextlib
import itertools
from typing import Any, get_args

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from infernet.protocol.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from infernet.protocol.frames import (
    MAX_FRAME_SIZE,
    NEED_DATA,
    Accepted,
    Cancel,
    Chunk,
    FinalFrame,
    Frame,
    FrameDecoder,
    JobErrorFrame,
    JobRequest,
    Message,
    NeedData,
    encode_frame,
)

FULL_REQUEST = JobRequest(
    job_id="job-1",
    model="gemma3:270m",
    messages=(
        Message(role="system", content="Be brief."),
        Message(role="user", content="Wie geht's? 你好 🚀"),
    ),
    max_tokens=64,
    temperature=0.7,
    top_p=0.9,
    stop=("\n\n", "User:"),
    seed=42,
    client_pubkey="ab" * 32,
)

FRAMES: list[Frame] = [
    FULL_REQUEST,
    JobRequest(job_id="job-2", model="m", messages=(Message(role="user", content=""),)),
    Accepted(job_id="job-1", node_pubkey="cd" * 32, model="gemma3:270m"),
    Accepted(job_id="job-1"),
    Chunk(job_id="job-1", text="Hello"),
    Chunk(job_id="job-1", text=""),
    Chunk(job_id="job-1", text="ünïcödé ✓ \x00 and a NUL"),
    FinalFrame(
        job_id="job-1",
        prompt_tokens=12,
        completion_tokens=34,
        finish_reason="length",
        ttft_ms=12.5,
        tokens_per_s=45.25,
    ),
    FinalFrame(job_id="job-1", prompt_tokens=0, completion_tokens=0),
    *(JobErrorFrame(job_id="job-1", code=code, message=f"{code}!") for code in get_args(ErrorCode)),
    Cancel(job_id="job-1"),
]

TAGS: dict[type[Frame], str] = {
    JobRequest: "request",
    Accepted: "accepted",
    Chunk: "chunk",
    FinalFrame: "final",
    JobErrorFrame: "error",
    Cancel: "cancel",
}


def frame_id(frame: Frame) -> str:
    extra = frame.code if isinstance(frame, JobErrorFrame) else ""
    return f"{type(frame).__name__}{extra}"


def framed(body: bytes) -> bytes:
    """``body`` behind a correct 4-byte big-endian length prefix."""
    return len(body).to_bytes(4, "big") + body


def drain(decoder: FrameDecoder) -> list[Frame]:
    """Every complete frame the decoder holds, in order."""
    out: list[Frame] = []
    while not isinstance(ev := decoder.next_frame(), NeedData):
        out.append(ev)
    return out


def decode_one(body: bytes) -> Frame | NeedData:
    decoder = FrameDecoder()
    decoder.receive_data(framed(body))
    return decoder.next_frame()


# --- round trips ------------------------------------------------------------------------


def test_every_frame_type_is_covered() -> None:
    assert set(get_args(Frame)) == {type(f) for f in FRAMES} == set(TAGS)


@pytest.mark.parametrize("frame", FRAMES, ids=frame_id)
def test_round_trip(frame: Frame) -> None:
    decoder = FrameDecoder()
    decoder.receive_data(encode_frame(frame))
    got = decoder.next_frame()
    assert got == frame
    assert type(got) is type(frame)
    assert decoder.next_frame() is NEED_DATA
    assert decoder.buffered == 0


@pytest.mark.parametrize("frame", FRAMES, ids=frame_id)
def test_wire_layout_is_prefix_then_msgpack_map_with_stable_tag(frame: Frame) -> None:
    data = encode_frame(frame)
    assert int.from_bytes(data[:4], "big") == len(data) - 4
    body = msgspec.msgpack.decode(data[4:])
    assert body["type"] == TAGS[type(frame)]
    assert body["job_id"] == frame.job_id


@pytest.mark.parametrize("frame", FRAMES, ids=frame_id)
def test_byte_at_a_time(frame: Frame) -> None:
    data = encode_frame(frame)
    decoder = FrameDecoder()
    for i, byte in enumerate(data[:-1]):
        decoder.receive_data(bytes([byte]))
        assert decoder.next_frame() is NEED_DATA
        assert decoder.buffered == i + 1
    decoder.receive_data(data[-1:])
    assert decoder.next_frame() == frame
    assert decoder.buffered == 0


def test_several_frames_in_one_buffer() -> None:
    decoder = FrameDecoder()
    decoder.receive_data(b"".join(encode_frame(f) for f in FRAMES))
    assert drain(decoder) == FRAMES
    assert decoder.buffered == 0


def test_frames_and_a_partial_one_leave_the_partial_buffered() -> None:
    first, second = encode_frame(FRAMES[2]), encode_frame(FRAMES[4])
    decoder = FrameDecoder()
    decoder.receive_data(first + second[:5])
    assert drain(decoder) == [FRAMES[2]]
    assert decoder.buffered == 5
    decoder.receive_data(second[5:])
    assert drain(decoder) == [FRAMES[4]]


@settings(max_examples=200, deadline=None, database=None)
@given(st.lists(st.integers(min_value=0), max_size=20))
def test_any_split_of_a_stream_yields_the_same_frames(cuts: list[int]) -> None:
    stream = b"".join(encode_frame(f) for f in FRAMES)
    points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    decoder = FrameDecoder()
    got: list[Frame] = []
    for start, end in itertools.pairwise(points):
        decoder.receive_data(stream[start:end])
        got.extend(drain(decoder))
    assert got == FRAMES
    assert decoder.buffered == 0


def test_need_data_repr() -> None:
    assert repr(NEED_DATA) == "NEED_DATA"
    assert FrameDecoder().next_frame() is NEED_DATA


# --- decoding: tolerance and defaults ---------------------------------------------------


def test_unknown_extra_fields_are_ignored() -> None:
    body = msgspec.msgpack.encode(
        {
            "type": "chunk",
            "job_id": "job-1",
            "future_field": {"nested": [1, 2.5, "x", None, b"\x00"]},
            "text": "hi",
            "another": 7,
        }
    )
    assert decode_one(body) == Chunk(job_id="job-1", text="hi")


def test_missing_optional_fields_take_their_defaults() -> None:
    body = msgspec.msgpack.encode(
        {"type": "final", "job_id": "j", "prompt_tokens": 3, "completion_tokens": 4}
    )
    got = decode_one(body)
    assert got == FinalFrame(job_id="j", prompt_tokens=3, completion_tokens=4)
    assert isinstance(got, FinalFrame)
    assert (got.finish_reason, got.ttft_ms, got.tokens_per_s) == ("stop", 0.0, 0.0)


# --- decoding: hostile input -----------------------------------------------------------


def test_oversized_length_prefix_is_rejected_before_the_body_arrives() -> None:
    decoder = FrameDecoder()
    decoder.receive_data((MAX_FRAME_SIZE + 1).to_bytes(4, "big"))
    with pytest.raises(RemoteProtocolError, match="exceeds limit"):
        decoder.next_frame()


def test_custom_max_frame_size() -> None:
    chunk = encode_frame(Chunk(job_id="j", text="x" * 100))
    decoder = FrameDecoder(max_frame_size=len(chunk) - 4)
    decoder.receive_data(chunk)
    assert decoder.next_frame() == Chunk(job_id="j", text="x" * 100)

    small = FrameDecoder(max_frame_size=len(chunk) - 5)
    small.receive_data(chunk)
    with pytest.raises(RemoteProtocolError):
        small.next_frame()


def test_zero_length_frame_is_rejected() -> None:
    decoder = FrameDecoder()
    decoder.receive_data(bytes(4))
    with pytest.raises(RemoteProtocolError):
        decoder.next_frame()


WRONG_SHAPES: dict[str, Any] = {
    "nil": None,
    "int": 7,
    "str": "chunk",
    "array": ["chunk", "job-1", "hi"],
    "empty map": {},
    "no tag": {"job_id": "j", "text": "hi"},
    "unknown tag": {"type": "teleport", "job_id": "j"},
    "tag of wrong type": {"type": 3, "job_id": "j"},
    "missing job_id": {"type": "chunk", "text": "hi"},
    "missing required field": {"type": "final", "job_id": "j", "prompt_tokens": 1},
    "text as bytes": {"type": "chunk", "job_id": "j", "text": b"hi"},
    "job_id as int": {"type": "cancel", "job_id": 5},
    "unknown error code": {"type": "error", "job_id": "j", "code": "exploded"},
    "messages not a list": {"type": "request", "job_id": "j", "model": "m", "messages": "hi"},
    "message missing content": {
        "type": "request", "job_id": "j", "model": "m", "messages": [{"role": "user"}]
    },
    "tokens as float": {"type": "final", "job_id": "j", "prompt_tokens": 1.5,
                        "completion_tokens": 2},
}


@pytest.mark.parametrize("value", WRONG_SHAPES.values(), ids=WRONG_SHAPES.keys())
def test_valid_msgpack_of_the_wrong_shape_is_a_remote_protocol_error(value: Any) -> None:
    with pytest.raises(RemoteProtocolError, match="undecodable frame"):
        decode_one(msgspec.msgpack.encode(value))


@pytest.mark.parametrize(
    "body",
    [b"\xc1", b"\x81", b"\x82\xa4type\xa5chunk", b"\xd6\xff\x00\x00\x00\x00",
     msgspec.msgpack.encode({"type": "cancel", "job_id": "j"}) + b"\x00"],
    ids=["reserved opcode", "truncated map", "truncated frame", "ext type", "trailing byte"],
)
def test_malformed_msgpack_is_a_remote_protocol_error(body: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        decode_one(body)


def test_decoding_continues_after_a_bad_body() -> None:
    decoder = FrameDecoder()
    decoder.receive_data(framed(b"\xc1") + encode_frame(Cancel(job_id="j")))
    with pytest.raises(RemoteProtocolError):
        decoder.next_frame()
    assert decoder.next_frame() == Cancel(job_id="j")


def _feed_all(data: bytes, step: int) -> None:
    """Feed ``data`` in ``step``-byte reads, draining after each; only protocol errors escape."""
    decoder = FrameDecoder()
    for i in range(0, len(data), step):
        decoder.receive_data(data[i : i + step])
        while True:
            ev = decoder.next_frame()
            if ev is NEED_DATA:
                break
            assert isinstance(ev, get_args(Frame))


@settings(max_examples=500, deadline=None, database=None)
@given(st.binary(max_size=300), st.integers(min_value=1, max_value=64))
def test_arbitrary_bytes_raise_only_remote_protocol_error(data: bytes, step: int) -> None:
    with contextlib.suppress(RemoteProtocolError):
        _feed_all(data, step)


@settings(max_examples=500, deadline=None, database=None)
@given(st.binary(max_size=300))
def test_arbitrary_framed_bodies_raise_only_remote_protocol_error(body: bytes) -> None:
    with contextlib.suppress(RemoteProtocolError):
        _feed_all(framed(body), len(body) + 4)


_scalars = (
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats()
    | st.text(max_size=10) | st.binary(max_size=10)
)
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12,
)
_field_names = st.sampled_from(
    ["job_id", "text", "model", "messages", "code", "message", "prompt_tokens",
     "completion_tokens", "stop", "seed", "role", "content"]
) | st.text(max_size=8)


@settings(max_examples=500, deadline=None, database=None)
@given(
    st.sampled_from([*TAGS.values(), "bogus"]),
    st.dictionaries(_field_names, _values, max_size=8),
)
def test_maps_with_a_tag_and_random_fields_decode_or_raise_remote_protocol_error(
    tag: str, fields: dict[str, Any]
) -> None:
    body = msgspec.msgpack.encode({**fields, "type": tag})
    try:
        got = decode_one(body)
    except RemoteProtocolError:
        return
    assert isinstance(got, get_args(Frame))
    assert TAGS[type(got)] == tag


def _chunk_body_with_raw_text(raw: bytes) -> bytes:
    """A chunk frame body whose ``text`` is a msgpack str holding ``raw`` bytes verbatim."""
    assert len(raw) < 32  # fixstr
    return (
        b"\x83\xa4type\xa5chunk\xa6job_id\xa1j\xa4text" + bytes([0xA0 | len(raw)]) + raw
    )


def test_raw_chunk_body_helper_builds_a_valid_frame() -> None:
    assert decode_one(_chunk_body_with_raw_text(b"ok")) == Chunk(job_id="j", text="ok")


def test_invalid_utf8_in_a_str_field_is_a_remote_protocol_error() -> None:
    with pytest.raises(RemoteProtocolError):
        decode_one(_chunk_body_with_raw_text(b"\xff\xfe"))


def test_deeply_nested_unknown_field_is_a_remote_protocol_error() -> None:
    body = b"\x84\xa4type\xa5chunk\xa6job_id\xa1j\xa4text\xa1x\xa5extra"
    body += b"\x91" * 200_000 + b"\xc0"  # 200 000 nested one-element arrays around nil
    assert len(body) < MAX_FRAME_SIZE
    with pytest.raises(RemoteProtocolError):
        decode_one(body)


# --- encoding bounds --------------------------------------------------------------------


def _chunk_overhead() -> int:
    """Bytes a chunk body adds around a long (str32-encoded) text."""
    text = "x" * 100_000
    return len(msgspec.msgpack.encode(Chunk(job_id="j", text=text))) - len(text)


def test_frame_of_exactly_the_maximum_size_encodes_and_decodes() -> None:
    frame = Chunk(job_id="j", text="x" * (MAX_FRAME_SIZE - _chunk_overhead()))
    data = encode_frame(frame)
    assert len(data) == MAX_FRAME_SIZE + 4
    decoder = FrameDecoder()
    decoder.receive_data(data)
    assert decoder.next_frame() == frame


def test_encoding_an_over_limit_frame_is_a_local_protocol_error() -> None:
    frame = Chunk(job_id="j", text="x" * (MAX_FRAME_SIZE - _chunk_overhead() + 1))
    with pytest.raises(LocalProtocolError, match="exceeds"):
        encode_frame(frame)


# --- the buffer bound --------------------------------------------------------------------


def test_buffered_counts_bytes_not_yet_returned() -> None:
    data = encode_frame(FULL_REQUEST)
    decoder = FrameDecoder()
    assert decoder.buffered == 0
    decoder.receive_data(data[:10])
    assert decoder.buffered == 10
    assert decoder.next_frame() is NEED_DATA
    assert decoder.buffered == 10
    decoder.receive_data(data[10:] + b"\x00\x00")
    assert decoder.buffered == len(data) + 2
    assert decoder.next_frame() == FULL_REQUEST
    assert decoder.buffered == 2


def test_receive_data_refuses_more_than_one_maximal_frame_plus_one_read() -> None:
    max_frame = 100
    bound = max_frame + 4 + (64 << 10)
    decoder = FrameDecoder(max_frame_size=max_frame)
    decoder.receive_data(b"\x00" * (bound - 1))
    decoder.receive_data(b"\x00")  # exactly at the bound is fine
    assert decoder.buffered == bound
    with pytest.raises(RemoteProtocolError, match="more data"):
        decoder.receive_data(b"\x00")
    assert decoder.buffered == bound  # the refused read was not kept


def test_the_default_bound_admits_a_maximal_frame_and_a_64k_read() -> None:
    data = encode_frame(Chunk(job_id="j", text="x" * (MAX_FRAME_SIZE - _chunk_overhead())))
    decoder = FrameDecoder()
    decoder.receive_data(data[:-1])
    decoder.receive_data(data[-1:] + b"\x00" * (64 << 10))
    with pytest.raises(RemoteProtocolError):
        decoder.receive_data(b"\x00")
    assert isinstance(decoder.next_frame(), Chunk)
    assert decoder.buffered == 64 << 10
