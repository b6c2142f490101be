"""Tests for infernet.protocol.e2e: sealed job requests and chunks over the job stream."""

from __future__ import annotations

import contextlib
from itertools import count

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from infernet.protocol.e2e import (
    ChunkOpener,
    ChunkSealer,
    E2EError,
    open_request,
    seal_request,
    session_key,
)
from infernet.protocol.frames import (
    Accepted,
    Chunk,
    FinalFrame,
    FrameDecoder,
    JobRequest,
    Message,
    encode_frame,
)
from infernet.protocol.job_stream import JobStream
from infernet.protocol.keys import PublicKey, SecretKey
from infernet.protocol.nip44 import Nip44Error

CLIENT = SecretKey.from_hex("0beebd062ec8735f4243466049d7747ef5d6594ee838de147f8aab842b15e273")
NODE = SecretKey.from_hex("e108399bd8424357a710b606ae0c13166d853d327e47a6e5e038197346bdbf45")
SECRET_PROMPT = "my private medical question"
PLAIN = JobRequest(
    job_id="job-7", model="qwen2.5:7b",
    messages=(Message(role="system", content="Be brief."),
              Message(role="user", content=SECRET_PROMPT)),
    max_tokens=64, temperature=0.2, top_p=0.9, stop=("\n\n",), seed=7,
)
_nonces = count(1)


def nonce() -> bytes:
    return next(_nonces).to_bytes(32, "big")


def sealed() -> JobRequest:
    return seal_request(PLAIN, client_key=CLIENT, recipient=NODE.public_key, nonce=nonce())


def test_sealed_request_hides_everything_but_routing() -> None:
    request = sealed()
    assert request.messages == () and request.max_tokens is None and request.stop == ()
    assert (request.job_id, request.model) == ("job-7", "qwen2.5:7b")
    assert request.client_pubkey == CLIENT.public_key.hex()
    assert request.encrypted_to == NODE.public_key.hex()
    wire = encode_frame(request)
    assert SECRET_PROMPT.encode() not in wire and b"Be brief" not in wire


def test_node_opens_what_the_client_sealed() -> None:
    opened = open_request(sealed(), recipient_key=NODE)
    assert opened == msgspec.structs.replace(PLAIN, client_pubkey=CLIENT.public_key.hex(),
                                             encrypted_to=NODE.public_key.hex())


def test_whole_job_over_a_relay_sees_only_ciphertext() -> None:
    client, node = JobStream("client"), JobStream("node")
    relay_saw = bytearray()

    def deliver(data: bytes, to: JobStream) -> object:
        relay_saw.extend(data)
        to.receive_data(data)
        return to.next_event()

    got = deliver(client.send(sealed()), node)
    assert isinstance(got, JobRequest)
    request = open_request(got, recipient_key=NODE)
    sealer = ChunkSealer(session_key(NODE, PublicKey.from_hex(request.client_pubkey)),
                         request.job_id)
    opener = ChunkOpener(session_key(CLIENT, NODE.public_key), "job-7")
    deliver(node.send(Accepted(job_id="job-7")), client)
    answer = ["Drink ", "water", "", " and rest."]
    received = []
    for piece in answer:
        chunk = deliver(node.send(sealer.seal(piece, nonce())), client)
        assert isinstance(chunk, Chunk)
        received.append(opener.open(chunk))
    deliver(node.send(FinalFrame(job_id="job-7", prompt_tokens=9, completion_tokens=4)), client)
    assert received == answer and client.state == node.state == "done"
    assert SECRET_PROMPT.encode() not in relay_saw and b"water" not in relay_saw


# --- refusals ----------------------------------------------------------------------------


def test_relay_cannot_reroute_or_splice() -> None:
    for change in ({"model": "llama3:8b"}, {"job_id": "job-8"}):
        with pytest.raises(E2EError, match="bound to another"):
            open_request(msgspec.structs.replace(sealed(), **change), recipient_key=NODE)


def test_sealed_to_another_key_or_not_sealed() -> None:
    with pytest.raises(E2EError, match="another key"):
        open_request(sealed(), recipient_key=CLIENT)
    with pytest.raises(E2EError, match="not sealed"):
        open_request(PLAIN, recipient_key=NODE)


