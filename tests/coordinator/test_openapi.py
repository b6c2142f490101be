"""The OpenAPI document matches the app: every route and method is documented, and the
document is valid OpenAPI 3.1; /metrics and /health answer without a token."""

from __future__ import annotations

import re

from openapi_spec_validator import validate

from coordinator.openapi import openapi_document
from tests.coordinator.fakes import MODEL
from tests.coordinator.harness import Harness


def _app_routes(h: Harness) -> set[tuple[str, str]]:
    app = h.client.app
    out = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", rule.rule)
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            out.add((path, method.lower()))
    return out


async def test_every_route_is_documented_and_nothing_else(h: Harness) -> None:
    doc = await (await h.client.get("/openapi.json")).get_json()
    documented = {(path, method) for path, ops in doc["paths"].items() for method in ops}
    assert _app_routes(h) == documented


def test_the_document_is_valid_openapi() -> None:
    validate(openapi_document())


async def test_metrics_count_requests_jobs_and_nodes(h: Harness) -> None:
    h.nodes.add()
    await h.post_json("/v1/chat/completions",
                      {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]})
    await h.post_json("/v1/chat/completions", {"model": MODEL})
    r = await h.client.get("/metrics")
    assert r.status_code == 200
    text = (await r.get_data()).decode()
    assert ('infernet_http_requests_total{method="POST",route="/v1/chat/completions",'
            'status="200"} 1.0') in text
    assert ('infernet_http_requests_total{method="POST",route="/v1/chat/completions",'
            'status="400"} 1.0') in text
    assert f'infernet_jobs_total{{model="{MODEL}",outcome="completed"}} 1.0' in text
    assert f'infernet_tokens_total{{kind="completion",model="{MODEL}"}} 3.0' in text
    assert f'infernet_job_ttft_seconds_count{{model="{MODEL}"}} 1.0' in text
    assert f'infernet_job_latency_seconds_count{{model="{MODEL}"}} 1.0' in text
    assert "infernet_nodes_online 1.0" in text
    assert "infernet_queue_depth 0.0" in text


async def test_health_needs_no_token(h: Harness) -> None:
    body = await (await h.client.get("/health")).get_json()
    assert body == {"status": "ok", "peer_id": "16Uiu2HAmCoordinator", "nodes_online": 0}
