"""The OpenAPI 3.1 document of the coordinator, served at ``GET /openapi.json``.

Owns: a hand-written description of every route `coordinator.app` serves, its parameters,
bodies and error codes. ``tests/coordinator/test_openapi.py`` checks that every route of the
app is documented with its methods and that the document is valid OpenAPI 3.1; the
normative prose is ``specs/http-api.md``.

Pure: builds a fresh dict on each call (no module state to mutate).
"""

from __future__ import annotations

from typing import Any

from coordinator.job_api import DEFAULT_MAX_TOKENS, MAX_TOKENS

__all__ = ["openapi_document"]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int, flat: bool = True) -> dict[str, Any]:
    schema = _ref("JobApiError" if flat else "OpenAIError")
    text = {400: "Bad request (`bad_request`)",
            401: "Missing or invalid credentials (`unauthorized`)",
            404: "Not found", 413: "Body over 4 MiB (`bad_request`)",
            409: "The job has not ended yet; send again later (`bad_request`)",
            429: "Rate limited (`rate_limited`); see `Retry-After`",
            502: "The node failed (`node_disconnected`, `protocol_error`)",
            503: "No node could take the job (`no_capacity`)", 504: "Timed out (`timeout`)"}
    return {str(s): _json(schema, text[s]) for s in statuses}


_SSE = {"text/event-stream": {"schema": {"type": "string"}}}
_AUTH: list[dict[str, list[str]]] = [{"bearer": []}]
_RATE_HEADERS = {
    "X-RateLimit-Limit": {"schema": {"type": "integer"},
                          "description": "Requests allowed in the binding window"},
    "X-RateLimit-Remaining": {"schema": {"type": "integer"}},
    "X-RateLimit-Reset": {"schema": {"type": "integer"},
                          "description": "Unix time when that window is empty again"},
}
_JOB_ID = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}
_NODE_ID = {"name": "node_id", "in": "path", "required": True, "schema": {"type": "string"},
            "description": "the node's public key, hex or npub"}
_NODE_AUTH: list[dict[str, list[str]]] = [{"nodeAuth": []}]


