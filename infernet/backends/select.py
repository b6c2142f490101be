"""Choosing the inference engine: probe what runs, honour overrides, else start embedded.

Owns: `select_backend` (which engine, where, and why), `open_backend` (the async context
manager the daemon and the CLI use to get a healthy `Backend`), and the per-engine probes.
DESIGN.md "Backends"; the engine table is `infernet.backends.engines`.

Rules:
- ``backend`` in the config (``INFERNET_BACKEND`` overrides it through `load_config`) names
  the engine; ``"auto"`` (the default) probes Ollama (``/api/tags``), vLLM, SGLang, MAX and
  llama.cpp (``/health``) in that order, all at once with ``probe_timeout`` each, and the
  first healthy one in that order wins. When none answers, the embedded engine starts.
- An OpenAI-family probe also needs ``/v1/models`` to answer an OpenAI model list: a web
  service that merely has a ``/health`` (the coordinator listens on 8080 too) is not an
  engine. The list's ``owned_by`` names the engine when it says (``llamacpp``,
  ``llama-swap``, ``vllm``, ``sglang``): that is how MAX and llama.cpp, both on 8080, are
  told apart; anything else on 8080 is taken for MAX, first in the book's order.
- An engine named explicitly must answer its health probe, or `open_backend` raises
  ``backend_unavailable``: the operator asked for it, so no silent fallback.
- Where each engine listens: ``backend_url`` (for the chosen engine; with ``"auto"`` the one
  URL every probe tries), else the config's ``<engine>_host``, else the engine's own env var
  (``OLLAMA_HOST``, ``VLLM_HOST``, ``SGLANG_HOST``, ``MODULAR_MAX_HOST``, ``LLAMACPP_HOST``),
  else localhost on its default port. ``vllm_instances`` turns vLLM into one instance per
  model (`infernet.backends.instances`).
- The choice and the reason are logged in one line.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Final, Literal, Protocol

import httpx
import msgspec
import trio

from infernet.backends.base import Backend
from infernet.backends.embedded import (
    EmbeddedConfig,
    attach_embedded_engine,
    open_embedded_engine,
)
from infernet.backends.engines import (
    ENGINES,
    PROBE_ORDER,
    BackendChoice,
    EngineKind,
    engine_url,
    normalize_url,
)
from infernet.backends.instances import InstanceRouter, parse_instances
from infernet.backends.ollama import OllamaBackend
from infernet.backends.openai_compat import OpenAICompatBackend
from infernet.backends.supervisor import SupervisorConfig
from infernet.protocol.errors import BackendError

__all__ = [
    "BackendSettings",
    "ProbeResult",
    "Selection",
    "make_engine_backend",
    "open_backend",
    "probe_engine",
    "select_backend",
]

log = logging.getLogger("infernet.backends")

_OWNERS: Final[dict[str, EngineKind]] = {
    "llamacpp": "llamacpp",
    "llama.cpp": "llamacpp",
    "llama-swap": "llamacpp",
    "vllm": "vllm",
    "sglang": "sglang",
}


class BackendSettings(Protocol):
    """The backend fields of `infernet.node.config.NodeConfig` that this module reads."""

    @property
    def backend(self) -> BackendChoice: ...
    @property
    def backend_url(self) -> str: ...
    @property
    def ollama_host(self) -> str: ...
    @property
    def vllm_host(self) -> str: ...
    @property
    def sglang_host(self) -> str: ...
    @property
    def max_host(self) -> str: ...
    @property
    def llamacpp_host(self) -> str: ...
    @property
    def vllm_instances(self) -> tuple[str, ...]: ...
    @property
    def probe_timeout(self) -> float: ...
    @property
    def engine_threads(self) -> int: ...
    @property
    def engine_slots(self) -> int: ...
    @property
    def engine_ctx(self) -> int: ...
    @property
    def engine_supervise(self) -> bool: ...
    @property
    def engine_health_interval(self) -> float: ...
    @property
    def model_cache(self) -> str: ...


class ProbeResult(msgspec.Struct, frozen=True, kw_only=True):
    """What one probe found at ``url``: healthy or not, which engine, and why."""

    kind: EngineKind
    url: str
    healthy: bool
    detail: str
    identified: EngineKind | None = None


class Selection(msgspec.Struct, frozen=True, kw_only=True):
    """The engine to use (``embedded`` when none answered), where, and why."""

    kind: EngineKind | Literal["embedded"]
    url: str | None
    reason: str
    probes: tuple[ProbeResult, ...] = ()

    def describe(self) -> str:
        """One log line: ``ollama at http://...: <reason>``."""
        where = f" at {self.url}" if self.url else ""
        return f"{self.kind}{where} ({self.reason})"


class _ModelOwner(msgspec.Struct):
    owned_by: str | None = None


class _OpenAIList(msgspec.Struct):
    data: list[_ModelOwner]


class _OllamaList(msgspec.Struct):
    models: list[msgspec.Raw]


_OPENAI_LIST: Final = msgspec.json.Decoder(_OpenAIList)
_OLLAMA_LIST: Final = msgspec.json.Decoder(_OllamaList)


