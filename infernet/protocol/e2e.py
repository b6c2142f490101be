"""End-to-end encrypted jobs: seal a request and its token chunks between client and node.

Owns: what goes inside the NIP-44 payloads of ``JobRequest.encrypted`` and
``Chunk.encrypted`` and how each side seals and opens them (``specs/job-protocol.md`` §8).
A relaying coordinator or peer sees only the routing fields (``job_id``, ``model``,
``client_pubkey``, ``encrypted_to``), ciphertext, and the usage numbers of the final frame.

Binding (why the plaintexts repeat routing fields):

- the sealed request holds ``job_id`` and ``model``; ``open_request`` refuses a payload whose
  copies differ from the clear ones, so a relay cannot re-route a prompt to another model
  or splice it into another job;
- each sealed chunk holds ``job_id`` and a sequence number from 0; ``ChunkOpener`` refuses
  a chunk of another job, a dropped, repeated or reordered chunk.

Invariants: keys and nonces are arguments; opening raises nothing but ``E2EError``.
"""

from __future__ import annotations

from typing import Annotated, Final, TypeVar

import msgspec

from infernet.protocol.errors import ErrorCode, RemoteProtocolError
from infernet.protocol.frames import MAX_FRAME_SIZE, Chunk, JobRequest, Message
from infernet.protocol.keys import KeyFormatError, PublicKey, SecretKey
from infernet.protocol.nip44 import Nip44Error, conversation_key, decrypt_bytes, encrypt_bytes

__all__ = [
    "ChunkOpener",
    "ChunkSealer",
    "E2EError",
    "SealedChunk",
    "SealedRequest",
    "open_request",
    "seal_request",
    "session_key",
]

S = TypeVar("S", bound=msgspec.Struct)
_DECODE_ERRORS: Final = (msgspec.MsgspecError, UnicodeError, RecursionError)


class E2EError(RemoteProtocolError):
    """Raised when a sealed request or chunk cannot be opened or is not bound to this job.

    A node answers ``bad_request``; a client stops reading the stream: it was tampered with.
    """

    code: ErrorCode = "bad_request"


class SealedRequest(msgspec.Struct, frozen=True, kw_only=True):
    """The plaintext of ``JobRequest.encrypted`` (compact JSON)."""

    job_id: str
    model: str
    messages: tuple[Message, ...]
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None


class SealedChunk(msgspec.Struct, frozen=True, kw_only=True):
    """The plaintext of ``Chunk.encrypted`` (compact JSON)."""

    job_id: str
    seq: Annotated[int, msgspec.Meta(ge=0)]
    text: str


def session_key(own: SecretKey, peer: PublicKey) -> bytes:
    """Return the NIP-44 conversation key of a job (the same on both sides).

    Raises:
        E2EError: ``peer`` is not a valid public key.
    """
    try:
        return conversation_key(own, peer)
    except Nip44Error as exc:
        raise E2EError(f"cannot encrypt to this key: {exc}") from None


def _seal(value: msgspec.Struct, key: bytes, nonce: bytes) -> str:
    return encrypt_bytes(msgspec.json.encode(value), key, nonce)


def _open(payload: str, key: bytes, value_type: type[S], what: str) -> S:
    try:
        plaintext = decrypt_bytes(payload, key, max_plaintext=MAX_FRAME_SIZE)
    except Nip44Error as exc:
        raise E2EError(f"cannot open {what}: {exc}") from None
    try:
        return msgspec.json.decode(plaintext, type=value_type)
    except _DECODE_ERRORS as exc:
        raise E2EError(f"malformed sealed {what}: {exc}") from None


def seal_request(
    request: JobRequest, *, client_key: SecretKey, recipient: PublicKey, nonce: bytes
) -> JobRequest:
    """Return ``request`` with its private fields sealed to ``recipient`` (node or model key).

    Raises:
        E2EError: ``recipient`` is not a valid public key.
        Nip44Error: ``nonce`` is not 32 bytes.
    """
    sealed = SealedRequest(
        job_id=request.job_id,
        model=request.model,
        messages=request.messages,
        max_tokens=request.max_tokens,
        temperature=request.temperature,
        top_p=request.top_p,
        stop=request.stop,
        seed=request.seed,
    )
    payload = _seal(sealed, session_key(client_key, recipient), nonce)
    return JobRequest(
        job_id=request.job_id,
        model=request.model,
        messages=(),
        client_pubkey=client_key.public_key.hex(),
        encrypted=payload,
        encrypted_to=recipient.hex(),
    )


def open_request(request: JobRequest, *, recipient_key: SecretKey) -> JobRequest:
    """Return the plain request inside a sealed one (``encrypted`` cleared).

    Raises:
        E2EError: not sealed, sealed to another key, a bad client key, clear private fields
            beside the payload, an undecryptable payload, or copies of ``job_id``/``model``
            that differ from the clear ones.
    """
    if not request.encrypted:
        raise E2EError("request is not sealed")
    if request.encrypted_to != recipient_key.public_key.hex():
        raise E2EError("request is sealed to another key")
    if request.messages or request.stop or request.max_tokens is not None:
        raise E2EError("sealed request also carries clear fields")
    try:
        client = PublicKey.from_hex(request.client_pubkey)
    except KeyFormatError:
        raise E2EError("sealed request has no valid client_pubkey") from None
    key = session_key(recipient_key, client)
    sealed = _open(request.encrypted, key, SealedRequest, "request")
    if sealed.job_id != request.job_id or sealed.model != request.model:
        raise E2EError("sealed request is bound to another job or model")
    return msgspec.structs.replace(
        request,
        messages=sealed.messages,
        max_tokens=sealed.max_tokens,
        temperature=sealed.temperature,
        top_p=sealed.top_p,
        stop=sealed.stop,
        seed=sealed.seed,
        encrypted="",
    )


class ChunkSealer:
    """Node side: seals each chunk of one job, numbering them from 0."""

    def __init__(self, key: bytes, job_id: str) -> None:
        self._key: Final = key
        self._job_id: Final = job_id
        self._seq = 0

    def seal(self, text: str, nonce: bytes) -> Chunk:
        """Return the encrypted chunk carrying ``text``; ``nonce`` is 32 fresh random bytes.

        Raises:
            Nip44Error: ``nonce`` is not 32 bytes.
        """
        sealed = SealedChunk(job_id=self._job_id, seq=self._seq, text=text)
        chunk = Chunk(job_id=self._job_id, text="", encrypted=_seal(sealed, self._key, nonce))
        self._seq += 1
        return chunk


class ChunkOpener:
    """Client side: opens each chunk of one job and checks that none is missing or replayed."""

    def __init__(self, key: bytes, job_id: str) -> None:
        self._key: Final = key
        self._job_id: Final = job_id
        self._seq = 0

    def open(self, chunk: Chunk) -> str:
        """Return the text of the next sealed chunk.

        Raises:
            E2EError: a clear chunk, an undecryptable payload, another job, or a sequence
                number other than the next one.
        """
        if not chunk.encrypted or chunk.text:
            raise E2EError("chunk of a sealed job is not sealed")
        sealed = _open(chunk.encrypted, self._key, SealedChunk, "chunk")
        if sealed.job_id != self._job_id or chunk.job_id != self._job_id:
            raise E2EError("sealed chunk belongs to another job")
        if sealed.seq != self._seq:
            raise E2EError(f"sealed chunk {sealed.seq} arrived where {self._seq} was due")
        self._seq += 1
        return sealed.text
