"""A fake Ollama speaking the documented wire format (docs/api.md) on real loopback TCP.

Ollama cannot be installed here, so its adapter is tested against this: ``/api/tags``,
``/api/ps``, ``/api/chat`` (NDJSON), ``/api/pull`` (NDJSON progress), ``/api/delete``.
Chat echoes the last message's words. Special model names script the faults:

- chat ``crash``: two chunks, then the connection drops (Ollama died mid-stream);
- chat ``garbage``: a line that is not JSON; chat ``boom``: an ``error`` line mid-stream;
- chat ``http500``: HTTP 500 with ``{"error": ...}``;
- pull of a name not in ``registry``: ``{"error": "pull model manifest: file does not exist"}``;
- pull ``huge``: progress, then ``no space left on device``; pull ``cut``: progress, then drop.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import trio
from trio_typing import TaskStatus

from tests.backends.fake_http import FakeServer, Reply, Request

LAYER = 3 * 1024 * 1024  # bytes per fake layer; pulls report progress in 1 MiB steps


def _digest(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


@dataclass
class FakeModel:
    name: str
    size: int
    parameter_size: str = "7.6B"
    quantization_level: str = "Q4_K_M"

    def tag(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "model": self.name,
            "modified_at": "2026-11-20T10:00:00Z",
            "size": self.size,
            "digest": _digest(self.name),
            "details": {
                "parent_model": "",
                "format": "gguf",
                "family": "qwen2",
                "families": ["qwen2"],
                "parameter_size": self.parameter_size,
                "quantization_level": self.quantization_level,
            },
        }


@dataclass
class FakeOllama:
    """State: pulled models, loaded ones, and what the 'registry' can pull."""

    models: dict[str, FakeModel] = field(
        default_factory=lambda: {
            "qwen2.5:7b": FakeModel("qwen2.5:7b", 4_683_087_332),
            "llama3.2:3b": FakeModel("llama3.2:3b", 2_019_393_189, "3.2B"),
        }
    )
    loaded: set[str] = field(default_factory=lambda: {"qwen2.5:7b"})
    registry: dict[str, FakeModel] = field(
        default_factory=lambda: {
            "tinyllama:latest": FakeModel("tinyllama:latest", 2 * LAYER, "1.1B"),
            "huge": FakeModel("huge", 2 * LAYER, "1.1B"),
            "cut": FakeModel("cut", 2 * LAYER, "1.1B"),
        }
    )
    server: FakeServer = field(init=False)

    def __post_init__(self) -> None:
        self.server = FakeServer(self.handle)

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def requests(self) -> list[Request]:
        return self.server.requests

    async def serve(self, *, task_status: TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        await self.server.serve(task_status=task_status)

    async def handle(self, request: Request, reply: Reply) -> None:
        route = (request.method, request.path)
        if route == ("GET", "/api/tags"):
            await reply.send(200, {"models": [m.tag() for m in self.models.values()]})
        elif route == ("GET", "/api/ps"):
            loaded = [self.models[n].tag() | {"size_vram": self.models[n].size}
                      for n in sorted(self.loaded) if n in self.models]  # fmt: skip
            await reply.send(200, {"models": loaded})
        elif route == ("POST", "/api/chat"):
            await self._chat(request.json(), reply)
        elif route == ("POST", "/api/pull"):
            await self._pull(request.json(), reply)
        elif route == ("DELETE", "/api/delete"):
            name = request.json()["model"]
            if self.models.pop(name, None) is None:
                await reply.send(404, {"error": f"model '{name}' not found"})
            else:
                self.loaded.discard(name)
                await reply.send(200, "", content_type="text/plain")
        else:
            await reply.send(404, "404 page not found", content_type="text/plain")

    async def _chat(self, body: dict[str, Any], reply: Reply) -> None:
        model = body["model"]
        if model == "http500":
            await reply.send(500, {"error": "llama runner process has terminated: signal: killed"})
            return
        if model not in self.models and model not in ("crash", "garbage", "boom"):
            await reply.send(404, {"error": f"model \"{model}\" not found, try pulling it first"})
            return
        self.loaded.add(model)
        options = body.get("options", {})
        words = body["messages"][-1]["content"].split()
        limit = options.get("num_predict")
        truncated = limit is not None and len(words) > limit
        words = words[:limit] if truncated else words
        await reply.start_stream()
        for i, word in enumerate(words):
            if model == "crash" and i == 2:
                return  # no terminating chunk: the connection just closes
            if model == "garbage" and i == 1:
                await reply.chunk("{this is not json\n")
                continue
            if model == "boom" and i == 1:
                await reply.line({"error": "an error was encountered while running the model"})
                continue
            await reply.line({"model": model, "created_at": "2026-11-20T10:00:00Z",
                              "message": {"role": "assistant", "content": word + " "},
                              "done": False})  # fmt: skip
        prompt = sum(len(m["content"].split()) for m in body["messages"])
        await reply.line({
            "model": model, "created_at": "2026-11-20T10:00:01Z",
            "message": {"role": "assistant", "content": ""},
            "done": True, "done_reason": "length" if truncated else "stop",
            "total_duration": 1000, "load_duration": 10, "prompt_eval_count": prompt,
            "prompt_eval_duration": 100, "eval_count": len(words), "eval_duration": 800,
        })  # fmt: skip
        await reply.end_stream()

    async def _pull(self, body: dict[str, Any], reply: Reply) -> None:
        name = body["model"]
        await reply.start_stream()
        await reply.line({"status": "pulling manifest"})
        model = self.registry.get(name)
        if model is None:
            await reply.line({"error": "pull model manifest: file does not exist"})
            await reply.end_stream()
            return
        for layer in range(model.size // LAYER):
            digest = "sha256:" + _digest(f"{name}/{layer}")
            for done in range(0, LAYER + 1, 1024 * 1024):
                await reply.line({"status": f"pulling {digest[7:19]}", "digest": digest,
                                  "total": LAYER, "completed": done})  # fmt: skip
            if name == "huge":
                await reply.line({"error": f"write /root/.ollama/models/blobs/{digest}-partial"
                                  ": no space left on device"})  # fmt: skip
                await reply.end_stream()
                return
            if name == "cut":
                return  # Ollama died mid-pull
        for status in ("verifying sha256 digest", "writing manifest", "success"):
            await reply.line({"status": status})
        await reply.end_stream()
        self.models[name] = model
