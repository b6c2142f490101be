"""The whole path, real processes: OpenAI SDK → coordinator HTTP → libp2p → node → engine.

Starts ``infernet-coordinator serve`` and ``infernet start`` (embedded llama.cpp engine with
the Gemma 3 270M model) as subprocesses on loopback and drives them with the official
``openai`` package, as an app developer would.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.integration.conftest import BIN, MODEL, Launcher, Network, start_coordinator

pytestmark = pytest.mark.slow


_clients: list[openai.OpenAI] = []


def _client(net: Network, token: str | None = None) -> openai.OpenAI:
    client = openai.OpenAI(base_url=net.base_url, api_key=token or net.token, max_retries=0,
                           timeout=60)
    _clients.append(client)
    return client


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _clients:
        _clients.pop().close()


def test_chat_through_the_mesh(network: Network) -> None:
    client = _client(network)

    # GET /v1/models lists the node's model
    assert [m.id for m in client.models.list().data] == [MODEL]

    # non-stream: real engine text and honest usage
    reply = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "What is the capital of France?"}])
    assert "Paris" in (reply.choices[0].message.content or "")
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert reply.usage is not None
    assert reply.usage.prompt_tokens > 0 and reply.usage.completion_tokens > 0
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens

    # stream: chunks in OpenAI format, then the usage chunk, then [DONE]
    stream = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "What is the capital of France?"}],
        stream=True, stream_options={"include_usage": True})
    texts, usage, finish = [], None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            texts.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    assert "Paris" in "".join(texts)
    assert finish in ("stop", "length")
    assert usage is not None and usage.completion_tokens > 0 and usage.prompt_tokens > 0


def test_bad_requests_get_openai_errors(network: Network) -> None:
    with pytest.raises(openai.AuthenticationError) as auth:
        _client(network, token="inf_wrong").chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert auth.value.status_code == 401
    assert auth.value.body["code"] == "unauthorized"  # type: ignore[index]

    with pytest.raises(openai.NotFoundError) as missing:
        _client(network).chat.completions.create(
            model="no-such-model", messages=[{"role": "user", "content": "hi"}])
    assert missing.value.body["code"] == "model_not_found"  # type: ignore[index]

    with pytest.raises(openai.BadRequestError) as bad:
        _client(network).chat.completions.create(model=MODEL, messages=[])
    assert bad.value.body["code"] == "bad_request"  # type: ignore[index]

    headers = {"Authorization": f"Bearer {network.token}", "Content-Type": "application/json"}
    r = httpx.post(f"{network.base_url}/chat/completions", content=b"{not json", headers=headers)
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "bad_request"
    assert "malformed JSON" in r.json()["error"]["message"]

    no_model = {"messages": [{"role": "user", "content": "hi"}]}
    r = httpx.post(f"{network.base_url}/chat/completions", json=no_model, headers=headers)
    assert r.status_code == 400 and "`model`" in r.json()["error"]["message"]

    r = httpx.get(f"{network.base_url}/models")
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"


def test_node_killed_mid_stream_ends_the_stream_with_an_error(network: Network) -> None:
    node = network.nodes[0]
    stream = _client(network).chat.completions.create(
        model=MODEL, stream=True, max_tokens=400,
        messages=[{"role": "user", "content": "Count from 1 to 300: 1, 2, 3, 4, 5,"}])
    killed_at: float | None = None
    with pytest.raises(openai.APIError) as failure:
        for chunk in stream:
            if killed_at is None and any(c.delta.content for c in chunk.choices):
                node.popen.send_signal(signal.SIGKILL)
                killed_at = time.monotonic()
    assert killed_at is not None, "the stream never produced text"
    assert time.monotonic() - killed_at < 5
    assert "disconnected" in str(failure.value) or "node_disconnected" in str(failure.value.body)

    # the node is gone at once: no capacity anywhere now
    with pytest.raises(openai.InternalServerError) as gone:
        _client(network).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert gone.value.status_code == 503
    assert gone.value.body["code"] == "no_capacity"  # type: ignore[index]


def test_no_node_means_no_capacity(launcher: Launcher) -> None:
    net = start_coordinator(launcher)
    with pytest.raises(openai.InternalServerError) as exc:
        _client(net).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert exc.value.status_code == 503
    assert exc.value.body["code"] == "no_capacity"  # type: ignore[index]


def test_a_node_finds_the_mesh_from_the_coordinator_url_alone(launcher: Launcher) -> None:
    net = start_coordinator(launcher)
    home = launcher.root / "url-node"
    launcher.run([str(BIN / "infernet"), "init"], home)
    launcher.spawn("url-node", [str(BIN / "infernet"), "start", "--host", "127.0.0.1",
                                "--port", "0"], home, INFERNET_COORDINATOR_URL=net.api)
    net.wait_for_model()  # no --bootstrap: the addresses came from GET /api/v1/bootstrap
    with _client(net) as client:
        assert [m.id for m in client.models.list().data] == [MODEL]
