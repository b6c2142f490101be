"""Owner-command frames: round trips, the length prefix, and bounds on hostile input."""

from __future__ import annotations

import secrets

import pytest
from hypothesis import given
from hypothesis import strategies as st

from infernet.protocol.delegation import OwnerCommand, encode_signed, sign_record
from infernet.protocol.errors import LocalProtocolError, RemoteProtocolError
from infernet.protocol.keys import SecretKey
from infernet.protocol.owner import (
    MAX_OWNER_FRAME,
    CommandRequest,
    CommandResult,
    OwnerFrameDecoder,
    command_id,
    encode_owner_frame,
)

USER = SecretKey.generate().even_y()


def command(nonce: str | None = None) -> OwnerCommand:
    return OwnerCommand(action="model_install", user_pubkey=USER.public_key.hex(),
                        node_pubkey="ab" * 32, model="gemma3-270m", issued_at=1_800_000_000,
                        nonce=nonce or secrets.token_hex(16))


def test_frames_round_trip_in_pieces() -> None:
    signed = sign_record(command(), USER)
    frames = [CommandRequest(command=encode_signed(signed)),
              CommandResult(command_id=command_id(signed), status="refused",
                            code="unauthorized", message="command is too old")]
    data = b"".join(encode_owner_frame(f) for f in frames)
    decoder, out = OwnerFrameDecoder(), []
    for i in range(len(data)):  # one byte at a time
        decoder.receive_data(data[i:i + 1])
        while (frame := decoder.next_frame()) is not None:
            out.append(frame)
    assert out == frames


def test_command_id_names_the_record_not_the_signature() -> None:
    record = command("00" * 16)
    a, b = sign_record(record, USER), sign_record(record, USER, aux=b"\x01" * 32)
    assert a.sig != b.sig and command_id(a) == command_id(b)
    assert command_id(sign_record(command("11" * 16), USER)) != command_id(a)


def test_oversized_frames_are_refused_both_ways() -> None:
    with pytest.raises(LocalProtocolError):
        encode_owner_frame(CommandResult(status="done", served_models=("m" * 100,) * 200))
    decoder = OwnerFrameDecoder()
    decoder.receive_data((MAX_OWNER_FRAME + 1).to_bytes(4, "big"))
    with pytest.raises(RemoteProtocolError, match="exceeds"):
        decoder.next_frame()
    with pytest.raises(RemoteProtocolError, match="more than one owner frame"):
        OwnerFrameDecoder().receive_data(b"\x00" * (MAX_OWNER_FRAME + 5))


@given(st.binary(max_size=200))
def test_garbage_raises_only_remote_protocol_error(data: bytes) -> None:
    decoder = OwnerFrameDecoder()
    try:
        decoder.receive_data(len(data).to_bytes(4, "big") + data)
        decoder.next_frame()
    except RemoteProtocolError:
        pass
