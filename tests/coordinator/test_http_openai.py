"""The OpenAI routes on the real app, in process, with scripted nodes."""

from __future__ import annotations

import json
import sqlite3

import pytest
import trio

from tests.coordinator.fakes import MODEL, Script
from tests.coordinator.harness import Harness
from tests.coordinator.harness import sse_data as chunks

CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Capital of France?"}]}


async def test_non_stream_completion_with_provenance(h: Harness) -> None:
    node = h.nodes.add(weights_hash="sha256:w")
    r = await h.post_json("/v1/chat/completions", CHAT)
    assert r.status_code == 200
    body = await r.get_json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["content"] == "Paris is the capital."
    assert body["usage"] == {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
    job_id = body["infernet"]["job_id"]
    assert body["id"] == f"chatcmpl-{job_id}"
    assert body["infernet"]["node_pubkey"] == node.pubkey
    assert body["infernet"]["weights_hash"] == "sha256:w"
    assert r.headers["X-Infernet-Node"] == node.pubkey
    assert r.headers["X-Infernet-Job"] == job_id
    assert r.headers["X-Infernet-Weights"] == "sha256:w"
    stored = h.db.get_job(job_id)
    assert stored is not None and stored.source == "openai" and stored.status == "completed"


async def test_stream_with_usage(h: Harness) -> None:
    h.nodes.add()
    r = await h.post_json("/v1/chat/completions",
                          {**CHAT, "stream": True, "stream_options": {"include_usage": True}})
    got = chunks(await r.get_data())
    assert got[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in got[:-1]
                   if isinstance(c, dict) and c["choices"])
    assert text == "Paris is the capital."
    assert got[-3]["choices"][0]["finish_reason"] == "stop"
    assert got[-2]["choices"] == [] and got[-2]["usage"]["total_tokens"] == 10
    assert got[-1] == "[DONE]"


async def test_routing_errors_have_openai_bodies(h: Harness) -> None:
    r = await h.post_json("/v1/chat/completions", CHAT)
    assert r.status_code == 503
    assert (await r.get_json())["error"]["code"] == "no_capacity"
    h.nodes.add()
    r = await h.post_json("/v1/chat/completions", {**CHAT, "model": "nope"})
    assert r.status_code == 404
    body = await r.get_json()
    assert body["error"]["code"] == "model_not_found"
    assert body["error"]["type"] == "invalid_request_error"


async def test_a_node_lost_before_the_first_token_is_invisible(h: Harness) -> None:
    h.nodes.add(Script(lose_after_accept=True), slots=8)
    good = h.nodes.add(slots=1)
    r = await h.post_json("/v1/chat/completions", CHAT)
    assert r.status_code == 200
    assert r.headers["X-Infernet-Node"] == good.pubkey
    assert (await r.get_json())["choices"][0]["message"]["content"] == "Paris is the capital."


async def test_a_node_lost_mid_answer_is_502_without_stream(h: Harness) -> None:
    h.nodes.add(Script(lose_after_texts=2))
    r = await h.post_json("/v1/chat/completions", CHAT)
    assert r.status_code == 502
    assert (await r.get_json())["error"]["code"] == "node_disconnected"


async def test_the_client_going_away_cancels_the_job(h: Harness) -> None:
    gate = trio.Event()
    node = h.nodes.add(Script(gate=gate, stall_after=1))
    # Quart's test connection waits on exit for a body end that a cancelled response never
    # sends; the outer scope ends that wait once the job is seen to end.
    with trio.CancelScope() as scope:
        async with h.client.request("/v1/chat/completions", method="POST",
                                    headers=h.auth(**{"Content-Type": "application/json"})
                                    ) as conn:
            await conn.send(json.dumps({**CHAT, "stream": True}).encode())
            await conn.send_complete()
            await node.opened.wait()
            [job] = [h.live(j.job_id) for j in node.jobs]
            gate.set()
            await conn.receive()
            await conn.disconnect()
            await job.wait_ended()
            scope.cancel()
    assert (job.status, job.error_code) == ("failed", "cancelled")
    assert node.cancelled == 1


async def test_a_job_the_store_cannot_record_is_a_500(h: Harness,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(h.db, "create_job", broken)
    h.nodes.add()
    for stream in (False, True):
        r = await h.post_json("/v1/chat/completions", {**CHAT, "stream": stream})
        assert r.status_code == 500
        error = (await r.get_json())["error"]
        assert error["code"] == "internal_error"
        assert error["message"] == "the job could not be recorded: disk I/O error"
    assert h.state.jobs.running() == 0
