"""Rate limits and their headers on the real app: per token, persisted through restarts."""

from __future__ import annotations

from pathlib import Path

from coordinator.ratelimit import Limits
from tests.coordinator.fakes import MODEL
from tests.coordinator.harness import Harness, open_harness

JOB = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
RATE_HEADERS = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset")


async def test_every_authenticated_response_carries_the_headers(tmp_path: Path) -> None:
    async with open_harness(tmp_path, limits=Limits(60, 1000)) as h:
        h.nodes.add()
        responses = [
            await h.get("/v1/models"), await h.get("/api/v1/models"),
            await h.get("/api/v1/jobs"), await h.get("/api/v1/jobs/job_missing"),
            await h.post_json("/api/v1/jobs", {"model": MODEL}),  # 400
            await h.post_json("/api/v1/jobs", JOB),
        ]
        for r in responses:
            assert all(name in r.headers for name in RATE_HEADERS), r.status_code
            assert r.headers["X-RateLimit-Limit"] == "60"
        # reads and malformed bodies do not count; a submitted job does
        assert [r.headers["X-RateLimit-Remaining"] for r in responses] == ["60"] * 5 + ["59"]
        unauthenticated = await h.client.get("/v1/models")
        assert unauthenticated.status_code == 401
        assert "X-RateLimit-Limit" not in unauthenticated.headers


async def _exhaust(h: Harness, path: str, body: dict[str, object], n: int) -> None:
    for i in range(n):
        r = await h.post_json(path, body)
        assert r.status_code in (200, 202), (i, await r.get_data())


async def test_429_with_retry_after_once_the_minute_is_used(tmp_path: Path) -> None:
    async with open_harness(tmp_path, limits=Limits(3, 1000)) as h:
        h.nodes.add()
        await _exhaust(h, "/api/v1/jobs", JOB, 3)
        r = await h.post_json("/api/v1/jobs", JOB)
        assert r.status_code == 429
        body = await r.get_json()
        assert body["error"] == "rate_limited"
        assert 1 <= int(r.headers["Retry-After"]) <= 60
        assert r.headers["X-RateLimit-Remaining"] == "0"
        # the OpenAI route shares the budget and answers in OpenAI's shape
        r = await h.post_json("/v1/chat/completions", JOB)
        assert r.status_code == 429
        assert (await r.get_json())["error"]["type"] == "rate_limit_error"
        # another token is not affected
        other, _ = h.db.create_token("other")
        assert (await h.post_json("/api/v1/jobs", JOB, token=other)).status_code == 202


async def test_a_token_can_have_its_own_limits(tmp_path: Path) -> None:
    async with open_harness(tmp_path, limits=Limits(3, 1000)) as h:
        h.nodes.add()
        generous, _ = h.db.create_token("generous", rpm=10)
        strict, _ = h.db.create_token("strict", rph=1)
        r = await h.post_json("/api/v1/jobs", JOB, token=generous)
        assert r.headers["X-RateLimit-Limit"] == "10"
        assert (await h.post_json("/api/v1/jobs", JOB, token=strict)).status_code == 202
        r = await h.post_json("/api/v1/jobs", JOB, token=strict)
        assert r.status_code == 429 and r.headers["X-RateLimit-Limit"] == "1"
        assert int(r.headers["Retry-After"]) > 60  # the hour window is the one that is full


async def test_limits_survive_a_restart(tmp_path: Path) -> None:
    async with open_harness(tmp_path, limits=Limits(2, 1000)) as h:
        h.nodes.add()
        await _exhaust(h, "/api/v1/jobs", JOB, 2)
        token = h.token
    async with open_harness(tmp_path, limits=Limits(2, 1000)) as h:
        h.nodes.add()
        r = await h.post_json("/api/v1/jobs", JOB, token=token)
        assert r.status_code == 429
