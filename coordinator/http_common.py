"""What every HTTP route shares: the coordinator's state, errors, auth and rate limiting.

Owns: `CoordinatorState` (what routes work with), `ApiError` (raised in a route to answer
with an error body in the shape of the route's API: OpenAI's nested object under ``/v1``,
the flat ``{"error", "error_message"}`` under ``/api/v1``), `authenticate` and
`count_request`, which leave the token's ``X-RateLimit-*`` values on the request context
for `coordinator.app` to add to the response, whatever its status.

The Quart-free parts of those (`check_token`, `peek_rate`, `hit_rate`, `refuse_if_limited`,
`error_body`, `log_api_error`, `http_error_code`) are shared with `coordinator.asgi_chat`,
which serves the hot route without Quart, so both answer alike.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec
from quart import Response, g, request

from coordinator import job_api, openai_api
from coordinator.auth import TokenCache, limits_for
from coordinator.jobs import JobManager
from coordinator.ledger import Ledger
from coordinator.metrics import Metrics
from coordinator.ratelimit import Decision, Limits, RateLimiter
from coordinator.router import Router
from coordinator.store import TokenRecord
from coordinator.store_writer import AsyncStore
from infernet.mesh.peer_table import PeerTable
from infernet.protocol.auth import AuthVerifier
from infernet.protocol.errors import ErrorCode, info
from infernet.protocol.keys import PublicKey

__all__ = ["ApiError", "CoordinatorState", "authenticate", "check_token", "count_request",
           "error_body", "error_response", "hit_rate", "http_error_code", "json_response",
           "log_api_error", "node_key_lookup", "peek_rate", "read_body", "refuse_if_limited"]

log = logging.getLogger("coordinator.api")

_HTTP_CODES: Final[dict[int, ErrorCode]] = {400: "bad_request", 401: "unauthorized",
                                            404: "not_found", 405: "bad_request",
                                            413: "bad_request", 414: "bad_request",
                                            431: "bad_request"}


@dataclass(slots=True)
class CoordinatorState:
    """What the routes work with."""

    table: PeerTable
    store: AsyncStore
    router: Router
    jobs: JobManager
    tokens: TokenCache
    limiter: RateLimiter
    metrics: Metrics
    peer_id: str
    bootstrap_addrs: Callable[[], Sequence[str]]
    ledger: Ledger
    node_auth: AuthVerifier  # X-Infernet-Auth for node-facing routes
    default_limits: Limits = field(default_factory=Limits)
    max_body: int = 4 << 20
    coordinator_pubkey: str = ""  # x-only hex key that countersigns receipts


def node_key_lookup(table: PeerTable) -> Callable[[str], PublicKey | None]:
    """Keys of the nodes known from verified announcements, by pubkey hex (for
    `AuthVerifier`): a node signs its requests with the key it announces with. A key the
    table retired is looked up too, so that a request it really signed is told why it is
    refused (``coordinator.http_nodes``), while a forged one still fails its signature."""

    def lookup(key_id: str) -> PublicKey | None:
        entry = table.get(key_id)
        if entry is not None:
            return entry.announcement.pubkey
        return PublicKey.from_hex(key_id) if table.is_retired(key_id) else None

    return lookup


class ApiError(Exception):
    """Raised inside a route to answer with an error body (and optional headers)."""

    def __init__(self, code: ErrorCode, message: str | None = None, status: int | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message or info(code).message)
        self.code = code
        self.status = status or info(code).status
        self.headers = headers or {}


def json_response(body: dict[str, Any], status: int = 200,
                  headers: dict[str, str] | None = None) -> Response:
    """A JSON response encoded by msgspec."""
    return Response(msgspec.json.encode(body), status=status, content_type="application/json",
                    headers=headers)


def error_body(path: str, code: ErrorCode, message: str) -> dict[str, Any]:
    """The error body of the API ``path`` belongs to."""
    if path.startswith("/api/"):
        return job_api.error_body(code, message)
    return openai_api.error_body(code, message)


def error_response(code: ErrorCode, message: str, status: int,
                   headers: dict[str, str] | None = None) -> Response:
    """The error body of the API the current request belongs to."""
    return json_response(error_body(request.path, code, message), status, headers)


def log_api_error(method: str, path: str, exc: ApiError) -> None:
    """Log an answered error: a warning when it is the server's (5xx), else info."""
    level = logging.WARNING if exc.status >= 500 else logging.INFO
    log.log(level, "%s %s -> %d %s: %s", method, path, exc.status, exc.code, exc)


def http_error_code(status: int) -> ErrorCode:
    """The error code of an HTTP-level refusal (Quart's own 404/405/413...)."""
    return _HTTP_CODES.get(status, "internal_error" if status >= 500 else "bad_request")


async def check_token(state: CoordinatorState, authorization: str) -> TokenRecord:
    """The live token an ``Authorization`` header value names.

    Raises:
        ApiError: ``unauthorized`` for a missing, unknown or revoked token.
    """
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError("unauthorized", "missing bearer token: send 'Authorization: Bearer <token>'")
    record = await state.tokens.check(token.strip())
    if record is None:
        raise ApiError("unauthorized", "invalid or revoked API token")
    return record


def peek_rate(state: CoordinatorState, token: TokenRecord) -> Decision:
    """The token's rate-limit state now, without counting a request."""
    return state.limiter.peek(token.id, limits_for(token, state.default_limits), time.time())


def hit_rate(state: CoordinatorState, token: TokenRecord) -> Decision:
    """Count a job submission against the token's limits, if it fits (see
    `refuse_if_limited`)."""
    return state.limiter.hit(token.id, limits_for(token, state.default_limits), time.time())


def refuse_if_limited(state: CoordinatorState, decision: Decision) -> None:
    """Raises:
        ApiError: ``rate_limited`` (429, with ``Retry-After``) when ``decision`` refused.
    """
    if not decision.allowed:
        state.metrics.rate_limited.inc()
        raise ApiError("rate_limited",
                       f"rate limit of {decision.limit} requests reached for this token; "
                       f"retry in {decision.retry_after} s")


async def authenticate(state: CoordinatorState) -> TokenRecord:
    """The caller's token; its rate-limit state goes on the response.

    Raises:
        ApiError: ``unauthorized`` for a missing, unknown or revoked token.
    """
    record = await check_token(state, request.headers.get("Authorization", ""))
    g.rate = peek_rate(state, record)
    return record


def count_request(state: CoordinatorState, token: TokenRecord) -> Decision:
    """Count a job submission against the token's limits.

    Raises:
        ApiError: ``rate_limited`` (429, with ``Retry-After``) when a window is full.
    """
    decision = hit_rate(state, token)
    g.rate = decision
    refuse_if_limited(state, decision)
    return decision


async def read_body(state: CoordinatorState) -> bytes:
    """The request body, at most ``state.max_body`` bytes (Quart answers 413 past it)."""
    data = await request.get_data(as_text=False)
    return data if isinstance(data, bytes) else data.encode()
