"""Directory messages: round trip, bounds, garbage."""

from __future__ import annotations

import pytest

from infernet.protocol.directory import (
    MAX_ENTRIES,
    MAX_MESSAGE_SIZE,
    PREFIX,
    DirectoryAnswer,
    DirectoryQuery,
    decode_message,
    encode_message,
    message_size,
)
from infernet.protocol.errors import LocalProtocolError, RemoteProtocolError


def test_query_and_answer_round_trip_with_a_length_prefix() -> None:
    query = DirectoryQuery(model="gemma3:270m", weights_hash="sha256:" + "ab" * 32)
    data = encode_message(query)
    assert message_size(data[:PREFIX]) == len(data) - PREFIX
    assert decode_message(data[PREFIX:], DirectoryQuery) == query
    answer = DirectoryAnswer(events=[b'{"id":"x"}', b"{}"])
    assert decode_message(encode_message(answer)[PREFIX:], DirectoryAnswer) == answer


@pytest.mark.parametrize("body", [b"", b"\xc1", b"\x81\xa5model\x00",
                                  b"\x82\xa5model\xa1m\xa3bad\x01"])
def test_garbage_and_wrong_shapes_are_remote_protocol_errors(body: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        decode_message(body, DirectoryQuery)


def test_bounds_hold_both_ways() -> None:
    with pytest.raises(RemoteProtocolError):
        message_size((MAX_MESSAGE_SIZE + 1).to_bytes(PREFIX, "big"))
    too_many = DirectoryAnswer(events=[b"{}"] * (MAX_ENTRIES + 1))
    with pytest.raises(RemoteProtocolError):
        decode_message(encode_message(too_many)[PREFIX:], DirectoryAnswer)
    with pytest.raises(LocalProtocolError):
        encode_message(DirectoryAnswer(events=[b"x" * 20_000] * MAX_ENTRIES))
