"""The node's model inventory: what it serves, whether each model fits, and which weights.

Owns: reconciling the config's ``served_models`` with what the engine lists (`build_inventory`:
mismatches are warned about, models that do not fit in memory are refused with the reason),
the weights hash of each served model (`weights_hash`), and noticing when ``served_models``
changes on disk (`watch_served_models`, for the daemon to re-announce after
``infernet model install/remove``). DESIGN.md "Beyond the seeds" (a weights hash per model,
so routing never mixes two different models under one name).

Weights hash, best source first:
1. the engine's own digest (Ollama's manifest digest, the embedded GGUF's sha256);
2. ``sha256:`` of the local weights file, or of a manifest of the weight files' hashes for a
   directory, when the engine reports a local path (cached by path, size and mtime);
3. ``hf:<repo>@<commit>`` from the local HuggingFace cache for a HuggingFace repo id;
4. ``""``: unknown, and a warning says so.

Invariants: an empty ``served_models`` means "everything the engine lists"; a model is never
advertised when the fit check says it does not fit; nothing here starts or stops an engine.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import AsyncIterator, Iterable, Mapping
from pathlib import Path
from typing import Final

import msgspec
import trio

from infernet.backends.base import Backend, ModelInfo, ModelNaming
from infernet.backends.fit import FitVerdict, check_fit

__all__ = [
    "Inventory",
    "ServedModel",
    "build_inventory",
    "canonical_name",
    "read_served_models",
    "watch_served_models",
    "weights_hash",
]

log = logging.getLogger("infernet.backends")

_WEIGHT_SUFFIXES: Final = (".safetensors", ".gguf", ".bin", ".pt", ".pth")
_HASH_CHUNK: Final = 4 * 1024 * 1024
_HASH_CACHE_VERSION: Final = 1


class ServedModel(msgspec.Struct, frozen=True, kw_only=True):
    """A model the node may advertise, with its weights hash and fit verdict."""

    name: str
    weights_hash: str
    fit: FitVerdict
    size_bytes: int | None = None
    quantization: str = ""


class Inventory(msgspec.Struct, frozen=True, kw_only=True):
    """The reconciliation of ``served_models`` against the engine and the memory budget.

    ``serve``: advertise these. ``refused``: listed but too big for this node. ``missing``:
    in ``served_models`` but not in the engine. ``unlisted``: in the engine but left out of a
    non-empty ``served_models``.
    """

    backend: str
    serve: tuple[ServedModel, ...] = ()
    refused: tuple[ServedModel, ...] = ()
    missing: tuple[str, ...] = ()
    unlisted: tuple[str, ...] = ()

    @property
    def names(self) -> frozenset[str]:
        """The names to advertise and accept jobs for."""
        return frozenset(m.name for m in self.serve)

    def problems(self) -> list[str]:
        """Human lines for every mismatch and refusal (empty when all is well)."""
        lines = [f"refusing to advertise {m.name}: {m.fit.reason}" for m in self.refused]
        if self.missing:
            lines.append(
                f"served_models lists {', '.join(self.missing)} but {self.backend} does not "
                "have it; run `infernet model install NAME` or fix served_models"
            )
        if self.unlisted:
            lines.append(
                f"{self.backend} also has {', '.join(self.unlisted)}, not in served_models "
                "(not advertised)"
            )
        lines.extend(
            f"no weights hash for {m.name}: peers cannot tell its weights from another "
            "model of the same name"
            for m in self.serve
            if not m.weights_hash
        )
        return lines


def canonical_name(name: str, naming: ModelNaming) -> str:
    """The name an engine would resolve ``name`` to: Ollama adds ``:latest`` to a bare name."""
    if naming == "ollama" and ":" not in name.rsplit("/", 1)[-1]:
        return f"{name}:latest"
    return name


async def build_inventory(
    backend: Backend,
    served_models: Iterable[str],
    memory_budget_bytes: int | None,
    *,
    hash_cache: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> Inventory:
    """List the engine's models and decide which to advertise; log every problem found.

    ``memory_budget_bytes`` is total VRAM (RAM on a CPU-only node), None to skip the fit
    check. Hashing a local weights file runs in a worker thread (cached in ``hash_cache``).

    Raises:
        BackendError: the engine cannot list its models.
    """
    naming = backend.capabilities.model_naming
    listed = {canonical_name(m.name, naming): m for m in await backend.list_models()}
    wanted = list(dict.fromkeys(served_models))
    if not wanted:
        wanted = [m.name for m in listed.values()]
    chosen = {canonical_name(n, naming) for n in wanted}
    serve: list[ServedModel] = []
    refused: list[ServedModel] = []
    missing: list[str] = []
    for name in wanted:
        model = listed.get(canonical_name(name, naming))
        if model is None:
            missing.append(name)
            continue
        digest = await weights_hash(model, naming, cache_file=hash_cache, env=env)
        entry = ServedModel(
            name=name,
            weights_hash=digest,
            fit=check_fit(model, memory_budget_bytes, naming),
            size_bytes=model.size_bytes,
            quantization=model.quantization or "",
        )
        (serve if entry.fit.fits else refused).append(entry)
    unlisted = tuple(m.name for key, m in listed.items() if key not in chosen)
    inventory = Inventory(
        backend=backend.name,
        serve=tuple(serve),
        refused=tuple(refused),
        missing=tuple(missing),
        unlisted=unlisted,
    )
    for line in inventory.problems():
        log.warning("%s", line)
    return inventory


async def weights_hash(
    model: ModelInfo,
    naming: ModelNaming = "alias",
    *,
    cache_file: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> str:
    """The weights hash of ``model`` (see the module docstring for the sources), or ``""``."""
    if model.digest:
        return model.digest
    if model.path:
        path = Path(model.path)
        try:
            return await trio.to_thread.run_sync(_hash_path_cached, path, cache_file)
        except OSError as exc:
            log.warning("cannot hash the weights of %s at %s: %s", model.name, path, exc)
    if naming == "huggingface":
        return _hf_revision(model.name, os.environ if env is None else env)
    return ""


def _hash_path_cached(path: Path, cache_file: Path | None) -> str:
    """sha256 of a file, or of a directory's weight files, reusing a cached value.

    Raises:
        OSError: the path cannot be read.
    """
    stat = path.stat()
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    cache = _read_cache(cache_file)
    if key in cache:
        return cache[key]
    value = _hash_file(path) if path.is_file() else _hash_directory(path)
    if cache_file is not None:
        cache[key] = value
        _write_cache(cache_file, cache)
    return value


def _hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"


def _hash_directory(path: Path) -> str:
    """Hash of ``"<relative name> <sha256>\\n"`` lines for each weight file, sorted."""
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in _WEIGHT_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no weight files under {path}")
    manifest = "".join(f"{p.relative_to(path).as_posix()} {_hash_file(p)}\n" for p in files)
    return f"sha256:{hashlib.sha256(manifest.encode()).hexdigest()}"


class _HashCache(msgspec.Struct):
    version: int = _HASH_CACHE_VERSION
    entries: dict[str, str] = msgspec.field(default_factory=dict)


def _read_cache(cache_file: Path | None) -> dict[str, str]:
    if cache_file is None:
        return {}
    try:
        cache = msgspec.json.decode(cache_file.read_bytes(), type=_HashCache)
    except (OSError, msgspec.DecodeError):
        return {}  # a missing or corrupt cache only costs a re-hash
    return cache.entries if cache.version == _HASH_CACHE_VERSION else {}


def _write_cache(cache_file: Path, entries: dict[str, str]) -> None:
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_name(cache_file.name + ".tmp")
        tmp.write_bytes(msgspec.json.encode(_HashCache(entries=entries)))
        os.replace(tmp, cache_file)
    except OSError as exc:
        log.warning("cannot write the weights hash cache %s: %s", cache_file, exc)


def _hf_revision(repo: str, env: Mapping[str, str]) -> str:
    """``hf:<repo>@<commit>`` from the local HuggingFace cache, or ``""``."""
    if repo.count("/") != 1:
        return ""
    hub = env.get("HF_HUB_CACHE") or str(
        Path(env.get("HF_HOME") or Path.home() / ".cache" / "huggingface") / "hub"
    )
    ref = Path(hub) / f"models--{repo.replace('/', '--')}" / "refs" / "main"
    try:
        commit = ref.read_text().strip()
    except OSError:
        return ""
    return f"hf:{repo}@{commit}" if commit else ""


class _ServedModelsFile(msgspec.Struct):
    served_models: tuple[str, ...] = ()


def read_served_models(config_file: Path) -> tuple[str, ...]:
    """The ``served_models`` list in the node's config file (``()`` when missing).

    Raises:
        OSError: the file exists but cannot be read.
        msgspec.DecodeError: it is not valid JSON (for example while being rewritten).
    """
    try:
        data = config_file.read_bytes()
    except FileNotFoundError:
        return ()
    return msgspec.json.decode(data, type=_ServedModelsFile).served_models


def _stamp(config_file: Path) -> tuple[int, int] | None:
    """The file's (mtime, size), or None when it does not exist (a tiny local stat)."""
    try:
        stat = config_file.stat()
    except FileNotFoundError:
        return None
    return stat.st_mtime_ns, stat.st_size


async def watch_served_models(
    config_file: Path, *, interval: float = 1.0
) -> AsyncIterator[tuple[str, ...]]:
    """Yield ``served_models`` from ``config_file`` now and after every change. Cancel-safe.

    Polls the file's mtime every ``interval`` seconds (cheap, and works whichever process
    wrote it); a half-written or unreadable file is skipped until the next poll.
    """
    last_stamp: tuple[int, int] | None = None
    last_value: tuple[str, ...] | None = None
    while True:
        stamp = _stamp(config_file)
        if stamp != last_stamp or last_value is None:
            try:
                value = read_served_models(config_file)
            except (OSError, msgspec.DecodeError) as exc:
                log.debug("config %s unreadable right now: %s", config_file, exc)
            else:
                last_stamp = stamp
                if value != last_value:
                    last_value = value
                    yield value
        await trio.sleep(interval)  # polling the file: there is no portable change event
