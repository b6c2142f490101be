"""Cross-cutting properties of the protocol layer (hypothesis, ``database=None``).

- every frame and every event round-trips through its encoding;
- any single-byte mutation of a signed event or announcement is rejected with our errors;
- a fuzz smoke: every decoder fed arbitrary bytes raises only ``InfernetError`` subclasses.
  A longer run of the same targets: ``python -m tests.protocol.fuzz_targets --seconds 600``.
"""

from __future__ import annotations

import contextlib
from typing import get_args

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from infernet.protocol.announce import Capabilities, ModelOffer, build_announcement
from infernet.protocol.errors import ErrorCode, InfernetError, LocalProtocolError
from infernet.protocol.event import (
    UnsignedEvent,
    decode_event,
    encode_event,
    sign_event,
    verify_event,
)
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
    Message,
    encode_frame,
)
from infernet.protocol.keys import SecretKey
from infernet.protocol.receipt import SignedReceipt
from tests.protocol import fuzz_targets

KEY = SecretKey.from_hex("0beebd062ec8735f4243466049d7747ef5d6594ee838de147f8aab842b15e273")
NOW = 1_800_000_000

_text = st.text(max_size=40).filter(lambda s: not any(0xD800 <= ord(c) <= 0xDFFF for c in s))
_floats = st.none() | st.floats(allow_nan=False)
_ints = st.none() | st.integers(-(2**63), 2**64 - 1)
_hex = st.binary(min_size=32, max_size=32).map(bytes.hex)

FRAME_STRATEGIES: dict[type[Frame], st.SearchStrategy[Frame]] = {
    JobRequest: st.builds(
        JobRequest, job_id=_text, model=_text,
        messages=st.lists(st.builds(Message, role=_text, content=_text), max_size=3).map(tuple),
        max_tokens=_ints, temperature=_floats, top_p=_floats,
        stop=st.lists(_text, max_size=3).map(tuple), seed=_ints, client_pubkey=_text,
        encrypted=_text, encrypted_to=_text),
    Accepted: st.builds(Accepted, job_id=_text, node_pubkey=_text, model=_text),
    Chunk: st.builds(Chunk, job_id=_text, text=_text, encrypted=_text),
    FinalFrame: st.builds(
        FinalFrame, job_id=_text, prompt_tokens=st.integers(0, 2**32),
        completion_tokens=st.integers(0, 2**32), finish_reason=_text,
        ttft_ms=st.floats(allow_nan=False), tokens_per_s=st.floats(allow_nan=False),
        receipt=st.none() | st.builds(SignedReceipt, body=st.binary(max_size=64),
                                      node_sig=st.binary(min_size=64, max_size=64).map(
                                          bytes.hex))),
    JobErrorFrame: st.builds(JobErrorFrame, job_id=_text,
                             code=st.sampled_from(get_args(ErrorCode)), message=_text),
    Cancel: st.builds(Cancel, job_id=_text),
}


def test_every_frame_type_has_a_strategy() -> None:
    assert set(FRAME_STRATEGIES) == set(get_args(Frame))


@settings(max_examples=400, deadline=None, database=None)
@given(st.lists(st.one_of(*FRAME_STRATEGIES.values()), min_size=1, max_size=5),
       st.integers(1, 64))
def test_every_frame_round_trips_in_any_chunking(frames: list[Frame], step: int) -> None:
    data = b"".join(encode_frame(frame) for frame in frames)
    decoder = FrameDecoder()
    got: list[Frame] = []
    for start in range(0, len(data), step):
        decoder.receive_data(data[start : start + step])
        while (frame := decoder.next_frame()) is not NEED_DATA:
            assert not isinstance(frame, type(NEED_DATA))
            got.append(frame)
    assert got == frames and [type(f) for f in got] == [type(f) for f in frames]


def test_a_lone_surrogate_is_a_local_protocol_error() -> None:
    with pytest.raises(LocalProtocolError):
        encode_frame(Chunk(job_id="j", text="\ud800"))


@settings(max_examples=200, deadline=None, database=None)
@given(st.integers(0, 2**53 - 1), st.integers(0, 65535),
       st.lists(st.lists(_text, min_size=1, max_size=3).map(tuple), max_size=4).map(tuple),
       _text)
def test_every_event_round_trips_and_verifies(created_at: int, kind: int,
                                              tags: tuple[tuple[str, ...], ...],
                                              content: str) -> None:
    event = sign_event(UnsignedEvent(pubkey=KEY.public_key.hex(), created_at=created_at,
                                     kind=kind, tags=tags, content=content), KEY)
    decoded = decode_event(encode_event(event), 1 << 20)
    assert decoded == event
    verify_event(decoded)


EVENT = encode_event(sign_event(UnsignedEvent(
    pubkey=KEY.public_key.hex(), created_at=NOW, kind=1, tags=(("p", "ab" * 32),),
    content="hello, Ünïcode ✓"), KEY, aux=bytes(32)))
ANNOUNCEMENT = encode_event(build_announcement(
    Capabilities(backend="ollama", expires_at=NOW + 120, models=(
        ModelOffer(name="qwen2.5:7b", weights_hash="sha256:" + "ab" * 32,
                   quantization="Q4_K_M"),)), KEY, NOW, aux=bytes(32)))


def _mutate(data: bytes, pos: int, byte: int) -> bytes | None:
    if data[pos] == byte:
        return None
    mutated = bytearray(data)
    mutated[pos] = byte
    return bytes(mutated)


@settings(max_examples=800, deadline=None, database=None)
@given(st.integers(0, len(EVENT) - 1), st.integers(0, 255))
def test_any_single_byte_mutation_of_a_signed_event_is_rejected(pos: int, byte: int) -> None:
    mutated = _mutate(EVENT, pos, byte)
    if mutated is None:
        return
    with pytest.raises(InfernetError):
        verify_event(decode_event(mutated, 1 << 20))


@settings(max_examples=800, deadline=None, database=None)
@given(st.integers(0, len(ANNOUNCEMENT) - 1), st.integers(0, 255))
def test_any_single_byte_mutation_of_an_announcement_is_rejected(pos: int, byte: int) -> None:
    mutated = _mutate(ANNOUNCEMENT, pos, byte)
    if mutated is None:
        return
    with pytest.raises(InfernetError):
        fuzz_targets.parse_announcement_now(mutated, NOW)


@pytest.mark.parametrize("target", fuzz_targets.TARGETS, ids=lambda t: t.__name__)
@settings(max_examples=150, deadline=None, database=None)
@given(data=st.binary(max_size=600))
def test_fuzz_smoke_decoders_raise_only_project_errors(target: fuzz_targets.Target,
                                                       data: bytes) -> None:
    with contextlib.suppress(InfernetError):
        target(data)
