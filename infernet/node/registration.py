"""Registering a node with its coordinator, and the node's signed HTTP calls.

Owns: `register_node` (``POST /api/v1/nodes/register`` with the user's `NodeDelegation`
and the rotation chain, ``specs/http-api.md`` §"Node registry"), and `signed_call`, one
``X-Infernet-Auth``-signed request (``specs/auth.md``) that the command poller shares.

Invariants: every call has a timeout; a failure is a `RegistrationError` whose message says
what to do (configure a coordinator, start it, start the node so it announces, renew the
delegation); the signed target is exactly the path sent.
"""

from __future__ import annotations

import base64
import time
from pathlib import Path
from typing import Any, Final, cast, get_args

import httpx
import msgspec

from infernet.node.config import NodeConfig
from infernet.node.identity import load_authority, load_delegation, load_rotations, rotations_wire
from infernet.node.receipt_submit import signed_request
from infernet.protocol.delegation import encode_signed
from infernet.protocol.errors import ErrorCode, InfernetError, SignatureError
from infernet.protocol.keys import SecretKey

__all__ = ["REGISTER_PATH", "RegistrationError", "register_node", "signed_call"]

REGISTER_PATH: Final = "/api/v1/nodes/register"
DEFAULT_TIMEOUT: Final = 10.0


class RegistrationError(InfernetError):
    """Raised when the coordinator cannot be reached or refuses a node's signed call.

    ``code`` is the coordinator's error code (``unauthorized``, ``bad_request``...), or
    ``node_disconnected`` when it did not answer; the message says what to do.
    """


def _coordinator_url(config: NodeConfig) -> str:
    url = config.coordinator_url.rstrip("/")
    if not url:
        raise RegistrationError("no coordinator configured: run `infernet config set "
                                "coordinator_url https://…` first", code="bad_request")
    return url


async def signed_call(client: httpx.AsyncClient, key: SecretKey, method: str, path: str,
                      body: dict[str, Any] | None = None, *,
                      timeout: float = DEFAULT_TIMEOUT) -> dict[str, Any]:
    """Send one request signed by the node key; return the JSON answer.

    ``client`` has the coordinator as its ``base_url``. Cancel-safe (nothing is retried).

    Raises:
        RegistrationError: unreachable or timed out (``node_disconnected``), or an error
            answer (its code and message).
    """
    raw = msgspec.json.encode(body) if body is not None else b""
    try:
        r = await signed_request(client, key, method, str(client.base_url), path, raw,
                                 timeout=timeout)
    except httpx.HTTPError as exc:
        raise RegistrationError(f"coordinator {client.base_url} is unreachable ({exc!r}); "
                                "check coordinator_url and that it is running",
                                code="node_disconnected") from None
    try:
        doc = r.json()
    except ValueError:
        doc = {}
    if not isinstance(doc, dict):
        doc = {}
    if r.status_code >= 400:
        error = doc.get("error")
        code = cast("ErrorCode", error) if error in _CODES else "internal_error"
        message = doc.get("error_message") or f"HTTP {r.status_code}"
        raise RegistrationError(f"coordinator refused {method} {path}: {message}", code=code)
    return doc


_CODES: Final = frozenset(get_args(ErrorCode))


async def register_node(home: Path, config: NodeConfig, key: SecretKey, *,
                        timeout: float = DEFAULT_TIMEOUT,
                        transport: httpx.AsyncBaseTransport | None = None) -> dict[str, Any]:
    """Register this node (its delegation and rotations) with ``config.coordinator_url``.

    Returns the coordinator's answer: ``node_id``, ``user_pubkey``, ``registered_at``...
    A coordinator accepts the node key once it has seen the node's announcement, or when
    an earlier key of the same chain is registered (after `infernet keys rotate`).

    Raises:
        RegistrationError: no coordinator configured (``bad_request``), unreachable, or
            refused (an unknown key: start the node first).
        ConfigError: no delegation on disk, or it does not cover ``key``.
        SignatureError: the stored chain does not verify.
    """
    url = _coordinator_url(config)
    load_authority(home, int(time.time()))  # fail here, with the fix, not at the coordinator
    signed = load_delegation(home)
    if signed is None:  # load_authority raised already; keeps mypy honest
        raise SignatureError("no delegation")
    body = {"delegation": base64.b64encode(encode_signed(signed)).decode(),
            "rotations": rotations_wire(load_rotations(home))}
    async with httpx.AsyncClient(base_url=url, transport=transport, timeout=timeout) as client:
        return await signed_call(client, key, "POST", REGISTER_PATH, body, timeout=timeout)
