"""The Python client: chat through a coordinator over HTTP, or straight to a peer over libp2p.

Owns: `open_peer_client` (a short-lived libp2p host that dials one node and runs jobs on it
with the job protocol, no coordinator involved) and `coordinator_chat` (the coordinator's
OpenAI-compatible API with httpx). Both yield text as it is generated and end with a
`ChatResult` carrying the engine's usage and the serving node's pubkey.

A peer job's receipt (in its final frame) is checked before the result is returned: the
node's signature, and that it names this job and hashes the prompt sent and the text
received. A sealed job is sealed to the node that will serve it: when the dialled peer does
not serve the model itself, the client asks it (directory protocol) which node does and
seals to that node's key, so the relay in between carries ciphertext only.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass

import httpx
from httpx_sse import aconnect_sse

from infernet.mesh.directory import ask_directory
from infernet.mesh.host import MeshHost, open_host
from infernet.mesh.jobs import open_job
from infernet.protocol.e2e import ChunkOpener, seal_request, session_key
from infernet.protocol.errors import (
    ERRORS,
    ErrorCode,
    InfernetError,
    JobFailed,
    TransportError,
)
from infernet.protocol.frames import JobRequest, Message
from infernet.protocol.keys import (
    PublicKey,
    SecretKey,
    peer_id_from_base58,
    public_key_from_peer_id_bytes,
)
from infernet.protocol.receipt import verify_job_receipt

__all__ = ["ChatResult", "PeerClient", "coordinator_chat", "open_peer_client"]

log = logging.getLogger("infernet.client")


@dataclass(frozen=True, slots=True)
class ChatResult:
    """How a chat ended: usage as counted by the engine, and who served it."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    node_pubkey: str
    receipt_id: str = ""  # the node-signed receipt's id ("" when the node signs none)


def _messages(prompt: str | Sequence[tuple[str, str]]) -> tuple[Message, ...]:
    if isinstance(prompt, str):
        return (Message(role="user", content=prompt),)
    return tuple(Message(role=r, content=c) for r, c in prompt)


class PeerClient:
    """Runs jobs on one connected node."""

    def __init__(self, mesh: MeshHost, peer_id: str, key: SecretKey) -> None:
        self.mesh = mesh
        self.peer_id = peer_id
        self.key = key
        self.result: ChatResult | None = None

    async def stream_chat(
        self,
        model: str,
        prompt: str | Sequence[tuple[str, str]],
        *,
        max_tokens: int | None = None,
        temperature: float | None = None,
        read_timeout: float = 60.0,
        encrypt: bool = False,
    ) -> AsyncGenerator[str, None]:
        """Yield the answer's text as it arrives; then ``self.result`` holds the usage.

        ``encrypt`` seals the prompt and every chunk end to end between this client's key
        and the node's (NIP-44, specs/job-protocol.md §8): relays see only ciphertext.

        Raises:
            JobFailed: the node refused or failed the job (``code`` says why).
            TransportError: the node went away or went silent.
        """
        messages = _messages(prompt)
        request = JobRequest(job_id=secrets.token_hex(12), model=model, messages=messages,
                             max_tokens=max_tokens, temperature=temperature,
                             client_pubkey=self.key.public_key.hex())
        opener = None
        sealed_to: str | None = None
        if encrypt:
            node = await self._recipient(model)
            sealed_to = node.hex()
            request = seal_request(request, client_key=self.key, recipient=node,
                                   nonce=secrets.token_bytes(32))
            opener = ChunkOpener(session_key(self.key, node), request.job_id).open
        parts: list[str] = []
        async with open_job(self.mesh, self.peer_id, request, read_timeout=read_timeout) as call:
            accepted = await call.accepted(read_timeout)
            async with aclosing(call.chunks(opener)) as chunks:
                async for text in chunks:
                    parts.append(text)
                    yield text
            final = call.final
        if final is None:
            raise JobFailed("the node ended the job without a final frame", code="internal_error")
        text = "".join(parts)
        receipt_id, served_by = "", accepted.node_pubkey
        if final.receipt is not None:  # RemoteProtocolError/SignatureError when it lies
            # A relay may re-route a clear job after forwarding the first node's `accepted`
            # (that node died before its first token): the receipt's signer is who served.
            verified = verify_job_receipt(final.receipt, job_id=request.job_id,
                                          node_pubkey=sealed_to, messages=messages,
                                          output=text)
            receipt_id, served_by = verified.receipt_id, verified.node.hex()
        self.result = ChatResult(text, final.prompt_tokens, final.completion_tokens,
                                 final.finish_reason, served_by, receipt_id)

    async def _recipient(self, model: str) -> PublicKey:
        """The key of the node that will serve ``model``: the dialled peer when it serves
        it, else the best node it knows (directory protocol).

        Raises:
            JobFailed: no node serves ``model`` (``model_not_found``).
        """
        peer = public_key_from_peer_id_bytes(peer_id_from_base58(self.peer_id))
        try:
            found = await ask_directory(self.mesh, self.peer_id, model)
        except TransportError as exc:  # a peer without the directory: it must serve itself
            log.info("directory query to %s failed (%s); sealing to the peer", self.peer_id, exc)
            return peer
        if not found:
            raise JobFailed(f"no node reachable through this peer serves {model!r}",
                            code="model_not_found")
        if any(a.pubkey == peer for a in found):
            return peer
        return found[0].pubkey  # the peer lists the nodes it would route to, best first

    async def chat(self, model: str, prompt: str | Sequence[tuple[str, str]], *,
                   max_tokens: int | None = None) -> ChatResult:
        """Run a job to the end and return its result.

        Raises:
            JobFailed, TransportError: as `stream_chat`.
        """
        async with aclosing(self.stream_chat(model, prompt, max_tokens=max_tokens)) as stream:
            async for _ in stream:
                pass
        if self.result is None:
            raise JobFailed("no result", code="internal_error")
        return self.result


