"""The job API (``/api/v1``) on the real app, in process, with scripted nodes.

Covers the lifecycle (submit → pending → processing → completed | failed), SSE on submit
and on attach, listing, models, node status, bootstrap, re-queue before the first token,
timeouts, capacity waits, and the error bodies of this API.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import trio

from coordinator.jobs import JobSettings
from infernet.protocol.keys import encode_npub
from tests.coordinator.fakes import MODEL, Script
from tests.coordinator.harness import Harness, open_harness
from tests.coordinator.harness import sse_data as events

USER = [{"role": "user", "content": "What is the capital of France?"}]


def text_of(got: list[Any]) -> str:
    return "".join(e["text"] for e in got if isinstance(e, dict) and "text" in e)


async def submit(h: Harness, **fields: Any) -> Any:
    return await h.post_json("/api/v1/jobs", {"model": MODEL, "messages": USER, **fields})


# --- submit and poll ------------------------------------------------------------------------


async def test_submit_returns_pending_then_the_job_completes_in_the_background(h: Harness) -> None:
    node = h.nodes.add()
    r = await submit(h)
    assert r.status_code == 202
    body = await r.get_json()
    assert body["status"] == "pending" and body["model"] == MODEL
    assert body["id"].startswith("job_") and body["created_at"].endswith("Z")
    assert r.headers["Location"] == f"/api/v1/jobs/{body['id']}"
    assert h.db.get_job(body["id"]) is not None  # in the store before the id was returned

    await h.finished(body["id"])
    r = await h.get(f"/api/v1/jobs/{body['id']}")
    assert r.status_code == 200
    job = await r.get_json()
    assert job["status"] == "completed"
    assert job["result"]["content"] == "Paris is the capital."
    assert job["result"]["usage"] == {"prompt_tokens": 7, "completion_tokens": 3,
                                      "total_tokens": 10}
    assert job["result"]["finish_reason"] == "stop"
    assert job["node_id"] == node.pubkey
    assert isinstance(job["latency_ms"], int) and job["completed_at"].endswith("Z")
    assert job["infernet"]["node_pubkey"] == node.pubkey
    assert job["infernet"]["node_npub"] == encode_npub(node.key.public_key)
    assert node.jobs[0].max_tokens == 512  # the job API's default

    stored = h.db.get_job(body["id"])
    assert stored is not None
    assert (stored.status, stored.result_text, stored.request) == (
        "completed", "Paris is the capital.", None)  # the prompt is forgotten once done


async def test_a_job_is_processing_while_its_node_works(h: Harness) -> None:
    gate = trio.Event()
    node = h.nodes.add(Script(gate=gate))
    job_id = (await (await submit(h)).get_json())["id"]
    live = h.live(job_id)
    while live.status == "pending":
        await live._changed.wait()
    job = await (await h.get(f"/api/v1/jobs/{job_id}")).get_json()
    assert (job["status"], job["node_id"]) == ("processing", node.pubkey)
    assert "result" not in job
    gate.set()
    await h.finished(job_id)
    assert (await (await h.get(f"/api/v1/jobs/{job_id}")).get_json())["status"] == "completed"


async def test_sampling_fields_reach_the_node(h: Harness) -> None:
    node = h.nodes.add()
    r = await submit(h, max_tokens=16, temperature=0.2, top_p=0.9, stop=["\n"], seed=5)
    await h.finished((await r.get_json())["id"])
    sent = node.jobs[0]
    assert (sent.max_tokens, sent.temperature, sent.top_p, sent.stop, sent.seed) == (
        16, 0.2, 0.9, ("\n",), 5)


async def test_other_tokens_cannot_see_a_job(h: Harness) -> None:
    h.nodes.add()
    job_id = (await (await submit(h)).get_json())["id"]
    other, _ = h.db.create_token("someone else")
    for path in (f"/api/v1/jobs/{job_id}", f"/api/v1/jobs/{job_id}/stream"):
        r = await h.get(path, token=other)
        assert r.status_code == 404
        assert (await r.get_json())["error"] == "not_found"
    r = await h.get("/api/v1/jobs/job_nope")
    assert r.status_code == 404
    assert "job_nope" in (await r.get_json())["error_message"]
    assert (await r.get_json())["error"] == "not_found"


# --- streams ------------------------------------------------------------------------------


async def test_stream_true_answers_sse_text_events(h: Harness) -> None:
    node = h.nodes.add()
    r = await submit(h, stream=True)
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("text/event-stream")
    assert r.headers["X-Infernet-Node"] == node.pubkey
    got = events(await r.get_data())
    assert got[:3] == [{"text": "Paris"}, {"text": " is"}, {"text": " the capital."}]
    summary = got[3]
    assert "text" not in summary and "error" not in summary
    assert summary["usage"]["total_tokens"] == 10
    assert summary["infernet"]["node_pubkey"] == node.pubkey
    assert got[4] == "[DONE]"


async def test_accept_event_stream_streams_without_stream_true(h: Harness) -> None:
    h.nodes.add()
    r = await submit(h, **{})
    assert r.status_code == 202
    r = await h.post_json("/api/v1/jobs", {"model": MODEL, "messages": USER},
                          Accept="text/event-stream")
    assert r.status_code == 200
    assert events(await r.get_data())[-1] == "[DONE]"


async def test_attach_to_a_finished_job_replays_it(h: Harness) -> None:
    h.nodes.add()
    job_id = (await (await submit(h)).get_json())["id"]
    await h.finished(job_id)
    r = await h.get(f"/api/v1/jobs/{job_id}/stream")
    got = events(await r.get_data())
    assert text_of(got) == "Paris is the capital."
    assert got[-1] == "[DONE]"


async def test_attach_to_a_job_only_in_the_store_replays_it(tmp_path: Path) -> None:
    settings = JobSettings(timeout=30, capacity_wait=0.3, keep_finished=0)
    async with open_harness(tmp_path, settings) as h:
        gate = trio.Event()
        h.nodes.add(Script(gate=gate))
        job_id = (await (await submit(h)).get_json())["id"]
        live = h.live(job_id)
        gate.set()
        await h.finished(job_id)
        assert live.status == "completed"
        assert h.state.jobs.get(job_id) is None  # evicted from memory
        got = events(await (await h.get(f"/api/v1/jobs/{job_id}/stream")).get_data())
        assert got[0] == {"text": "Paris is the capital."} and got[-1] == "[DONE]"
        job = await (await h.get(f"/api/v1/jobs/{job_id}")).get_json()
        assert job["result"]["content"] == "Paris is the capital."


async def test_attach_to_a_running_job_follows_it_from_the_start(h: Harness) -> None:
    gate = trio.Event()
    h.nodes.add(Script(gate=gate))
    job_id = (await (await submit(h)).get_json())["id"]
    got: list[Any] = []

    async def attach() -> None:
        r = await h.get(f"/api/v1/jobs/{job_id}/stream")
        got.extend(events(await r.get_data()))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(attach)
        await trio.testing.wait_all_tasks_blocked()
        assert got == []
        gate.set()
    assert text_of(got) == "Paris is the capital."
    assert got[-1] == "[DONE]"


async def test_a_node_lost_mid_stream_ends_the_stream_with_an_error_event(h: Harness) -> None:
    h.nodes.add(Script(lose_after_texts=1))
    r = await submit(h, stream=True)
    got = events(await r.get_data())
    assert got[0] == {"text": "Paris"}
    assert got[-1]["error"] == "node_disconnected" and got[-1]["message"]
    assert "[DONE]" not in got
    job_id = r.headers["X-Infernet-Job"]
    job = await (await h.get(f"/api/v1/jobs/{job_id}")).get_json()
    assert (job["status"], job["error"]) == ("failed", "node_disconnected")


# --- routing, re-queue, timeouts -------------------------------------------------------------


async def test_a_node_lost_before_its_first_token_is_replaced_transparently(h: Harness) -> None:
    flaky = h.nodes.add(Script(lose_after_accept=True), slots=8)  # the router's first pick
    good = h.nodes.add(slots=1)
    r = await submit(h, stream=True)
    assert r.status_code == 200
    assert r.headers["X-Infernet-Node"] == good.pubkey
    got = events(await r.get_data())
    assert text_of(got) == "Paris is the capital."
    assert len(flaky.jobs) == 1 and len(good.jobs) == 1
    stored = h.db.get_job(r.headers["X-Infernet-Job"])
    assert stored is not None
    assert (stored.status, stored.node_pubkey, stored.attempts) == ("completed", good.pubkey, 1)
    assert b"infernet_job_requeues_total 1.0" in h.state.metrics.render()


async def test_a_node_that_is_refusing_is_skipped(h: Harness) -> None:
    h.nodes.add(Script(refuse="backend_unavailable"), slots=8)
    good = h.nodes.add(slots=1)
    r = await submit(h, stream=True)
    assert r.headers["X-Infernet-Node"] == good.pubkey


async def test_unknown_model_is_404_and_no_node_is_503(h: Harness) -> None:
    r = await submit(h)
    assert r.status_code == 503
    assert (await r.get_json())["error"] == "no_capacity"
    h.nodes.add()
    r = await h.post_json("/api/v1/jobs", {"model": "nope", "messages": USER})
    assert r.status_code == 404
    body = await r.get_json()
    assert body["error"] == "model_not_found" and "nope" in body["error_message"]


async def test_a_busy_model_waits_briefly_then_is_503_for_a_stream(h: Harness) -> None:
    h.nodes.add(Script(refuse="no_capacity"))
    r = await submit(h, stream=True)
    assert r.status_code == 503
    assert (await r.get_json())["error"] == "no_capacity"


async def test_a_queued_job_waits_for_a_free_slot(h: Harness) -> None:
    gate = trio.Event()
    node = h.nodes.add(Script(gate=gate), slots=1)
    first = (await (await submit(h)).get_json())["id"]
    second = (await (await submit(h)).get_json())["id"]
    await trio.testing.wait_all_tasks_blocked()
    assert (h.live(first).status, h.live(second).status) == ("processing", "pending")
    assert node.open_now == 1 and h.state.router.queued() == 1
    gate.set()
    assert (await h.finished(second)).status == "completed"
    assert h.live(first).status == "completed"


async def test_a_job_past_its_timeout_fails_with_timeout(tmp_path: Path) -> None:
    async with open_harness(tmp_path, JobSettings(timeout=0.2, capacity_wait=0.1)) as h:
        node = h.nodes.add(Script(gate=trio.Event()))  # never answers
        job_id = (await (await submit(h)).get_json())["id"]
        job = await h.finished(job_id)
        assert (job.status, job.error_code) == ("failed", "timeout")
        assert node.cancelled == 1  # the node was told to stop
        stored = h.db.get_job(job_id)
        assert stored is not None and (stored.status, stored.error_code) == ("failed", "timeout")


async def test_pinning_a_node_or_weights(h: Harness) -> None:
    a = h.nodes.add(slots=8, weights_hash="sha256:aaa")
    b = h.nodes.add(slots=1, weights_hash="sha256:bbb")
    r = await submit(h, stream=True, node_id=encode_npub(b.key.public_key))
    assert r.headers["X-Infernet-Node"] == b.pubkey
    assert r.headers["X-Infernet-Weights"] == "sha256:bbb"
    r = await submit(h, stream=True, weights_hash="sha256:bbb")
    assert r.headers["X-Infernet-Node"] == b.pubkey
    r = await submit(h, stream=True, node_id=a.pubkey)
    assert r.headers["X-Infernet-Node"] == a.pubkey
    r = await submit(h, weights_hash="sha256:ccc")
    assert r.status_code == 404
    r = await submit(h, node_id="not-a-key")
    assert r.status_code == 400 and "node_id" in (await r.get_json())["error_message"]


# --- listing, models, nodes, bootstrap ------------------------------------------------------


async def test_list_jobs_is_the_callers_newest_first_with_filters(h: Harness) -> None:
    h.nodes.add()
    ids = []
    for _ in range(3):
        ids.append((await (await submit(h)).get_json())["id"])
        await h.finished(ids[-1])
    other, _ = h.db.create_token("other")
    await h.post_json("/api/v1/jobs", {"model": MODEL, "messages": USER}, token=other)

    listed = await (await h.get("/api/v1/jobs")).get_json()
    assert [j["id"] for j in listed["jobs"]] == ids[::-1]
    assert all(j["status"] == "completed" for j in listed["jobs"])
    assert len((await (await h.get("/api/v1/jobs?limit=2")).get_json())["jobs"]) == 2
    assert (await (await h.get("/api/v1/jobs?status=failed")).get_json())["jobs"] == []
    assert len((await (await h.get("/api/v1/jobs?status=all")).get_json())["jobs"]) == 3
    since = await (await h.get("/api/v1/jobs?since=2999-01-01T00:00:00Z")).get_json()
    assert since["jobs"] == []
    since = await (await h.get("/api/v1/jobs?since=2000-01-01T00:00:00%2B02:00")).get_json()
    assert len(since["jobs"]) == 3
    for bad in ("limit=0", "limit=101", "limit=x", "status=done", "since=yesterday"):
        r = await h.get(f"/api/v1/jobs?{bad}")
        assert r.status_code == 400, bad
        assert (await r.get_json())["error"] == "bad_request"


async def test_models_list_nodes_and_measured_speed(h: Harness) -> None:
    h.nodes.add()
    h.nodes.add(models=(MODEL, "other-model"))
    body = await (await h.get("/api/v1/models")).get_json()
    assert body == {"models": [
        {"id": MODEL, "nodes": 2, "avg_tokens_per_second": None},
        {"id": "other-model", "nodes": 1, "avg_tokens_per_second": None}]}
    job_id = (await (await submit(h)).get_json())["id"]
    await h.finished(job_id)
    body = await (await h.get("/api/v1/models")).get_json()
    assert body["models"][0]["avg_tokens_per_second"] == 42.0


async def test_node_status_needs_no_token(h: Harness) -> None:
    node = h.nodes.add()
    r = await h.client.get(f"/api/v1/nodes/{node.pubkey}/status")
    body = await r.get_json()
    assert (body["status"], body["models"], body["node_id"]) == ("online", [MODEL], node.pubkey)
    npub = encode_npub(node.key.public_key)
    assert (await (await h.client.get(f"/api/v1/nodes/{npub}/status")).get_json())[
        "status"] == "online"
    h.state.table.mark_disconnected(node.peer_id)
    body = await (await h.client.get(f"/api/v1/nodes/{node.pubkey}/status")).get_json()
    assert body["status"] == "offline" and body["last_seen"].endswith("Z")
    unknown = await (await h.client.get(f"/api/v1/nodes/{'ab' * 32}/status")).get_json()
    assert unknown == {"node_id": "ab" * 32, "status": "offline", "last_seen": None}
    assert (await h.client.get("/api/v1/nodes/zzz/status")).status_code == 400


async def test_bootstrap_lists_the_coordinator(h: Harness) -> None:
    body = await (await h.client.get("/api/v1/bootstrap")).get_json()
    assert body["coordinator"]["peer_id"] == "16Uiu2HAmCoordinator"
    assert body["coordinator"]["addrs"][0].startswith("/ip4/")
    assert body["peers"] == []


async def test_a_json_body_is_read_whatever_its_content_type(h: Harness) -> None:
    h.nodes.add()
    body = json.dumps({"model": MODEL, "messages": USER}).encode()
    r = await h.client.post("/api/v1/jobs", data=body, headers={  # what `curl -d` sends
        **h.auth(), "Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 202
