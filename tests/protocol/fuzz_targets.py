"""Every protocol decoder as a ``bytes -> None`` fuzz target, plus a longer mutational run.

The test suite runs each target briefly (``test_properties.py``); for a longer run:

    .venv/bin/python -m tests.protocol.fuzz_targets --seconds 600

which mutates valid samples and random bytes and exits non-zero on the first exception that
is not an ``InfernetError`` (printing the input as hex to reproduce it).
"""

from __future__ import annotations

import argparse
import contextlib
import random
import sys
import time
from collections.abc import Callable
from decimal import Decimal

from infernet.protocol import nip19, nip44
from infernet.protocol.announce import (
    Capabilities,
    ModelOffer,
    build_announcement,
    parse_announcement,
)
from infernet.protocol.auth import AuthVerifier, sign_request
from infernet.protocol.canonical import decode_record
from infernet.protocol.delegation import (
    KeyRotation,
    NodeDelegation,
    OwnerCommand,
    decode_signed,
    encode_signed,
    sign_record,
    verify_signed,
)
from infernet.protocol.e2e import open_request, seal_request
from infernet.protocol.errors import InfernetError
from infernet.protocol.event import decode_event, encode_event, verify_event
from infernet.protocol.frames import FrameDecoder, JobRequest, Message, encode_frame
from infernet.protocol.keys import SecretKey, decode_npub, public_key_from_peer_id_bytes
from infernet.protocol.receipt import (
    Receipt,
    countersign_receipt,
    decode_countersigned_receipt,
    encode_receipt,
    sign_receipt,
    verify_countersigned_receipt,
)

Target = Callable[[bytes], None]

KEY = SecretKey.from_hex("0beebd062ec8735f4243466049d7747ef5d6594ee838de147f8aab842b15e273")
PEER = SecretKey.from_hex("e108399bd8424357a710b606ae0c13166d853d327e47a6e5e038197346bdbf45")
NOW = 1_800_000_000
_CONV = nip44.conversation_key(KEY, PEER.public_key)


def parse_announcement_now(data: bytes, now: int = NOW) -> None:
    """Parse ``data`` as an announcement from KEY at ``now``."""
    parse_announcement(data, now=now, sender_pubkey=KEY.public_key)


def _text(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


def frame_stream(data: bytes) -> None:
    decoder = FrameDecoder()
    decoder.receive_data(data)
    for _ in range(64):
        decoder.next_frame()


def event(data: bytes) -> None:
    verify_event(decode_event(data, 1 << 16))


def announcement(data: bytes) -> None:
    parse_announcement_now(data)


def auth_header(data: bytes) -> None:
    AuthVerifier(lambda _: KEY.public_key).verify(
        _text(data), key_id="k", method="POST", target="/api/v1/heartbeat", body=b"", now=NOW)


def nip44_payload(data: bytes) -> None:
    nip44.decrypt(_text(data), _CONV)


def bech32_entities(data: bytes) -> None:
    text = _text(data)
    for decode in (decode_npub, nip19.decode_note, nip19.decode_nprofile,
                   nip19.decode_nevent, nip19.decode_naddr):
        with contextlib.suppress(InfernetError):
            decode(text)


def peer_id(data: bytes) -> None:
    public_key_from_peer_id_bytes(data)


def receipt(data: bytes) -> None:
    verify_countersigned_receipt(decode_countersigned_receipt(data),
                                 coordinator_keys={PEER.public_key})


def receipt_body(data: bytes) -> None:
    decode_record(data, Receipt)


def delegation(data: bytes) -> None:
    verify_signed(decode_signed(data, NodeDelegation))


def owner_command(data: bytes) -> None:
    verify_signed(decode_signed(data, OwnerCommand))


def sealed_request(data: bytes) -> None:
    request = JobRequest(job_id="j", model="m", messages=(), client_pubkey=PEER.public_key.hex(),
                         encrypted=_text(data), encrypted_to=KEY.public_key.hex())
    open_request(request, recipient_key=KEY)


TARGETS: list[Target] = [frame_stream, event, announcement, auth_header, nip44_payload,
                         bech32_entities, peer_id, receipt, receipt_body, delegation,
                         owner_command, sealed_request]


def samples() -> dict[str, bytes]:
    """A valid input per target, for mutational fuzzing."""
    caps = Capabilities(backend="ollama", expires_at=NOW + 120,
                        models=(ModelOffer(name="qwen2.5:7b", weights_hash="ab" * 32),))
    body = Receipt(job_id="j", node_pubkey=KEY.public_key.hex(), model="m", input_tokens=1,
                   output_tokens=2, completed_at=NOW, value=Decimal("0.001"), chain="base")
    signed = countersign_receipt(sign_receipt(body, KEY), PEER)
    request = JobRequest(job_id="j", model="m", messages=(Message(role="user", content="hi"),))
    sealed = seal_request(request, client_key=PEER, recipient=KEY.public_key, nonce=bytes(32))
    rotation = sign_record(KeyRotation(old_pubkey=KEY.public_key.hex(),
                                       new_pubkey=PEER.public_key.hex(), rotated_at=NOW), KEY)
    header = sign_request(KEY, method="POST", target="/api/v1/heartbeat", body=b"",
                          nonce=bytes(16), timestamp=NOW)
    return {
        "frame_stream": encode_frame(request) + encode_frame(sealed),
        "event": encode_event(build_announcement(caps, KEY, NOW)),
        "announcement": encode_event(build_announcement(caps, KEY, NOW)),
        "auth_header": header.encode(),
        "nip44_payload": nip44.encrypt("hello", _CONV, bytes(32)).encode(),
        "bech32_entities": nip19.encode_nprofile(nip19.Profile(pubkey=KEY.public_key,
                                                               relays=("wss://r",))).encode(),
        "peer_id": bytes([0, 37, 8, 2, 18, 33, 2]) + bytes(KEY.public_key),
        "receipt": encode_receipt(signed),
        "receipt_body": signed.body,
        "delegation": encode_signed(rotation),
        "owner_command": encode_signed(rotation),
        "sealed_request": sealed.encrypted.encode(),
    }


def _mutations(rng: random.Random, seed: bytes) -> bytes:
    data = bytearray(seed)
    for _ in range(rng.randint(1, 4)):
        choice = rng.random()
        if choice < 0.5 and data:
            data[rng.randrange(len(data))] = rng.randrange(256)
        elif choice < 0.7:
            data.insert(rng.randrange(len(data) + 1), rng.randrange(256))
        elif choice < 0.9 and data:
            del data[rng.randrange(len(data))]
        else:
            data = bytearray(rng.randbytes(rng.randint(0, 200)))
    return bytes(data)


def run(seconds: float, seed: int) -> int:
    """Fuzz every target for ``seconds`` in total; return how many inputs were tried."""
    rng = random.Random(seed)
    seeds = samples()
    deadline = time.monotonic() + seconds
    tried = 0
    while time.monotonic() < deadline:
        for target in TARGETS:
            data = _mutations(rng, seeds[target.__name__])
            try:
                target(data)
            except InfernetError:
                pass
            except Exception:
                print(f"{target.__name__} raised a foreign exception on {data.hex()}",
                      file=sys.stderr)
                raise
            tried += 1
    return tried


def main(argv: list[str] | None = None) -> None:
    """Command line: ``--seconds`` (default 60) and ``--seed``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    tried = run(args.seconds, args.seed)
    print(f"fuzzed {tried} inputs over {len(TARGETS)} decoders: only project errors raised")


if __name__ == "__main__":
    main()
