"""``infernet model install|remove|list|recommend``: the node's model inventory from the
command line.

Owns: the ``model`` subcommands (`add_model_commands`, `run_model_command`), the pull
progress bar (rich: bytes, %, speed, from the engine's own progress records), the
``served_models`` edits in the config file, and ``recommend`` (the catalogue models that suit
this node, `infernet.backends.catalog.recommend`, with ``--install-all``; implemented in
`infernet.cli.recommend`). The library calls
are `infernet.backends.select.open_backend`, `Backend.pull` / `remove` / `list_models`,
`infernet.backends.fit.check_fit` and `infernet.node.hardware.detect_hardware`.
`install_one` / `remove_one` are the reusable steps (``infernet setup`` installs through
`install_one`); `install_model` / `remove_model` add the human summary.

Invariants:
- A command never starts an engine: with no engine running only the embedded engine's
  built-in model can be installed (it needs no download), so a CLI call cannot start a second
  llama.cpp beside a running node.
- The config file is rewritten from its own contents, never from environment overrides, and
  only ``served_models`` changes. An empty ``served_models`` (serve everything) is first made
  explicit from the engine's list, so installing one model does not hide the others.
- A model that does not fit this node's VRAM (RAM when CPU-only) with headroom
  (`infernet.backends.fit`'s rule) is refused before any download unless ``--force``.
- Sizes print in GiB/MiB (`infernet.backends.fit.format_size`), the progress bar too.
- A running node notices the changed ``served_models`` in its config file and re-announces
  (`infernet.backends.inventory.watch_served_models`).
- ``--json``: one document on stdout; progress and notes go to stderr.
- Exit code 0 only on success; errors print ``error: <message> [<code>]`` (cli/main.py).
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

import msgspec
import trio
from rich import filesize
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    Task,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table
from rich.text import Text

from infernet.backends.base import Backend, ModelInfo, ModelNaming
from infernet.backends.embedded import EMBEDDED_BACKEND, EMBEDDED_MODEL
from infernet.backends.fit import check_fit, format_size
from infernet.backends.inventory import canonical_name
from infernet.protocol.errors import BackendError

__all__ = [
    "InstallResult",
    "RemoveResult",
    "add_model_commands",
    "cli_env",
    "install_model",
    "install_one",
    "list_models",
    "print_json",
    "remove_model",
    "remove_one",
    "run_model_command",
    "update_served_models",
]

_BINARY_SUFFIXES: Final = ["B", "KiB", "MiB", "GiB", "TiB"]


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
    install.add_argument("--json", action="store_true", help="machine-readable output")
    remove = sub.add_parser("remove", help="stop serving a model and delete its weights")
    remove.add_argument("name")
    remove.add_argument(
        "--keep-weights", action="store_true", help="stop serving it but keep the download"
    )
    remove.add_argument("--json", action="store_true", help="machine-readable output")
    listing = sub.add_parser("list", help="the engine's models and what this node serves")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    rec = sub.add_parser("recommend", help="the models that suit this node's VRAM tier")
    rec.add_argument("--install-all", action="store_true",
                     help="install the recommended models not installed yet")
    rec.add_argument("--json", action="store_true", help="machine-readable output")


def run_model_command(args: argparse.Namespace) -> int:
    """Run the parsed ``model`` subcommand; return the exit code.

    Raises:
        InfernetError: the engine or the config failed (cli/main.py prints it).
    """
    from infernet.node.config import home_dir

    home = home_dir()
    as_json = bool(args.json)
    out = Console()
    console = Console(stderr=True) if as_json else out  # progress never mixes with JSON
    if args.model_command == "install":
        return trio.run(
            lambda: install_model(home, args.name, verbose=args.verbose, force=args.force,
                                  console=console, out=out if as_json else None)
        )  # fmt: skip
    if args.model_command == "remove":
        return trio.run(
            lambda: remove_model(home, args.name, keep_weights=args.keep_weights,
                                 console=console, out=out if as_json else None)
        )  # fmt: skip
    if args.model_command == "recommend":
        from infernet.cli.recommend import recommend_models

        return trio.run(
            lambda: recommend_models(home, install_all=args.install_all, console=console,
                                     out=out if as_json else None)
        )  # fmt: skip
    return trio.run(lambda: list_models(home, as_json=as_json, console=console))


@dataclass(frozen=True, slots=True)
class InstallResult:
    """What `install_one` did: the model, the engine, its size, the new served_models."""

    model: str
    engine: str
    size_bytes: int | None
    served_models: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class RemoveResult:
    """What `remove_one` did: whether the engine deleted weights, the new served_models."""

    model: str
    engine: str | None
    deleted: bool
    served_models: tuple[str, ...]


def print_json(out: Console, doc: object) -> None:
    """Print ``doc`` as indented JSON on ``out``, unwrapped and without markup."""
    out.print(json.dumps(doc, indent=2), markup=False, highlight=False, soft_wrap=True)


async def install_model(
    home: Path,
    name: str,
    *,
    verbose: bool = False,
    force: bool = False,
    console: Console | None = None,
    out: Console | None = None,
    env: Mapping[str, str] | None = None,
) -> int:
    """Pull ``name`` into the running engine (progress bar) and add it to served_models;
    print what was done (as JSON on ``out`` when given); return the exit code.

    Raises:
        BackendError: as `install_one`.
    """
    console = console or Console()
    done = await install_one(home, name, verbose=verbose, force=force, console=console, env=env)
    if out is not None:
        print_json(out, asdict(done))
        return 0
    size = f" ({format_size(done.size_bytes)})" if done.size_bytes else ""
    console.print(f"Installed {name} on {done.engine}{size}.", highlight=False)
    console.print(f"served_models: {', '.join(done.served_models)}", highlight=False)
    console.print("A running node picks up the change and re-announces.", highlight=False)
    return 0


async def install_one(
    home: Path,
    name: str,
    *,
    verbose: bool = False,
    force: bool = False,
    console: Console | None = None,
    env: Mapping[str, str] | None = None,
) -> InstallResult:
    """Pull ``name`` into the running engine (progress bar on ``console``) and add it to
    served_models.

    Raises:
        BackendError: no engine to install into, the model does not fit (without
            ``force``), or the pull failed (``model_not_found``, disk full...).
    """
    console = console or Console()
    from infernet.backends.select import open_backend
    from infernet.node.config import load_config
    from infernet.node.hardware import detect_hardware

    config = load_config(home, cli_env(env))
    hardware = await trio.to_thread.run_sync(detect_hardware, home)
    opened = False
    try:
        async with open_backend(config, home, env=cli_env(env), start_embedded=False) as backend:
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
    served = update_served_models(home, add=name, engine_models=before)
    size = installed.size_bytes if installed is not None else None
    return InstallResult(model=name, engine=engine, size_bytes=size, served_models=served)


class _BinarySpeedColumn(TransferSpeedColumn):
    """Download speed in KiB/s, MiB/s...: rich's own column is decimal (MB/s), beside the
    binary sizes of `DownloadColumn(binary_units=True)`."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        if speed is None:
            return Text("?", style="progress.data.speed")
        unit, suffix = filesize.pick_unit_and_suffix(int(speed), _BINARY_SUFFIXES, 1024)
        return Text(f"{speed / unit:.1f} {suffix}/s", style="progress.data.speed")


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
        DownloadColumn(binary_units=True),
        TaskProgressColumn(),
        _BinarySpeedColumn(),
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
    out: Console | None = None,
    env: Mapping[str, str] | None = None,
) -> int:
    """Remove ``name`` from served_models and (unless ``keep_weights``) from the engine;
    print the new served_models (as JSON on ``out`` when given); return the exit code.

    Raises:
        BackendError: as `remove_one`.
    """
    console = console or Console()
    done = await remove_one(home, name, keep_weights=keep_weights, console=console, env=env)
    if out is not None:
        print_json(out, asdict(done))
    else:
        console.print(f"served_models: {', '.join(done.served_models) or '(none)'}",
                      highlight=False)  # fmt: skip
    return 0


