"""Announcement verification rate ÷ raw coincurve BIP-340 verification rate (goal ≥ 0.9).

256 distinct signed announcements from 16 node keys (two models, GPU, listen address; about
1.1 KB each, as a node sends them). Cases, interleaved in one run:

- ``raw bip340`` (baseline): ``coincurve.PublicKeyXOnly(pubkey).verify(sig, id)`` of the same
  256 (pubkey, sig, id) triples — the signature check alone, key parsing included, nothing
  else;
- ``raw bip340, parsed key``: the same with each key parsed once (the libsecp256k1 floor);
- ``parse_announcement``: the full receive path, cold: JSON decode, id recomputation,
  signature, sender check, content decode and every validation rule;
- ``AnnouncementVerifier``: the same path with its cache of node keys warm — the steady
  state, since every node re-announces every 30 s with the same key.

    python -m bench.announce_verify [--quick]
"""

from __future__ import annotations

import argparse
from typing import Final

import coincurve

from bench._timing import Case, rates, table
from infernet.protocol.announce import (
    AnnouncementVerifier,
    Capabilities,
    ModelOffer,
    build_announcement,
    parse_announcement,
)
from infernet.protocol.event import decode_event, encode_event
from infernet.protocol.keys import SecretKey

NOW: Final = 1_800_000_000
GOAL: Final = 0.9


def announcements(nodes: int = 16, per_node: int = 16) -> list[tuple[bytes, SecretKey]]:
    """Distinct encoded announcements and the key of each one's sender."""
    out = []
    for n in range(nodes):
        key = SecretKey((n + 1).to_bytes(32, "big"))
        for i in range(per_node):
            caps = Capabilities(
                backend="ollama",
                models=(
                    ModelOffer(name="qwen2.5:7b", weights_hash="sha256:" + f"{n:02x}" * 32,
                               quantization="Q4_K_M", context_length=32768,
                               price_per_1k_input=0.0005, price_per_1k_output=0.002),
                    ModelOffer(name="llama3.2:3b", weights_hash="sha256:" + "cd" * 32,
                               quantization="Q4_K_M", context_length=131072),
                ),
                vram_tier=">=24gb", gpu="NVIDIA GeForce RTX 4090 24GB", slots_total=4,
                slots_free=i % 5, load=i / 16,
                listen_addrs=(f"/ip4/203.0.113.{n}/tcp/46337",), expires_at=NOW + 120,
            )
            out.append((encode_event(build_announcement(caps, key, NOW - i)), key))
    return out


def cases(items: list[tuple[bytes, SecretKey]]) -> list[Case]:
    """The four cases over the same announcements."""
    triples = []
    for data, _ in items:
        event = decode_event(data, 1 << 16)
        triples.append((bytes.fromhex(event.pubkey), bytes.fromhex(event.sig),
                        bytes.fromhex(event.id)))
    parsed = {pk: coincurve.PublicKeyXOnly(pk) for pk, _, _ in triples}
    senders = [(data, key.public_key) for data, key in items]
    verifier = AnnouncementVerifier()
    size = len(items)

    def raw(n: int) -> None:
        for i in range(n):
            pk, sig, msg = triples[i % size]
            if not coincurve.PublicKeyXOnly(pk).verify(sig, msg):
                raise AssertionError("baseline signature did not verify")

    def raw_parsed(n: int) -> None:
        for i in range(n):
            pk, sig, msg = triples[i % size]
            if not parsed[pk].verify(sig, msg):
                raise AssertionError("baseline signature did not verify")

    def cold(n: int) -> None:
        for i in range(n):
            data, sender = senders[i % size]
            parse_announcement(data, now=NOW, sender_pubkey=sender)

    def warm(n: int) -> None:
        for i in range(n):
            data, sender = senders[i % size]
            verifier.parse(data, now=NOW, sender_pubkey=sender)

    return [Case("raw bip340", raw), Case("raw bip340, parsed key", raw_parsed),
            Case("parse_announcement", cold), Case("AnnouncementVerifier", warm)]


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and say whether the goal was met; returns 0 (a report, not a gate)."""
    parser = argparse.ArgumentParser(description="announcement verification benchmark")
    parser.add_argument("--quick", action="store_true", help="tiny run (a smoke test)")
    args = parser.parse_args(argv)
    ops, rounds = (64, 2) if args.quick else (512, 40)
    items = announcements(4, 4) if args.quick else announcements()
    print(f"{len(items)} announcements, {len(items[0][0])} bytes each")
    results = rates(cases(items), ops=ops, rounds=rounds)
    print(table("verifications per second", results, baseline="raw bip340"))
    warm = results["AnnouncementVerifier"] / results["raw bip340"]
    cold = results["parse_announcement"] / results["raw bip340"]
    met = "met" if warm >= GOAL else "NOT met"
    print(f"ratio: warm {warm:.3f}, cold {cold:.3f} (goal >= {GOAL} for the steady state: {met})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
