"""The coordinator's HTTP app (quart-trio): the OpenAI ``/v1`` API and the job API ``/api/v1``.

Owns: assembling the routes (`coordinator.http_openai`, `coordinator.http_jobs`), the
unauthenticated operational routes (``/health``, ``/metrics``, ``/openapi.json``), and what
every response gets: an error body in its API's shape for every failure (including Quart's
own 404/405/413 and anything unexpected, which is logged and answered 500 without detail),
the ``X-RateLimit-*`` headers of the caller's token, and a count in ``/metrics``.

Invariants: a bad request is a 4xx, never a 5xx; every response to an authenticated request
carries ``X-RateLimit-Limit``/``-Remaining``/``-Reset``.
"""

from __future__ import annotations

import logging

import trio
from quart import Response, g, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from coordinator import http_jobs, http_nodes, http_openai, http_registry
from coordinator.asgi_chat import ChatRoute
from coordinator.http_common import (
    ApiError,
    CoordinatorState,
    error_response,
    http_error_code,
    json_response,
    log_api_error,
)
from coordinator.metrics import CONTENT_TYPE
from coordinator.openapi import openapi_document
from coordinator.ratelimit import Decision

__all__ = ["ApiError", "CoordinatorState", "create_app"]

log = logging.getLogger("coordinator.api")

def create_app(state: CoordinatorState) -> QuartTrio:
    """Build the ASGI app bound to ``state``."""
    app = QuartTrio("infernet-coordinator")
    app.config["MAX_CONTENT_LENGTH"] = state.max_body
    app.config["RESPONSE_TIMEOUT"] = None  # long generations stream for minutes
    app.config["BODY_TIMEOUT"] = 60  # a client trickling its body is cut off after a minute

    @app.errorhandler(ApiError)
    async def _api_error(exc: ApiError) -> Response:
        log_api_error(request.method, request.path, exc)
        return error_response(exc.code, str(exc), exc.status, exc.headers)

    @app.errorhandler(HTTPException)
    async def _http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        return error_response(http_error_code(status), exc.description or exc.name, status)

    @app.errorhandler(Exception)
    async def _unexpected(exc: Exception) -> Response:
        log.exception("%s %s failed", request.method, request.path)
        return error_response("internal_error", "an internal error occurred", 500)

    @app.after_request
    async def _finish(response: Response) -> Response:
        rate: Decision | None = g.get("rate")
        if rate is not None:
            response.headers.update(rate.headers())
        rule = request.url_rule.rule if request.url_rule is not None else "unmatched"
        state.metrics.request(rule, request.method, response.status_code)
        return response

    @app.get("/health")
    async def health() -> Response:
        return json_response({"status": "ok", "peer_id": state.peer_id,
                              "nodes_online": len(state.table.online(trio.current_time()))})

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(state.metrics.render(), status=200, content_type=CONTENT_TYPE)

    @app.get("/openapi.json")
    async def openapi() -> Response:
        return json_response(openapi_document())

    http_openai.register(app, state)
    http_jobs.register(app, state)
    http_nodes.register(app, state)
    http_registry.register(app, state)
    # Quart's documented place for ASGI middleware; the hot route skips Quart (see there).
    app.asgi_app = ChatRoute(  # type: ignore[method-assign]
        app.asgi_app, state, max_body=state.max_body, body_timeout=app.config["BODY_TIMEOUT"])
    return app