def resolve_url(kind: EngineKind, settings: BackendSettings, env: Mapping[str, str]) -> str:
    """Where engine ``kind`` listens under ``settings`` and ``env`` (see the module rules)."""
    if settings.backend_url and settings.backend in ("auto", kind):
        return normalize_url(settings.backend_url, ENGINES[kind].default_port)
    configured = {
        "ollama": settings.ollama_host,
        "vllm": settings.vllm_host,
        "sglang": settings.sglang_host,
        "max": settings.max_host,
        "llamacpp": settings.llamacpp_host,
    }[kind]
    return engine_url(kind, configured, env)


async def probe_engine(
    client: httpx.AsyncClient, kind: EngineKind, url: str, timeout: float
) -> ProbeResult:
    """Probe engine ``kind`` at ``url`` within ``timeout`` seconds. Never raises."""
    spec = ENGINES[kind]
    try:
        with trio.fail_after(timeout):
            health = await client.get(url + spec.probe_path, timeout=timeout)
            if health.status_code != 200:
                return _result(kind, url, f"{spec.probe_path} answered HTTP {health.status_code}")
            if kind == "ollama":
                _OLLAMA_LIST.decode(health.content)
                return _result(kind, url, "answered /api/tags", healthy=True, identified=kind)
            listing = await client.get(url + "/v1/models", timeout=timeout)
    except trio.TooSlowError:
        return _result(kind, url, f"no answer within {timeout}s")
    except httpx.HTTPError as exc:
        return _result(kind, url, _transport_detail(exc))
    except msgspec.DecodeError:
        return _result(kind, url, "/api/tags is not an Ollama model list")
    return _check_listing(kind, url, listing)


def _check_listing(kind: EngineKind, url: str, listing: httpx.Response) -> ProbeResult:
    """Accept an OpenAI-family engine whose ``/v1/models`` is a model list; name it."""
    if listing.status_code != 200:
        return _result(kind, url, f"/health answers but /v1/models is HTTP {listing.status_code}")
    try:
        models = _OPENAI_LIST.decode(listing.content).data
    except msgspec.DecodeError:
        return _result(kind, url, "/health answers but /v1/models is not a model list")
    owners = {_OWNERS.get((m.owned_by or "").lower()) for m in models} - {None}
    identified = next(iter(owners)) if len(owners) == 1 else None
    if kind == "max" and identified is not None:
        return _result(kind, url, f"an OpenAI engine owned by {identified}, not MAX")
    return _result(
        kind, url, "answered /health and /v1/models", healthy=True, identified=identified or kind
    )


def _result(
    kind: EngineKind,
    url: str,
    detail: str,
    *,
    healthy: bool = False,
    identified: EngineKind | None = None,
) -> ProbeResult:
    return ProbeResult(kind=kind, url=url, healthy=healthy, detail=detail, identified=identified)


def _transport_detail(exc: httpx.HTTPError) -> str:
    if isinstance(exc, httpx.ConnectError):
        text = str(exc).lower()
        refused = "refused" in text or "attempts to connect" in text  # anyio's wording
        return "connection refused" if refused else f"not reachable: {exc}"
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    return f"{type(exc).__name__}: {exc}"


async def _probe_all(
    settings: BackendSettings, env: Mapping[str, str], client: httpx.AsyncClient
) -> list[ProbeResult]:
    """Run every probe in `PROBE_ORDER` concurrently; results in that order."""
    targets: list[tuple[EngineKind, str]] = []
    for kind in PROBE_ORDER:
        if kind == "vllm" and settings.vllm_instances and not settings.backend_url:
            targets.extend((kind, _instance_url(url)) for _, url in _instances(settings))
        else:
            targets.append((kind, resolve_url(kind, settings, env)))
    results: list[ProbeResult | None] = [None] * len(targets)

    async def run(index: int, kind: EngineKind, url: str) -> None:
        results[index] = await probe_engine(client, kind, url, settings.probe_timeout)

    async with trio.open_nursery() as nursery:
        for index, (kind, url) in enumerate(targets):
            nursery.start_soon(run, index, kind, url)
    return [r for r in results if r is not None]


async def select_backend(
    settings: BackendSettings,
    env: Mapping[str, str] | None = None,
    client: httpx.AsyncClient | None = None,
) -> Selection:
    """Decide which engine to use; probes only when ``settings.backend`` is ``"auto"``.

    An engine that is not answering is not an error here: an explicit one is checked when
    it is opened, and "auto" falls back to the embedded engine.

    Raises:
        BackendError: a ``vllm_instances`` entry is empty (``bad_request``).
    """
    env = dict(os.environ) if env is None else env
    choice = settings.backend
    if choice != "auto":
        source = "INFERNET_BACKEND" if env.get("INFERNET_BACKEND") == choice else "config"
        if choice == "embedded":
            return Selection(kind="embedded", url=settings.backend_url or None,
                             reason=f"backend=embedded from {source}")  # fmt: skip
        return Selection(kind=choice, url=resolve_url(choice, settings, env),
                         reason=f"backend={choice} from {source}")  # fmt: skip
    async with AsyncExitStack() as stack:
        if client is None:
            client = await stack.enter_async_context(httpx.AsyncClient(trust_env=False))
        probes = tuple(await _probe_all(settings, env, client))
    tried = "; ".join(f"{p.kind} {p.url}: {p.detail}" for p in probes if not p.healthy)
    for probe in probes:
        if probe.healthy:
            kind = probe.identified or probe.kind
            others = f"; before it: {tried}" if tried else ""
            return Selection(kind=kind, url=probe.url, probes=probes,
                             reason=f"auto: first engine to answer its probe{others}")  # fmt: skip
    reason = f"auto: no engine answered ({tried}); falling back to the embedded engine"
    return Selection(kind="embedded", url=None, probes=probes, reason=reason)