async def remove_one(
    home: Path,
    name: str,
    *,
    keep_weights: bool = False,
    console: Console | None = None,
    env: Mapping[str, str] | None = None,
) -> RemoveResult:
    """Remove ``name`` from served_models and (unless ``keep_weights``) from the engine.

    Raises:
        BackendError: the engine is not running, or refused the removal for another reason
            than not having the model.
    """
    console = console or Console()
    from infernet.backends.select import open_backend
    from infernet.node.config import load_config

    config = load_config(home, cli_env(env))
    engine_models: list[str] = []
    engine: str | None = None
    deleted = opened = False
    try:
        async with open_backend(config, home, env=cli_env(env), start_embedded=False) as backend:
            opened = True
            engine = backend.name
            engine_models = [m.name for m in await backend.list_models()]
            _refuse_emptying(home, name, engine_models)  # before any weights are deleted
            if not keep_weights and backend.capabilities.remove:
                try:
                    await backend.remove(name)
                    deleted = True
                    console.print(f"Deleted {name} from {backend.name}.", highlight=False)
                except BackendError as exc:
                    if exc.code != "model_not_found":
                        raise
                    console.print(f"{backend.name} did not have {name}.", highlight=False)
    except BackendError:
        if opened or config.backend not in ("auto", "embedded"):
            raise
        engine_models = [EMBEDDED_MODEL]
        _refuse_emptying(home, name, engine_models)
    served = update_served_models(home, remove=name, engine_models=engine_models)
    return RemoveResult(model=name, engine=engine, deleted=deleted, served_models=served)


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

    config = load_config(home, cli_env(env))
    opened = False
    try:
        async with open_backend(config, home, env=cli_env(env), start_embedded=False) as backend:
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
        table.add_row(row["model"], format_size(row["size_bytes"]), row["backend"], row["status"])
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


def _refuse_emptying(home: Path, name: str, engine_models: list[str]) -> None:
    """Refuse to remove the last served model: an empty ``served_models`` means "serve
    everything the engine lists", the opposite of what removing it asks for.

    Raises:
        BackendError: ``bad_request`` when ``name`` is the only model left.
    """
    from infernet.node.config import load_config

    served = list(load_config(home, {}).served_models) or list(engine_models)
    if served and all(m == name for m in served):
        raise BackendError(
            f"{name} is the only model this node serves; removing it would leave "
            "served_models empty, which means 'serve everything the engine lists'. Install "
            "another model first, or stop the node (`infernet stop`) to serve nothing",
            code="bad_request")


def update_served_models(
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


def cli_env(env: Mapping[str, str] | None) -> dict[str, str]:
    """``env`` as a dict, or the process environment when None (tests pass their own)."""
    return dict(os.environ) if env is None else dict(env)