def test_clear_fields_beside_a_payload_are_refused() -> None:
    injected = msgspec.structs.replace(sealed(), messages=(Message(role="user", content="x"),))
    with pytest.raises(E2EError, match="clear fields"):
        open_request(injected, recipient_key=NODE)


@pytest.mark.parametrize("client_pubkey", ["", "zz" * 32, "ff" * 32])
def test_bad_client_key_is_refused(client_pubkey: str) -> None:
    with pytest.raises(E2EError):
        open_request(msgspec.structs.replace(sealed(), client_pubkey=client_pubkey),
                     recipient_key=NODE)


def test_a_substituted_client_key_cannot_open() -> None:
    other = SecretKey.generate().public_key.hex()
    with pytest.raises(E2EError, match="invalid MAC"):
        open_request(msgspec.structs.replace(sealed(), client_pubkey=other), recipient_key=NODE)


def _pair() -> tuple[ChunkSealer, ChunkOpener]:
    key = session_key(NODE, CLIENT.public_key)
    return ChunkSealer(key, "job-7"), ChunkOpener(key, "job-7")


def test_dropped_repeated_or_reordered_chunks_are_refused() -> None:
    sealer, opener = _pair()
    first, second, third = (sealer.seal(t, nonce()) for t in "abc")
    assert opener.open(first) == "a"
    with pytest.raises(E2EError, match="arrived where"):
        opener.open(first)  # replayed
    with pytest.raises(E2EError, match="arrived where"):
        opener.open(third)  # second was dropped
    assert opener.open(second) == "b"


def test_chunk_of_another_job_or_in_clear_is_refused() -> None:
    key = session_key(NODE, CLIENT.public_key)
    other = ChunkSealer(key, "job-8").seal("x", nonce())
    _, opener = _pair()
    with pytest.raises(E2EError, match="another job"):
        opener.open(other)
    with pytest.raises(E2EError, match="another job"):
        opener.open(msgspec.structs.replace(ChunkSealer(key, "job-7").seal("x", nonce()),
                                            job_id="job-8"))
    with pytest.raises(E2EError, match="not sealed"):
        opener.open(Chunk(job_id="job-7", text="clear"))


def test_bad_nonce_is_refused_when_sealing() -> None:
    sealer, _ = _pair()
    with pytest.raises(Nip44Error):
        sealer.seal("x", b"short")


def test_session_key_refuses_an_off_curve_peer() -> None:
    with pytest.raises(E2EError):
        session_key(NODE, PublicKey(b"\xff" * 32))


# --- properties --------------------------------------------------------------------------

SEALED = sealed()


@settings(max_examples=300, deadline=None, database=None)
@given(st.integers(0, len(SEALED.encrypted) - 1), st.characters(codec="ascii"))
def test_any_mutation_of_a_sealed_request_is_refused(pos: int, char: str) -> None:
    payload = SEALED.encrypted[:pos] + char + SEALED.encrypted[pos + 1 :]
    if payload == SEALED.encrypted:
        return
    with pytest.raises(E2EError):
        open_request(msgspec.structs.replace(SEALED, encrypted=payload), recipient_key=NODE)


@settings(max_examples=200, deadline=None, database=None)
@given(st.text(max_size=300))
def test_open_request_on_arbitrary_payloads_raises_only_e2e_error(payload: str) -> None:
    with contextlib.suppress(E2EError):
        open_request(msgspec.structs.replace(SEALED, encrypted=payload or "x"),
                     recipient_key=NODE)


@settings(max_examples=100, deadline=None, database=None)
@given(st.lists(st.text(max_size=50).filter(
    lambda s: not any(0xD800 <= ord(c) <= 0xDFFF for c in s)), max_size=6))
def test_chunks_round_trip_through_frames(texts: list[str]) -> None:
    sealer, opener = _pair()
    decoder = FrameDecoder()
    for text in texts:
        decoder.receive_data(encode_frame(sealer.seal(text, nonce())))
    opened = []
    while isinstance(frame := decoder.next_frame(), Chunk):
        opened.append(opener.open(frame))
    assert opened == texts