def _schemas() -> dict[str, Any]:
    message = {"type": "object", "required": ["role", "content"], "additionalProperties": False,
               "properties": {"role": {"enum": ["system", "developer", "user", "assistant",
                                                "tool", "function"]},
                              "content": {"oneOf": [{"type": "string"}, {"type": "array"}]},
                              "name": {"type": "string"}}}
    usage = {"type": "object", "properties": {k: {"type": "integer"} for k in (
        "prompt_tokens", "completion_tokens", "total_tokens")}}
    provenance = {"type": "object", "description": "Served-by provenance",
                  "properties": {"job_id": {"type": "string"},
                                 "node_pubkey": {"type": ["string", "null"]},
                                 "node_npub": {"type": ["string", "null"]},
                                 "weights_hash": {"type": ["string", "null"]},
                                 "receipt_id": {"type": ["string", "null"]}}}
    return {
        "JobCreate": {
            "type": "object", "required": ["model", "messages"], "additionalProperties": False,
            "properties": {
                "model": {"type": "string", "minLength": 1, "maxLength": 256},
                "messages": {"type": "array", "minItems": 1, "maxItems": 1024,
                             "items": message},
                "max_tokens": {"type": "integer", "minimum": 1, "maximum": MAX_TOKENS,
                               "default": DEFAULT_MAX_TOKENS},
                "temperature": {"type": "number", "minimum": 0, "maximum": 2},
                "top_p": {"type": "number", "minimum": 0, "maximum": 1},
                "stop": {"oneOf": [{"type": "string"},
                                   {"type": "array", "items": {"type": "string"},
                                    "maxItems": 16}]},
                "seed": {"type": "integer"},
                "stream": {"type": "boolean", "default": False},
                "node_id": {"type": "string", "description": "pin to a node (hex or npub)"},
                "weights_hash": {"type": "string", "description": "pin exact weights"}}},
        "JobAccepted": {"type": "object", "required": ["id", "status"], "properties": {
            "id": {"type": "string"}, "object": {"const": "job"},
            "status": {"const": "pending"}, "model": {"type": "string"},
            "created_at": {"type": "string", "format": "date-time"}}},
        "Job": {"type": "object", "required": ["id", "status", "model", "created_at"],
                "properties": {
                    "id": {"type": "string"}, "object": {"const": "job"},
                    "status": {"enum": ["pending", "processing", "completed", "failed"]},
                    "model": {"type": "string"},
                    "created_at": {"type": "string", "format": "date-time"},
                    "completed_at": {"type": "string", "format": "date-time"},
                    "node_id": {"type": ["string", "null"]},
                    "result": {"type": "object", "properties": {
                        "content": {"type": "string"}, "finish_reason": {"type": "string"},
                        "usage": usage}},
                    "error": {"type": "string"}, "error_message": {"type": "string"},
                    "latency_ms": {"type": "integer"}, "ttft_ms": {"type": "number"},
                    "infernet": provenance}},
        "JobList": {"type": "object", "properties": {
            "object": {"const": "list"}, "jobs": {"type": "array", "items": _ref("Job")}}},
        "JobApiError": {"type": "object", "required": ["error", "error_message"],
                        "properties": {"error": {"type": "string"},
                                       "error_message": {"type": "string"}}},
        "OpenAIError": {"type": "object", "required": ["error"], "properties": {
            "error": {"type": "object", "properties": {
                "code": {"type": "string"}, "message": {"type": "string"},
                "type": {"type": "string"}, "param": {"type": ["string", "null"]}}}}},
        "ChatCompletionRequest": {
            "type": "object", "required": ["model", "messages"],
            "description": "OpenAI's request. Honoured: model, messages, stream, "
                           "stream_options.include_usage, max_tokens, max_completion_tokens, "
                           "temperature, top_p, stop, seed; OpenAI's other parameters are "
                           "accepted and ignored (n must be 1); any other field is a 400.",
            "properties": {"model": {"type": "string"},
                           "messages": {"type": "array", "minItems": 1, "items": message},
                           "stream": {"type": "boolean"},
                           "max_tokens": {"type": "integer", "minimum": 1,
                                          "maximum": MAX_TOKENS}}},
        "ChatCompletion": {"type": "object", "description": "OpenAI's chat.completion, plus "
                           "`infernet` provenance", "properties": {"infernet": provenance}},
        "ModelList": {"type": "object", "properties": {"models": {"type": "array", "items": {
            "type": "object", "properties": {
                "id": {"type": "string"}, "nodes": {"type": "integer"},
                "avg_tokens_per_second": {"type": ["number", "null"]}}}}}},
        "NodeStatus": {"type": "object", "required": ["node_id", "status"], "properties": {
            "node_id": {"type": "string"}, "status": {"enum": ["online", "offline"]},
            "last_seen": {"type": ["string", "null"], "format": "date-time"},
            "models": {"type": "array", "items": {"type": "string"}},
            "user_pubkey": {"type": "string", "description": "the user key that delegated "
                            "the node (\"authorized by\"), once the node registered"},
            "user_npub": {"type": "string"},
            "registered_at": {"type": "string", "format": "date-time"}}},
        "Receipt": {"type": "object", "required": ["id", "job_id", "status", "receipt"],
                    "properties": {
                        "id": {"type": "string", "description": "hex SHA-256 of the body"},
                        "object": {"const": "cpr"}, "job_id": {"type": "string"},
                        "status": {"enum": ["countersigned", "rejected", "unwitnessed"]},
                        "reason": {"type": "string"},
                        "node_pubkey": {"type": "string"},
                        "coordinator_pubkey": {"type": "string"},
                        "model": {"type": "string"},
                        "input_tokens": {"type": "integer"},
                        "output_tokens": {"type": "integer"},
                        "value": {"type": "string", "description": "decimal, USDC"},
                        "platform_fee": {"type": "string"},
                        "node_amount": {"type": "string"},
                        "currency": {"type": "string"}, "chain": {"type": "string"},
                        "completed_at": {"type": "integer"},
                        "receipt": {"type": "string", "description":
                                    "base64 of the canonical CBOR envelope (specs/receipts.md)"}}},
        "Balance": {"type": "object", "properties": {
            "node_id": {"type": "string"}, "currency": {"const": "USDC"},
            "balances": {"type": "object", "additionalProperties": {"type": "string"}},
            "payouts": {"type": "array", "items": _ref("Payout")}}},
        "Payout": {"type": "object", "properties": {
            "id": {"type": "string"}, "chain": {"type": "string"},
            "address": {"type": "string"}, "amount": {"type": "string"},
            "status": {"enum": ["pending", "settled", "failed"]},
            "reference": {"type": "string"}}},
        "Bootstrap": {"type": "object", "properties": {
            "coordinator": {"type": "object", "properties": {
                "peer_id": {"type": "string"}, "pubkey": {"type": "string"},
                "addrs": {"type": "array", "items": {"type": "string"}}}},
            "peers": {"type": "array", "items": {"type": "object"}}}},
    }