@asynccontextmanager
async def open_peer_client(addr: str, *, key: SecretKey | None = None) -> AsyncIterator[PeerClient]:
    """Connect to the node at ``addr`` (``/ip4/…/tcp/…/p2p/…``) with a throwaway libp2p host.

    Raises:
        TransportError: malformed address (bad_request) or the node is unreachable.
    """
    key = key or SecretKey.generate().even_y()
    async with open_host(key.secret_bytes(), listen_host="127.0.0.1", port=0) as mesh:
        peer_id = await mesh.connect(addr)
        yield PeerClient(mesh, peer_id, key)


async def coordinator_chat(
    base_url: str,
    token: str,
    model: str | None,
    prompt: str | Sequence[tuple[str, str]],
    *,
    max_tokens: int | None = None,
    timeout: float = 120.0,
) -> AsyncGenerator[str | ChatResult, None]:
    """Stream a chat through a coordinator's ``/v1`` API; the last item is a `ChatResult`.

    ``model=None`` picks the first model the coordinator lists.

    Raises:
        InfernetError: the coordinator answered an error (its code), or is unreachable.
    """
    headers = {"Authorization": f"Bearer {token}"}
    base = base_url.rstrip("/")
    base = base if base.endswith("/v1") else f"{base}/v1"
    try:
        async with httpx.AsyncClient(timeout=httpx.Timeout(10.0, read=timeout)) as client:
            if model is None:
                listing = await client.get(f"{base}/models", headers=headers)
                _raise_for_error(listing)
                models = [m["id"] for m in listing.json().get("data", [])]
                if not models:
                    raise InfernetError("the coordinator lists no models", code="no_capacity")
                model = models[0]
            messages = [{"role": m.role, "content": m.content} for m in _messages(prompt)]
            body = {"model": model, "messages": messages, "stream": True,
                    "stream_options": {"include_usage": True}, "max_tokens": max_tokens}
            async for item in _stream(client, f"{base}/chat/completions", body, headers):
                yield item
    except httpx.HTTPError as exc:
        raise InfernetError(f"coordinator at {base_url} unreachable: {exc}",
                            code="backend_unavailable") from None


async def _stream(client: httpx.AsyncClient, url: str, body: dict[str, object],
                  headers: dict[str, str]) -> AsyncGenerator[str | ChatResult, None]:
    parts: list[str] = []
    usage: dict[str, int] = {}
    finish = "stop"
    async with aconnect_sse(client, "POST", url, json=body, headers=headers) as events:
        if events.response.status_code != 200:
            await events.response.aread()
            _raise_for_error(events.response)
        node = events.response.headers.get("x-infernet-node", "")
        async for sse in events.aiter_sse():
            if sse.data == "[DONE]":
                break
            chunk = json.loads(sse.data)
            if "error" in chunk:
                err = chunk["error"]
                raise InfernetError(err.get("message", ""), code=_code(err.get("code")))
            for choice in chunk.get("choices", []):
                finish = choice.get("finish_reason") or finish
                if text := choice.get("delta", {}).get("content"):
                    parts.append(text)
                    yield text
            usage = chunk.get("usage") or usage
    yield ChatResult("".join(parts), usage.get("prompt_tokens", 0),
                     usage.get("completion_tokens", 0), finish, node)


def _code(code: object) -> ErrorCode:
    return next((known for known in ERRORS if known == code), "internal_error")


def _raise_for_error(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    try:
        err = response.json()["error"]
    except (ValueError, KeyError, TypeError):
        raise InfernetError(f"coordinator answered {response.status_code}: {response.text[:200]}",
                            code="internal_error") from None
    raise InfernetError(err.get("message", ""), code=_code(err.get("code")))
