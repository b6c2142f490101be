"""Bad input never gets a 5xx: table-driven cases plus a property test that posts generated
bodies to the real app (Quart's test client, scripted nodes behind it)."""

from __future__ import annotations

import json
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.coordinator.fakes import MODEL
from tests.coordinator.harness import Harness, open_harness

ROUTES = ("/v1/chat/completions", "/api/v1/jobs", "/api/v1/receipts")
OK = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[Harness]:
    async with open_harness(tmp_path) as harness:
        harness.nodes.add(slots=64)
        yield harness


async def post(h: Harness, path: str, raw: bytes, **headers: str) -> Any:
    return await h.client.post(path, data=raw, headers={
        **h.auth(), "Content-Type": "application/json", **headers})


def error_code(path: str, body: Any) -> str:
    return body["error"]["code"] if path.startswith("/v1") else body["error"]


CASES: dict[str, bytes] = {
    "empty": b"",
    "malformed": b'{"model": ',
    "not an object": b"[1, 2]",
    "invalid utf-8": b'{"model": "\xff\xfe", "messages": []}',
    "nan": json.dumps({**OK, "temperature": float("nan")}).encode(),
    "model wrong type": json.dumps({**OK, "model": 5}).encode(),
    "messages wrong type": json.dumps({**OK, "messages": {"role": "user"}}).encode(),
    "empty messages": json.dumps({**OK, "messages": []}).encode(),
    "negative max_tokens": json.dumps({**OK, "max_tokens": -1}).encode(),
    "zero max_tokens": json.dumps({**OK, "max_tokens": 0}).encode(),
    "huge max_tokens": json.dumps({**OK, "max_tokens": 10**12}).encode(),
    "bool max_tokens": json.dumps({**OK, "max_tokens": True}).encode(),
    "unknown field": json.dumps({**OK, "frobnicate": 1}).encode(),
    "unknown role": json.dumps({**OK, "messages": [{"role": "x", "content": "y"}]}).encode(),
    "deep nesting": b'{"model": "m", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    "stream not bool": json.dumps({**OK, "stream": "yes"}).encode(),
}


@pytest.mark.parametrize("path", ROUTES)
@pytest.mark.parametrize("case", list(CASES))
async def test_bad_bodies_are_400_with_an_error_body(h: Harness, path: str, case: str) -> None:
    r = await post(h, path, CASES[case])
    assert r.status_code == 400
    assert error_code(path, await r.get_json()) == "bad_request"


@pytest.mark.parametrize("path", ROUTES)
async def test_an_oversized_body_is_refused_before_it_is_read(h: Harness, path: str) -> None:
    r = await post(h, path, b'{"model": "' + b"x" * (5 << 20) + b'"}')
    assert r.status_code == 413
    assert error_code(path, await r.get_json()) == "bad_request"


async def test_unknown_routes_and_methods_have_error_bodies(h: Harness) -> None:
    r = await h.get("/api/v1/nothing")
    assert r.status_code == 404 and (await r.get_json())["error"] == "not_found"
    r = await h.client.delete("/v1/chat/completions", headers=h.auth())
    assert r.status_code == 405 and (await r.get_json())["error"]["code"] == "bad_request"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=4),
    max_leaves=12)
fields = st.sampled_from(["model", "messages", "max_tokens", "max_completion_tokens",
                          "temperature", "top_p", "stop", "seed", "stream", "stream_options",
                          "node_id", "weights_hash", "n", "tools", "role", "content"])
message = st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "bogus"])},
                                optional={"content": json_values, "name": json_values})
mutated = st.builds(
    lambda base, changes: {**base, **changes},
    st.just(OK) | st.fixed_dictionaries({"model": st.just(MODEL),
                                         "messages": st.lists(message, max_size=3)}),
    st.dictionaries(fields, json_values, max_size=3))


def encode(value: Any) -> bytes:
    return json.dumps(value, allow_nan=True).encode()


bodies = (st.binary(max_size=64) | json_values.map(encode) | mutated.map(encode))


async def _post_one(path: str, raw: bytes, sse: bool) -> tuple[int, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        async with open_harness(Path(tmp)) as h:
            h.nodes.add(slots=64)
            extra = {"Accept": "text/event-stream"} if sse else {}
            r = await post(h, path, raw, **extra)
            body = await r.get_json() if r.status_code >= 400 else None
            return r.status_code, body


# Synchronous on purpose: each example runs a whole coordinator in its own trio.run (an
# async fixture would not live across hypothesis examples).
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(path=st.sampled_from(ROUTES), raw=bodies, sse=st.booleans())
def test_generated_bodies_never_get_a_5xx(path: str, raw: bytes, sse: bool) -> None:
    status, body = trio.run(_post_one, path, raw, sse)
    assert status < 500, (status, body)
    if status >= 400:
        assert error_code(path, body)
