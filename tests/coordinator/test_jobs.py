"""coordinator.jobs on its own: the start-up sweep, deadlines across restarts, re-queue bounds."""

from __future__ import annotations

import time
from pathlib import Path

import msgspec
import trio

from coordinator.jobs import MAX_NODE_LOSSES, JobSettings
from coordinator.store import Store
from infernet.protocol.frames import JobRequest, Message
from tests.coordinator.fakes import MODEL, Script
from tests.coordinator.harness import open_harness


def _stored_request(job_id: str) -> str:
    request = JobRequest(job_id=job_id, model=MODEL,
                         messages=(Message(role="user", content="hi"),), max_tokens=8)
    return msgspec.json.encode({"request": request}).decode()


def _leave_unfinished(path: Path) -> None:
    """What a coordinator killed mid-work leaves behind."""
    store = Store(path)
    now = time.time()
    store.create_job("job_expired", "tok_x", MODEL, source="jobs",
                     request=_stored_request("job_expired"), deadline=now - 1,
                     created_at=now - 301)
    store.create_job("job_alive", "tok_x", MODEL, source="jobs",
                     request=_stored_request("job_alive"), deadline=now + 200,
                     created_at=now - 100)
    store.start_job("job_alive", "cd" * 32)
    store.create_job("job_openai", "tok_x", MODEL, source="openai",
                     request=_stored_request("job_openai"), deadline=now + 200)
    store.create_job("job_broken", "tok_x", MODEL, source="jobs", request="{not json",
                     deadline=now + 200)
    store.close()


async def test_the_start_up_sweep_leaves_no_job_stuck(tmp_path: Path) -> None:
    _leave_unfinished(tmp_path / "coordinator.db")
    async with open_harness(tmp_path) as h:
        expired = h.db.get_job("job_expired")
        assert expired is not None and (expired.status, expired.error_code) == ("failed",
                                                                                  "timeout")
        openai = h.db.get_job("job_openai")
        assert openai is not None and (openai.status, openai.error_code) == (
            "failed", "internal_error")
        broken = h.db.get_job("job_broken")
        assert broken is not None and broken.status == "failed"

        alive = h.live("job_alive")  # re-queued, waiting for a node
        assert alive.status == "pending" and alive.attempts == 1
        record = h.db.get_job("job_alive")
        assert record is not None and (record.status, record.node_pubkey) == ("pending", None)
        # its deadline is the one it was given before the restart, not a fresh one
        assert alive.deadline - trio.current_time() < 201

        node = h.nodes.add()
        h.state.router.notify()
        job = await h.finished("job_alive")
        assert job.status == "completed"
        assert node.jobs[0].max_tokens == 8  # the stored request ran, as submitted
        assert h.db.unfinished_jobs() == []


async def test_a_job_that_keeps_losing_nodes_fails_in_the_end(tmp_path: Path) -> None:
    async with open_harness(tmp_path, JobSettings(timeout=30, capacity_wait=5)) as h:
        flaky = [h.nodes.add(Script(lose_after_accept=True)) for _ in range(MAX_NODE_LOSSES)]
        r = await h.post_json("/api/v1/jobs", {"model": MODEL, "messages": [
            {"role": "user", "content": "hi"}]})
        job = await h.finished((await r.get_json())["id"])
        assert (job.status, job.error_code) == ("failed", "node_disconnected")
        assert sum(len(n.jobs) for n in flaky) == MAX_NODE_LOSSES
        assert h.state.router.inflight() == 0  # every slot went back