def _paths() -> dict[str, Any]:
    ok = "OK"
    return {
        "/health": {"get": {"summary": "Liveness", "responses": {"200": {"description": ok}}}},
        "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {
            "200": {"description": ok, "content": {"text/plain": {"schema": {
                "type": "string"}}}}}}},
        "/openapi.json": {"get": {"summary": "This document",
                                  "responses": {"200": {"description": ok}}}},
        "/v1/models": {"get": {"summary": "Models served now (OpenAI shape)", "security": _AUTH,
                               "responses": {"200": {"description": ok},
                                             **_errors(401, flat=False)}}},
        "/v1/chat/completions": {"post": {
            "summary": "OpenAI chat completion (JSON or SSE with stream: true)",
            "security": _AUTH,
            "requestBody": {"required": True, "content": {"application/json": {
                "schema": _ref("ChatCompletionRequest")}}},
            "responses": {"200": {"description": "chat.completion or chat.completion.chunk "
                                  "events", "headers": _RATE_HEADERS,
                                  "content": {"application/json": {
                                      "schema": _ref("ChatCompletion")}, **_SSE}},
                          **_errors(400, 401, 404, 413, 429, 502, 503, 504, flat=False)}}},
        "/api/v1/jobs": {
            "post": {"summary": "Submit a job", "security": _AUTH,
                     "parameters": [{"name": "Accept", "in": "header", "schema": {
                         "type": "string"}, "description": "text/event-stream streams"}],
                     "requestBody": {"required": True, "content": {"application/json": {
                         "schema": _ref("JobCreate")}}},
                     "responses": {
                         "202": {**_json(_ref("JobAccepted"), "Accepted (stream false)"),
                                 "headers": _RATE_HEADERS},
                         "200": {"description": "SSE: data: {\"text\"}... data: [DONE]",
                                 "content": _SSE},
                         **_errors(400, 401, 404, 413, 429, 502, 503, 504)}},
            "get": {"summary": "The caller's jobs, newest first", "security": _AUTH,
                    "parameters": [
                        {"name": "limit", "in": "query", "schema": {
                            "type": "integer", "minimum": 1, "maximum": 100, "default": 20}},
                        {"name": "status", "in": "query", "schema": {"enum": [
                            "all", "pending", "processing", "completed", "failed"]}},
                        {"name": "since", "in": "query", "schema": {
                            "type": "string", "format": "date-time"}}],
                    "responses": {"200": _json(_ref("JobList"), ok), **_errors(400, 401)}}},
        "/api/v1/jobs/{job_id}": {"get": {
            "summary": "A job's state and result", "security": _AUTH, "parameters": [_JOB_ID],
            "responses": {"200": _json(_ref("Job"), ok), **_errors(401, 404)}}},
        "/api/v1/jobs/{job_id}/stream": {"get": {
            "summary": "Follow a running job or replay a finished one (SSE)",
            "security": _AUTH, "parameters": [_JOB_ID],
            "responses": {"200": {"description": "SSE events", "content": _SSE},
                          **_errors(401, 404)}}},
        "/api/v1/models": {"get": {"summary": "Models with node counts and speed",
                                   "security": _AUTH,
                                   "responses": {"200": _json(_ref("ModelList"), ok),
                                                 **_errors(401)}}},
        "/api/v1/nodes/{node_id}/status": {"get": {
            "summary": "Whether a node is online (no auth, for uptime monitors)",
            "parameters": [{"name": "node_id", "in": "path", "required": True,
                            "schema": {"type": "string"}}],
            "responses": {"200": _json(_ref("NodeStatus"), ok), **_errors(400)}}},
        "/api/v1/cprs/{receipt_id}": {"get": {
            "summary": "A job's Compute Payment Receipt, countersigned (the submitter's own)",
            "security": _AUTH,
            "parameters": [{"name": "receipt_id", "in": "path", "required": True,
                            "schema": {"type": "string"}}],
            "responses": {"200": _json(_ref("Receipt"), ok), **_errors(401, 404)}}},
        "/api/v1/receipts": {"post": {
            "summary": "A node sends a signed receipt (countersigned if routed here)",
            "security": _NODE_AUTH,
            "parameters": [{"name": "X-Infernet-Pubkey", "in": "header", "required": False,
                            "schema": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                            "description": "the uploading node's current key, when a key it "
                            "has rotated away signed the receipt (specs/auth.md §3)"}],
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "type": "object", "required": ["receipt"], "additionalProperties": False,
                "properties": {"receipt": {"type": "string", "description":
                               "base64 of the signed envelope (specs/receipts.md §4)"}}}}}},
            "responses": {"201": _json(_ref("Receipt"), "Countersigned"),
                          "200": _json(_ref("Receipt"), "Already countersigned"),
                          "202": _json(_ref("Receipt"), "Stored unwitnessed: the job was "
                                       "not routed here; never countersigned or paid"),
                          **_errors(400, 401, 409, 429)}}},
        "/api/v1/nodes/{node_id}/balance": {"get": {
            "summary": "A node's unclaimed balance per chain and its payouts",
            "security": _NODE_AUTH, "parameters": [_NODE_ID],
            "responses": {"200": _json(_ref("Balance"), ok), **_errors(400, 401, 429)}}},
        "/api/v1/nodes/{node_id}/payouts": {"post": {
            "summary": "Pay a node's balance on a chain (at or above the chain's minimum)",
            "security": _NODE_AUTH, "parameters": [_NODE_ID],
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "type": "object", "required": ["chain", "address"],
                "additionalProperties": False,
                "properties": {"chain": {"enum": ["base", "ethereum", "polygon", "solana"]},
                               "address": {"type": "string"}}}}}},
            "responses": {"201": _json(_ref("Payout"), "Paid"), **_errors(400, 401, 429)}}},
        **_registry_paths(),
        "/api/v1/bootstrap": {"get": {"summary": "Multiaddrs to join the mesh (no auth)",
                                      "responses": {"200": _json(_ref("Bootstrap"), ok)}}},
    }


