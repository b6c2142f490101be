"""X-Infernet-Auth verifications per second, and NIP-44 encrypt+decrypt of a 4 KB chunk.

Auth, interleaved in one run (baseline: ``raw bip340``, the libsecp256k1 signature check
with the key already parsed, as a coordinator holds its registered keys):

- ``AuthVerifier.verify``: parse the header, window, key lookup, replay check, SHA-256 of a
  200-byte heartbeat body and of the signed text, signature, nonce insert — each request
  with a fresh nonce.

NIP-44 with a 4096-byte plaintext (baseline: ``chacha20+hmac``, the two primitives alone over
the same bytes, encrypt and decrypt):

- ``nip44 4 KB``: ``encrypt`` then ``decrypt`` (keys, padding, base64, MAC checks);
- ``sealed chunk 4 KB``: ``e2e.ChunkSealer.seal`` then ``ChunkOpener.open`` (adds the JSON
  binding of job id and sequence number).

    python -m bench.protocol_crypto [--quick]
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
from typing import Final

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from bench._timing import Case, rates, table
from infernet.protocol import nip44
from infernet.protocol.auth import AuthVerifier, auth_digest, sign_request
from infernet.protocol.e2e import ChunkOpener, ChunkSealer, session_key
from infernet.protocol.keys import SecretKey

NOW: Final = 1_800_000_000
NODE: Final = SecretKey((7).to_bytes(32, "big"))
CLIENT: Final = SecretKey((9).to_bytes(32, "big"))
BODY: Final = (b'{"node_id":"611df01bfcf85c26ae65453b772d8f1dfd25c264621c0277e1fc1518686faef9",'
               b'"load":0.25,"slots_free":3,"models":["qwen2.5:7b","llama3.2:3b"],"gpu":"RTX"}')
TARGET: Final = "/api/v1/heartbeat"
CHUNK: Final = ("The quick brown fox jumps over the lazy dog. " * 100)[:4096]


def auth_cases(ops: int) -> list[Case]:
    """Auth verification against the raw signature check of the same digests."""
    headers = [sign_request(NODE, method="POST", target=TARGET, body=BODY,
                            nonce=i.to_bytes(16, "big"), timestamp=NOW) for i in range(ops)]
    digests = [auth_digest("POST", TARGET, BODY, i.to_bytes(16, "big").hex(), NOW)
               for i in range(ops)]
    sigs = [bytes.fromhex(h.split(".")[1]) for h in headers]
    pubkey = NODE.public_key
    pubkey.verify(sigs[0], digests[0])  # parse the point once, as a registry holds it

    def raw(n: int) -> None:
        for i in range(n):
            if not pubkey.verify(sigs[i], digests[i]):
                raise AssertionError("baseline signature did not verify")

    def auth(n: int) -> None:
        verifier = AuthVerifier(lambda _: pubkey, max_nonces=max(n, 1))
        for i in range(n):
            verifier.verify(headers[i], key_id="node", method="POST", target=TARGET,
                            body=BODY, now=NOW)

    return [Case("raw bip340", raw), Case("AuthVerifier.verify", auth)]


def nip44_cases() -> list[Case]:
    """NIP-44 and sealed chunks against the bare primitives."""
    conv = nip44.conversation_key(NODE, CLIENT.public_key)
    plaintext = CHUNK.encode()
    keys = nip44.message_keys(conv, bytes(32))
    nonce16 = b"\x00" * 4 + keys.chacha_nonce

    def primitives(n: int) -> None:
        for _ in range(n):
            cipher = Cipher(algorithms.ChaCha20(keys.chacha_key, nonce16), mode=None)
            ciphertext = cipher.encryptor().update(plaintext)
            mac = hmac.digest(keys.hmac_key, ciphertext, hashlib.sha256)
            if not hmac.compare_digest(mac, hmac.digest(keys.hmac_key, ciphertext,
                                                        hashlib.sha256)):
                raise AssertionError("unreachable")
            cipher.decryptor().update(ciphertext)

    def full(n: int) -> None:
        for i in range(n):
            payload = nip44.encrypt(CHUNK, conv, i.to_bytes(32, "big"))
            nip44.decrypt(payload, conv)

    def sealed(n: int) -> None:
        key = session_key(NODE, CLIENT.public_key)
        sealer, opener = ChunkSealer(key, "job-1"), ChunkOpener(key, "job-1")
        for i in range(n):
            opener.open(sealer.seal(CHUNK, i.to_bytes(32, "big")))

    return [Case("chacha20+hmac", primitives), Case("nip44 4 KB", full),
            Case("sealed chunk 4 KB", sealed)]


def main(argv: list[str] | None = None) -> int:
    """Run both benchmarks; returns 0 (a report, not a gate)."""
    parser = argparse.ArgumentParser(description="auth and NIP-44 benchmark")
    parser.add_argument("--quick", action="store_true", help="tiny run (a smoke test)")
    args = parser.parse_args(argv)
    ops, rounds = (32, 2) if args.quick else (512, 25)
    print(table("X-Infernet-Auth: verifications per second", rates(
        auth_cases(ops), ops=ops, rounds=rounds), baseline="raw bip340"))
    results = rates(nip44_cases(), ops=ops, rounds=rounds)
    print(table("NIP-44, 4096-byte plaintext: encrypt+decrypt per second", results,
                baseline="chacha20+hmac"))
    mb_s = results["nip44 4 KB"] * 4096 * 2 / 1e6
    print(f"  nip44 moves {mb_s:,.0f} MB/s of plaintext (encrypt and decrypt counted)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
