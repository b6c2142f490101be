"""Frame codec: msgspec MessagePack vs msgspec JSON vs cbor2, for a typical chunk and request.

Each case is one encode plus one typed decode of the same frame (what a relaying peer
does). Baseline: msgspec MessagePack (the encoding ``specs/job-protocol.md`` §2 chose).
Two cbor2 variants: ``cbor2`` (dumps/loads of plain dicts, no validation — its best case)
and ``cbor2+convert`` (plus ``msgspec.convert`` into the typed frame, the fair comparison,
since the job protocol must validate what it decodes). Prints ops/s and the ratio to the
baseline, measured interleaved in the same run, plus the encoded sizes.

    python -m bench.frame_codec [--quick]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Final

import cbor2
import msgspec

from bench._timing import Case, rates, table
from infernet.protocol.frames import Chunk, Frame, JobRequest, Message

CHUNK: Final = Chunk(job_id="job-4f2a9c1e7b3d", text=" the capital of")
# When the engine outruns the writer a frame batches up to 64 deltas (job-protocol §7).
BATCHED_CHUNK: Final = Chunk(job_id="job-4f2a9c1e7b3d", text=(
    " Schnorr signatures are linear, so keys and signatures can be aggregated; BIP-340"
    " fixes the encoding, uses x-only keys to save a byte, and tags every hash. " * 2))
REQUEST: Final = JobRequest(
    job_id="job-4f2a9c1e7b3d",
    model="qwen2.5:7b",
    messages=(
        Message(role="system", content="You are a concise assistant. Answer in one paragraph."),
        Message(role="user", content="Explain how Schnorr signatures work, and why BIP-340 "
                "uses x-only public keys. " * 4),
    ),
    max_tokens=256,
    temperature=0.7,
    top_p=0.9,
    stop=("\n\nUser:",),
    client_pubkey="611df01bfcf85c26ae65453b772d8f1dfd25c264621c0277e1fc1518686faef9",
)

_mp_enc: Final = msgspec.msgpack.Encoder()
_mp_dec: Final = msgspec.msgpack.Decoder(Frame)
_js_enc: Final = msgspec.json.Encoder()
_js_dec: Final = msgspec.json.Decoder(Frame)


def _loop(step: Callable[[], object]) -> Callable[[int], None]:
    def run(n: int) -> None:
        for _ in range(n):
            step()

    return run


def cases(frame: Frame) -> list[Case]:
    """The four codecs, each encoding and decoding ``frame`` once per operation."""
    as_dict = msgspec.to_builtins(frame)
    return [
        Case("msgpack", _loop(lambda: _mp_dec.decode(_mp_enc.encode(frame)))),
        Case("json", _loop(lambda: _js_dec.decode(_js_enc.encode(frame)))),
        Case("cbor2", _loop(lambda: cbor2.loads(cbor2.dumps(as_dict)))),
        Case("cbor2+convert", _loop(lambda: msgspec.convert(
            cbor2.loads(cbor2.dumps(msgspec.to_builtins(frame))), Frame))),
    ]


def sizes(frame: Frame) -> str:
    """Encoded size of ``frame`` in each format."""
    cbor_size = len(cbor2.dumps(msgspec.to_builtins(frame)))
    return (f"  sizes: msgpack {len(_mp_enc.encode(frame))} B, json "
            f"{len(_js_enc.encode(frame))} B, cbor2 {cbor_size} B")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print a verdict; returns 0 (a report, not a gate)."""
    parser = argparse.ArgumentParser(description="frame codec benchmark")
    parser.add_argument("--quick", action="store_true", help="tiny run (a smoke test)")
    args = parser.parse_args(argv)
    ops, rounds = (200, 2) if args.quick else (20_000, 7)
    product: dict[str, float] = {}
    frames = (("chunk", CHUNK), ("batched chunk", BATCHED_CHUNK), ("request", REQUEST))
    for name, frame in frames:
        results = rates(cases(frame), ops=ops, rounds=rounds)
        print(table(f"{name}: encode+decode per second", results, baseline="msgpack"))
        print(sizes(frame))
        for codec, rate in results.items():
            product[codec] = product.get(codec, 1.0) * rate / results["msgpack"]
    geomean = {codec: value ** (1 / len(frames)) for codec, value in product.items()
               if codec != "cbor2"}  # untyped cbor2 skips validation: not a real option
    best = max(geomean, key=geomean.__getitem__)
    summary = ", ".join(f"{codec} {value:.3f}" for codec, value in geomean.items())
    print(f"geometric mean of ratios vs msgpack (typed codecs): {summary}")
    if best == "msgpack" or geomean[best] <= 1.05:
        print("verdict: msgspec MessagePack stays: fastest overall (or within 5 %), smallest")
        return 0
    print(f"verdict: {best} beat MessagePack overall by more than 5 % in this run")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