def _registry_paths() -> dict[str, Any]:
    """The node registry and the owner-command queue (specs/http-api.md §5)."""
    b64 = {"type": "string", "description": "base64 of a signed record, canonical CBOR "
           "(specs/keys.md §4)"}
    command = {"type": "object", "properties": {
        "id": {"type": "string"}, "object": {"const": "owner_command"},
        "node_id": {"type": "string"}, "user_pubkey": {"type": "string"},
        "action": {"enum": ["model_install", "model_remove"]}, "model": {"type": "string"},
        "status": {"enum": ["pending", "done", "failed", "refused"]},
        "code": {"type": ["string", "null"]}, "message": {"type": ["string", "null"]},
        "created_at": {"type": "integer"}, "acked_at": {"type": ["integer", "null"]}}}
    cmd_id = {"name": "cmd_id", "in": "path", "required": True, "schema": {"type": "string"}}
    return {
        "/api/v1/nodes/register": {"post": {
            "summary": "Register a node: its user's delegation and its key rotations",
            "security": _NODE_AUTH,
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "type": "object", "required": ["delegation"], "additionalProperties": False,
                "properties": {"delegation": b64, "rotations": {
                    "type": "array", "maxItems": 16, "items": b64}}}}}},
            "responses": {"201": {"description": "Registered"},
                          "200": {"description": "Registration replaced"},
                          **_errors(400, 401, 429)}}},
        "/api/v1/user/nodes/{node_id}/commands": {"post": {
            "summary": "Queue an owner command signed by the node's registered user key",
            "parameters": [_NODE_ID],
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "type": "object", "required": ["command"], "additionalProperties": False,
                "properties": {"command": b64}}}}},
            "responses": {"201": _json(command, "Queued"),
                          "200": _json(command, "Queued before (its current state)"),
                          **_errors(400, 401, 404, 429)}}},
        "/api/v1/user/nodes/{node_id}/commands/{cmd_id}": {"get": {
            "summary": "An owner command's state and outcome",
            "parameters": [_NODE_ID, cmd_id],
            "responses": {"200": _json(command, "OK"), **_errors(400, 404)}}},
        "/api/v1/nodes/{node_id}/commands": {"get": {
            "summary": "The node's queued owner commands, oldest first",
            "security": _NODE_AUTH, "parameters": [_NODE_ID, {
                "name": "limit", "in": "query", "schema": {
                    "type": "integer", "minimum": 1, "maximum": 64, "default": 16}}],
            "responses": {"200": {"description": "OK"}, **_errors(400, 401, 429)}}},
        "/api/v1/nodes/{node_id}/commands/{cmd_id}/ack": {"post": {
            "summary": "The node reports what became of a command",
            "security": _NODE_AUTH, "parameters": [_NODE_ID, cmd_id],
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "type": "object", "required": ["status"], "additionalProperties": False,
                "properties": {"status": {"enum": ["done", "failed", "refused"]},
                               "code": {"type": "string"}, "message": {"type": "string"}}}}}},
            "responses": {"200": _json(command, "Recorded"), **_errors(400, 401, 404, 429)}}},
    }


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document."""
    return {
        "openapi": "3.1.0",
        "info": {"title": "Infernet coordinator", "version": "1.0.0",
                 "description": "OpenAI-compatible API and job API of an Infernet "
                                "coordinator. Normative text: specs/http-api.md."},
        "components": {"securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer"},
            "nodeAuth": {"type": "apiKey", "in": "header", "name": "X-Infernet-Auth",
                         "description": "v1.<sig>.<nonce>.<timestamp> by the node key "
                                        "(specs/auth.md)"}},
                       "schemas": _schemas()},
        "paths": _paths(),
    }