def make_engine_backend(
    kind: EngineKind, url: str, client: httpx.AsyncClient | None = None
) -> OpenAICompatBackend | OllamaBackend:
    """The adapter for an external engine of ``kind`` at ``url`` (not health-checked)."""
    if kind == "ollama":
        return OllamaBackend(url, client=client)
    return _openai_backend(kind, url, client)


def _openai_backend(
    kind: EngineKind, url: str, client: httpx.AsyncClient | None = None
) -> OpenAICompatBackend:
    spec = ENGINES[kind]
    return OpenAICompatBackend(
        url,
        kind,
        client=client,
        probe_path=spec.probe_path,
        model_naming=spec.model_naming,
        install_hint=spec.install_hint,
    )


@asynccontextmanager
async def open_backend(
    config: BackendSettings,
    home: Path,
    *,
    env: Mapping[str, str] | None = None,
    start_embedded: bool = True,
) -> AsyncIterator[Backend]:
    """Select the engine (see the module rules), connect or start it, yield its `Backend`.

    ``start_embedded=False`` (the CLI's model commands) raises instead of starting the
    embedded engine, so a command never starts a second engine beside a running node.

    Raises:
        BackendError: the chosen engine is not healthy, or the embedded engine did not
            start (``backend_unavailable``); or nothing answered and ``start_embedded``
            is False.
    """
    selection = await select_backend(config, env)
    log.info("backend: %s", selection.describe())
    if selection.kind == "embedded":
        if selection.url:
            async with attach_embedded_engine(selection.url) as attached:
                await _require_healthy(attached, selection)
                yield attached
            return
        if not start_embedded:
            raise BackendError(f"no engine running ({selection.reason})")
        async with _open_embedded(config, home) as embedded:
            yield embedded
        return
    async with _open_external(config, selection) as external:
        await _require_healthy(external, selection)
        yield external


@asynccontextmanager
async def _open_embedded(config: BackendSettings, home: Path) -> AsyncIterator[Backend]:
    engine_config = EmbeddedConfig(
        threads=config.engine_threads,
        parallel=config.engine_slots,
        ctx=config.engine_ctx,
        supervisor=SupervisorConfig(health_interval=config.engine_health_interval),
    )
    async with open_embedded_engine(
        home,
        config=engine_config,
        model_cache=Path(config.model_cache) if config.model_cache else None,
        supervise=config.engine_supervise,
    ) as backend:
        yield backend


@asynccontextmanager
async def _open_external(
    config: BackendSettings, selection: Selection
) -> AsyncIterator[OpenAICompatBackend | OllamaBackend | InstanceRouter]:
    kind = selection.kind
    if kind == "embedded":
        raise BackendError("the embedded engine is not an external engine", code="bad_request")
    adapter: OpenAICompatBackend | OllamaBackend | InstanceRouter
    if kind == "vllm" and config.vllm_instances and not config.backend_url:
        adapter = _router(config)
    else:
        adapter = make_engine_backend(kind, selection.url or "")
    try:
        yield adapter
    finally:
        await adapter.aclose()


def _router(config: BackendSettings) -> InstanceRouter:
    spec = ENGINES["vllm"]
    by_url: dict[str, OpenAICompatBackend] = {}
    pinned: dict[str, OpenAICompatBackend] = {}
    for model, url in _instances(config):
        instance = by_url.setdefault(
            _instance_url(url),
            make_engine_backend("vllm", _instance_url(url)),  # type: ignore[arg-type]
        )
        if model is not None:
            pinned[model] = instance
    return InstanceRouter("vllm", list(by_url.values()), pinned, install_hint=spec.install_hint)


def _instances(config: BackendSettings) -> list[tuple[str | None, str]]:
    return parse_instances(config.vllm_instances)


def _instance_url(url: str) -> str:
    return normalize_url(url, ENGINES["vllm"].default_port)


async def _require_healthy(backend: Backend, selection: Selection) -> None:
    """Raise unless ``backend`` answers its health probe (an engine chosen on purpose)."""
    if await backend.health():
        return
    kind = selection.kind
    hint = f" (start it, or set {ENGINES[kind].env_var})" if kind != "embedded" else ""
    raise BackendError(
        f"no healthy {selection.kind} engine at {selection.url}{hint}", code="backend_unavailable"
    )
