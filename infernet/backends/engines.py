"""The engines a node can use, and how to reach each one.

Owns: the table of external engines (`ENGINES`, in auto-selection probe order) with each
one's default port, probe path, environment variable, model naming and install hint, and
`engine_url`, which resolves where an engine listens. DESIGN.md "Backends"; the embedded
engine is not in the table because it is started, not found.

Invariants: `PROBE_ORDER` is Ollama, vLLM, SGLang, MAX, llama.cpp (the book's order; MAX and
llama.cpp share port 8080); an engine URL always has a scheme and a port and no trailing
slash; nothing here reads the environment by itself: callers pass it in.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal
from urllib.parse import urlsplit

from infernet.backends.base import ModelNaming

__all__ = [
    "ENGINES",
    "PROBE_ORDER",
    "BackendChoice",
    "EngineKind",
    "EngineSpec",
    "engine_url",
    "normalize_url",
]

EngineKind = Literal["ollama", "vllm", "sglang", "max", "llamacpp"]
# What an operator may choose (config ``backend``, ``INFERNET_BACKEND``): an engine kind,
# the embedded default, or "auto" (probe, then fall back to embedded).
BackendChoice = Literal["auto", "ollama", "vllm", "sglang", "max", "llamacpp", "embedded"]


@dataclass(frozen=True, slots=True)
class EngineSpec:
    """How to find and talk to one kind of external engine."""

    kind: EngineKind
    title: str
    default_port: int
    probe_path: str
    env_var: str
    model_naming: ModelNaming
    install_hint: str


ENGINES: Final[dict[EngineKind, EngineSpec]] = {
    spec.kind: spec
    for spec in (
        EngineSpec("ollama", "Ollama", 11434, "/api/tags", "OLLAMA_HOST", "ollama",
                   "infernet model install NAME pulls it (e.g. qwen2.5:7b)"),
        EngineSpec("vllm", "vLLM", 8000, "/health", "VLLM_HOST", "huggingface",
                   "start `vllm serve Qwen/Qwen2.5-7B-Instruct` (one model per instance; list "
                   "several in vllm_instances), then `infernet model install` the same id"),
        EngineSpec("sglang", "SGLang", 30000, "/health", "SGLANG_HOST", "huggingface",
                   "start `python -m sglang.launch_server --model-path Qwen/Qwen2.5-7B-Instruct`, "
                   "then `infernet model install` the same id"),
        EngineSpec("max", "Modular MAX", 8080, "/health", "MODULAR_MAX_HOST", "huggingface",
                   "start `max serve --model-path Qwen/Qwen2.5-7B-Instruct`, then "
                   "`infernet model install` the same id"),
        EngineSpec("llamacpp", "llama.cpp", 8080, "/health", "LLAMACPP_HOST", "alias",
                   "download the GGUF and add it to llama-swap's config (or restart "
                   "llama-server with --model), then `infernet model install` its alias"),
    )
}  # fmt: skip

PROBE_ORDER: Final[tuple[EngineKind, ...]] = ("ollama", "vllm", "sglang", "max", "llamacpp")


def normalize_url(value: str, default_port: int) -> str:
    """Turn ``host``, ``host:port`` or a URL into ``scheme://host:port`` without a slash.

    ``0.0.0.0`` / ``::`` (how ``OLLAMA_HOST`` is often set for the server to bind every
    interface) become the loopback address a client can connect to.
    """
    text = value.strip()
    if "://" not in text:
        text = "http://" + text
    parts = urlsplit(text)
    host = parts.hostname or "127.0.0.1"
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    port = parts.port or default_port
    path = parts.path.rstrip("/")
    return f"{parts.scheme or 'http'}://{host}:{port}{path}"


def engine_url(kind: EngineKind, configured: str, env: Mapping[str, str]) -> str:
    """Where engine ``kind`` listens: ``configured`` if set, else its env var, else localhost.

    An explicit config value wins over the engine's own variable because ``OLLAMA_HOST``
    and friends are often set system-wide for the engine server's bind address, while the
    config (or ``INFERNET_<ENGINE>_HOST``) was written for this node on purpose.
    """
    spec = ENGINES[kind]
    value = configured or env.get(spec.env_var, "") or f"127.0.0.1:{spec.default_port}"
    return normalize_url(value, spec.default_port)
