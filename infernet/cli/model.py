"""``infernet model install|remove|list``: the node's model inventory from the command line.

Owns: the ``model`` subcommands (`add_model_commands`, `run_model_command`), the pull
progress bar (rich: bytes, %, speed, from the engine's own progress records) and the
``served_models`` edits in the config file. The library calls are
`infernet.backends.select.open_backend`, `Backend.pull` / `remove` / `list_models`,
`infernet.backends.fit.check_fit` and `infernet.node.hardware.detect_hardware`.

Invariants:
- A command never starts an engine: with no engine running only the embedded engine's
  built-in model can be installed (it needs no download), so a CLI call cannot start a second
  llama.cpp beside a running node.
- The config file is rewritten from its own contents, never from environment overrides, and
  only ``served_models`` changes. An empty ``served_models`` (serve everything) is first made
  explicit from the engine's list, so installing one model does not hide the others.
- A model whose estimated size exceeds this node's VRAM (RAM when CPU-only) is refused
  before any download unless ``--force``.
- A running node notices the changed ``served_models`` in its config file and re-announces
  (`infernet.backends.inventory.watch_served_models`).
- Exit code 0 only on success; errors print ``error: <message> [<code>]`` (cli/main.py).
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import msgspec
import trio
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from infernet.backends.base import Backend, ModelInfo, ModelNaming
from infernet.backends.embedded import EMBEDDED_BACKEND, EMBEDDED_MODEL
from infernet.backends.fit import check_fit
from infernet.backends.inventory import canonical_name
from infernet.protocol.errors import BackendError

__all__ = [
    "add_model_commands",
    "install_model",
    "list_models",
    "remove_model",
    "run_model_command",
]

_GB: Final = 1e9


def add_model_commands(subparsers: Any) -> None:
    """Add ``model install|remove|list`` to the ``infernet`` subcommand parsers.

    ``subparsers`` is what ``ArgumentParser.add_subparsers()`` returned; dispatch the
    parsed ``args`` (``args.command == "model"``) to `run_model_command`.
    """
    model = subparsers.add_parser("model", help="install, remove and list served models")
    sub = model.add_subparsers(dest="model_command", required=True, metavar="ACTION")
    install = sub.add_parser("install", help="pull a model into the engine and serve it")
    install.add_argument("name", help="qwen2.5:7b on Ollama; Qwen/Qwen2.5-7B-Instruct on vLLM...")
    install.add_argument("--verbose", action="store_true", help="print every engine status")
    install.add_argument("--force", action="store_true", help="skip the VRAM fit check")
    remove = sub.add_parser("remove", help="stop serving a model and delete its weights")
    remove.add_argument("name")
    remove.add_argument(
        "--keep-weights", action="store_true", help="stop serving it but keep the download"
    )
    listing = sub.add_parser("list", help="the engine's models and what this node serves")
    listing.add_argument("--json", action="store_true", help="machine-readable output")


def run_model_command(args: argparse.Namespace) -> int:
    """Run the parsed ``model`` subcommand; return the exit code.

    Raises:
        InfernetError: the engine or the config failed (cli/main.py prints it).
    """
    from infernet.node.config import home_dir

    home = home_dir()
    console = Console()
    if args.model_command == "install":
        return trio.run(
            lambda: install_model(
                home, args.name, verbose=args.verbose, force=args.force, console=console
            )
        )
    if args.model_command == "remove":
        return trio.run(
            lambda: remove_model(home, args.name, keep_weights=args.keep_weights, console=console)
        )
    return trio.run(lambda: list_models(home, as_json=args.json, console=console))


async def install_model(
    home: Path,
    name: str,
    *,
    verbose: bool = False,
    force: bool = False,
    console: Console | None = None,
    env: Mapping[str, str] | None = None,
) -> int:
    """Pull ``name`` into the running engine (progress bar) and add it to served_models.

    Raises:
        BackendError: no engine to install into, the model does not fit (without
            ``force``), or the pull failed (``model_not_found``, disk full...).
    """
    console = console or Console()
    from infernet.backends.select import open_backend
    from infernet.node.config import load_config
    from infernet.node.hardware import detect_hardware

    config = load_config(home, _env(env))
    hardware = await trio.to_thread.run_sync(detect_hardware, home)
    opened = False
    try:
        async with open_backend(config, home, env=_env(env), start_embedded=False) as backend:
            opened = True
            naming = backend.capabilities.model_naming
            verdict = check_fit(ModelInfo(name=name), hardware.memory_budget_bytes, naming)
            if not verdict.fits and not force:
                raise BackendError(
                    f"{verdict.reason} (use --force to install anyway)", code="bad_request"
                )
            before = [m.name for m in await backend.list_models()]
            await _pull(backend, name, before, verbose=verbose, console=console)
            after = {canonical_name(m.name, naming): m for m in await backend.list_models()}
            installed = after.get(canonical_name(name, naming))
            engine = backend.name
    except BackendError as exc:
        if opened or name != EMBEDDED_MODEL or config.backend not in ("auto", "embedded"):
            raise
        console.print(f"[dim]{exc}[/dim]", highlight=False)
        before, installed, engine = [], None, EMBEDDED_BACKEND  # built in: no download
    served = _update_served(home, add=name, engine_models=before)
    size = installed.size_bytes if installed is not None else None
    console.print(
        f"Installed {name} on {engine}" + (f" ({_size(size)})" if size else "") + ".",
        highlight=False,
    )
    console.print(f"served_models: {', '.join(served)}", highlight=False)
    console.print("A running node picks up the change and re-announces.", highlight=False)
    return 0


async def _pull(
    backend: Backend, name: str, before: list[str], *, verbose: bool, console: Console
) -> None:
    """Run the engine's pull with a progress bar; for engines that cannot pull, accept a
    model they already serve (and otherwise raise their how-to-install hint)."""
    if not backend.capabilities.pull and name in before:
        console.print(f"{backend.name} already serves {name}.", highlight=False)
        return
    if verbose:
        console.print(f"Pulling {name} into {backend.name}...", highlight=False)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TaskProgressColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    layers: dict[str, TaskID] = {}
    last_status = ""
    with Progress(*columns, console=console) as progress:
        async for record in backend.pull(name):
            if record.total and record.digest:
                task = layers.get(record.digest)
                if task is None:
                    label = record.digest.removeprefix("sha256:")[:12]
                    task = layers[record.digest] = progress.add_task(label, total=record.total)
                progress.update(task, completed=record.completed or 0, total=record.total)
            elif verbose and record.status != last_status:
                progress.console.print(record.status, highlight=False)
            last_status = record.status


async def remove_model(
    home: Path,
    name: str,
    *,
    keep_weights: bool = False,
    console: Console | None = None,
    env: Mapping[str, str] | None = None,
) -> int:
    """Remove ``name`` from served_models and (unless ``keep_weights``) from the engine.

    Raises:
        BackendError: the engine is not running, or refused the removal for another reason
            than not having the model.
    """
    console = console or Console()
    from infernet.backends.select import open_backend
    from infernet.node.config import load_config

    config = load_config(home, _env(env))
    engine_models: list[str] = []
    opened = False
    try:
        async with open_backend(config, home, env=_env(env), start_embedded=False) as backend:
            opened = True
            engine_models = [m.name for m in await backend.list_models()]
            if not keep_weights and backend.capabilities.remove:
                try:
                    await backend.remove(name)
                    console.print(f"Deleted {name} from {backend.name}.", highlight=False)
                except BackendError as exc:
                    if exc.code != "model_not_found":
                        raise
                    console.print(f"{backend.name} did not have {name}.", highlight=False)
    except BackendError:
        if opened or config.backend not in ("auto", "embedded"):
            raise
        engine_models = [EMBEDDED_MODEL]
    served = _update_served(home, remove=name, engine_models=engine_models)
    console.print(f"served_models: {', '.join(served) or '(none)'}", highlight=False)
    return 0


async def list_models(
    home: Path,
    *,
    as_json: bool = False,
    console: Console | None = None,
    env: Mapping[str, str] | None = None,
) -> int:
    """Print the engine's models with size, backend and status (a table, or JSON).

    Status: ``loaded`` (resident in memory), ``installed``, ``not served`` (left out of
    served_models), ``missing`` (in served_models, not in the engine), ``built-in``.

    Raises:
        BackendError: an explicitly configured engine is not running.
    """
    console = console or Console()
    from infernet.backends.select import open_backend
    from infernet.node.config import load_config

    config = load_config(home, _env(env))
    opened = False
    try:
        async with open_backend(config, home, env=_env(env), start_embedded=False) as backend:
            opened = True
            rows = _rows(
                await backend.list_models(),
                backend.name,
                config.served_models,
                backend.capabilities.model_naming,
            )
    except BackendError:
        if opened or config.backend not in ("auto", "embedded"):
            raise  # only "no engine running" means: describe the built-in model instead
        rows = [_builtin_row(home, config.model_cache)]
    if as_json:
        console.print(json.dumps(rows, indent=2), markup=False, highlight=False, soft_wrap=True)
        return 0
    table = Table(box=None, pad_edge=False)
    for column in ("MODEL", "SIZE", "BACKEND", "STATUS"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["model"], _size(row["size_bytes"]), row["backend"], row["status"])
    console.print(table)
    return 0


def _rows(
    models: list[ModelInfo], engine: str, served: tuple[str, ...], naming: ModelNaming
) -> list[dict[str, Any]]:
    wanted = {canonical_name(n, naming) for n in served}
    rows = []
    listed = set()
    for model in models:
        key = canonical_name(model.name, naming)
        listed.add(key)
        status = "loaded" if model.loaded else "installed"
        if served and key not in wanted:
            status = "not served"
        rows.append(
            {
                "model": model.name,
                "size_bytes": model.size_bytes,
                "backend": engine,
                "status": status,
                "digest": model.digest,
            }
        )
    for name in served:
        if canonical_name(name, naming) not in listed:
            rows.append(
                {"model": name, "size_bytes": None, "backend": engine, "status": "missing",
                 "digest": None}
            )  # fmt: skip
    return rows


def _builtin_row(home: Path, model_cache: str) -> dict[str, Any]:
    """The embedded engine's model, described without starting the engine."""
    from infernet.backends.embedded import EMBEDDED_GGUF_NAME, EMBEDDED_MODEL_DIGEST

    cache = Path(model_cache) if model_cache else home / "models"
    try:
        size: int | None = (cache / EMBEDDED_GGUF_NAME).stat().st_size
    except OSError:
        size = None
    return {
        "model": EMBEDDED_MODEL,
        "size_bytes": size,
        "backend": EMBEDDED_BACKEND,
        "status": "built-in",
        "digest": EMBEDDED_MODEL_DIGEST,
    }


def _update_served(
    home: Path, *, add: str | None = None, remove: str | None = None, engine_models: list[str]
) -> tuple[str, ...]:
    """Rewrite ``served_models`` in the config file (and only that); return the new list."""
    from infernet.node.config import load_config, save_config

    stored = load_config(home, {})  # the file as written: no environment overrides
    served = list(stored.served_models) or list(engine_models)
    if add is not None and add not in served:
        served.append(add)
    if remove is not None:
        served = [m for m in served if m != remove]
    new = tuple(served)
    save_config(home, msgspec.structs.replace(stored, served_models=new))
    return new


def _size(size: int | None) -> str:
    if not size:
        return "-"
    if size >= _GB:
        return f"{size / _GB:.1f} GB"
    return f"{size / 1e6:.0f} MB"


def _env(env: Mapping[str, str] | None) -> dict[str, str]:
    return dict(os.environ) if env is None else dict(env)
