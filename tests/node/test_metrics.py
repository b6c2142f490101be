"""JobTracker: outcomes counted from the frames a job sends, the drain gate, idleness."""

from __future__ import annotations

import prometheus_client
import trio
import trio.testing

from infernet.mesh.jobs import JobRunner, SendFrame
from infernet.node.metrics import JobTracker, NodeMetrics
from infernet.protocol.frames import (
    Accepted,
    Chunk,
    FinalFrame,
    Frame,
    JobErrorFrame,
    JobRequest,
    Message,
)

ME = "aa" * 32
OTHER = "bb" * 32


def request(job: str = "j1") -> JobRequest:
    return JobRequest(job_id=job, model="m", messages=(Message(role="user", content="hi"),))


def runner_sending(*frames: Frame) -> JobRunner:
    async def run(req: JobRequest, peer: str, send: SendFrame) -> None:
        for frame in frames:
            await send(frame)

    return run


async def run_one(tracker: JobTracker, *frames: Frame) -> list[Frame]:
    sent: list[Frame] = []

    async def send(frame: Frame) -> None:
        sent.append(frame)

    await tracker.wrap(runner_sending(*frames))(request(), "peer", send)
    return sent


def sample(metrics: NodeMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


async def test_outcomes_tokens_and_ttft() -> None:
    metrics = NodeMetrics()
    tracker = JobTracker(ME, metrics)
    final = FinalFrame(job_id="j1", prompt_tokens=5, completion_tokens=7, ttft_ms=250,
                       tokens_per_s=20)
    sent = await run_one(tracker, Accepted(job_id="j1", node_pubkey=ME),
                         Chunk(job_id="j1", text="x"), final)
    assert sent[-1] == final  # frames pass through unchanged
    await run_one(tracker, Accepted(job_id="j1", node_pubkey=ME),
                  JobErrorFrame(job_id="j1", code="internal_error"))
    await run_one(tracker, JobErrorFrame(job_id="j1", code="model_not_found"))
    await run_one(tracker, Accepted(job_id="j1", node_pubkey=OTHER),
                  FinalFrame(job_id="j1", prompt_tokens=1, completion_tokens=1))
    await run_one(tracker, Accepted(job_id="j1", node_pubkey=ME))  # client went away

    assert tracker.counts == {"completed": 1, "failed": 1, "refused": 1, "relayed": 1,
                              "cancelled": 1}
    # Relayed tokens are the other node's work: only our own job counts.
    assert (tracker.prompt_tokens, tracker.completion_tokens) == (5, 7)
    assert sample(metrics, "infernet_jobs_total", outcome="completed") == 1
    assert sample(metrics, "infernet_tokens_total", kind="completion") == 7
    assert sample(metrics, "infernet_ttft_seconds_count") == 1
    assert sample(metrics, "infernet_ttft_seconds_sum") == 0.25
    text = prometheus_client.generate_latest(metrics.registry).decode()
    assert 'infernet_jobs_total{outcome="refused"} 1.0' in text


async def test_draining_refuses_new_jobs_and_waits_for_running_ones() -> None:
    tracker = JobTracker(ME, NodeMetrics())
    gate = trio.Event()

    async def slow(req: JobRequest, peer: str, send: SendFrame) -> None:
        await send(Accepted(job_id=req.job_id, node_pubkey=ME))
        await gate.wait()
        await send(FinalFrame(job_id=req.job_id, prompt_tokens=1, completion_tokens=1))

    async def drop(frame: Frame) -> None:
        pass

    idle = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(tracker.wrap(slow), request(), "peer", drop)
        await trio.testing.wait_all_tasks_blocked()
        assert tracker.running == 1
        tracker.draining = True
        refused = await run_one(tracker, Accepted(job_id="j1", node_pubkey=ME))
        assert isinstance(refused[0], JobErrorFrame) and refused[0].code == "no_capacity"

        async def wait_idle() -> None:
            await tracker.wait_idle()
            idle.set()

        nursery.start_soon(wait_idle)
        await trio.testing.wait_all_tasks_blocked()
        assert not idle.is_set()  # the running job holds the drain
        gate.set()
    assert idle.is_set() and tracker.running == 0
    assert tracker.counts["completed"] == 1 and tracker.counts["refused"] == 1


async def test_cancelled_job_leaves_running_count_consistent() -> None:
    tracker = JobTracker(ME, NodeMetrics())

    async def forever(req: JobRequest, peer: str, send: SendFrame) -> None:
        await send(Accepted(job_id=req.job_id, node_pubkey=ME))
        await trio.sleep_forever()

    async def drop(frame: Frame) -> None:
        pass

    async with trio.open_nursery() as nursery:
        nursery.start_soon(tracker.wrap(forever), request(), "peer", drop)
        await trio.testing.wait_all_tasks_blocked()
        assert tracker.running == 1
        nursery.cancel_scope.cancel()
    assert tracker.running == 0
    assert tracker.counts["cancelled"] == 1
    await tracker.wait_idle()  # returns at once
