"""``infernet model recommend [--install-all] [--json]``: the catalogue models that suit this
node, best first, and which of them the engine already has.

Owns: `survey_engine` (which engine the CLI would talk to, its model naming, whether it can
download models, what it lists; also used by ``infernet setup``) and `recommend_models`.
The ranking is `infernet.backends.catalog.recommend`; the budget is
`infernet.node.hardware.HardwareInfo.memory_budget_bytes` (VRAM, RAM on a CPU-only node),
and the line above the table states the fit rule with this node's numbers
(`infernet.backends.fit.describe_rule`): SIZE is the weights, NEEDS the weights with headroom,
both in GiB/MiB like every size the CLI prints; installs go through
`infernet.cli.model.install_one` (same fit check and progress bar as ``infernet model
install``).

Invariants: like every model command it never starts an engine: with no engine running the
embedded engine is described (its bundled model counts as installed). A model the engine
cannot download (vLLM, SGLang, MAX, llama.cpp, the embedded engine) is skipped by
``--install-all`` with one line saying how to serve it; one failed install does not stop the
others, but the exit code is then 1.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import trio
from rich.console import Console
from rich.table import Table

from infernet.backends.base import ModelNaming
from infernet.backends.catalog import Recommendation, recommend
from infernet.backends.embedded import EMBEDDED_BACKEND, EMBEDDED_MODEL
from infernet.backends.engines import ENGINES
from infernet.backends.fit import describe_rule, format_size, usable_bytes
from infernet.backends.inventory import canonical_name
from infernet.cli.model import cli_env, install_one, print_json
from infernet.node.config import NodeConfig
from infernet.protocol.errors import BackendError

__all__ = ["EngineSurvey", "recommend_models", "survey_engine"]

EMBEDDED_HINT: Final = (
    "the embedded engine serves only its bundled model; to serve other models run Ollama "
    "(`ollama serve`) or vLLM and rerun `infernet setup`"
)
_NAMING_LABEL: Final[dict[ModelNaming, str]] = {
    "ollama": "Ollama tags",
    "huggingface": "HuggingFace repo ids",
    "alias": "GGUF files / aliases",
}


@dataclass(frozen=True, slots=True)
class EngineSurvey:
    """The engine the CLI would use now: name, model naming, pull support, listed models."""

    engine: str
    naming: ModelNaming
    can_pull: bool
    models: tuple[str, ...]
    hint: str  # how to get a model onto this engine when it cannot pull

    def has(self, name: str) -> bool:
        """Whether the engine lists ``name`` (Ollama's ``:latest`` and case ignored)."""
        wanted = canonical_name(name, self.naming).lower()
        return any(canonical_name(m, self.naming).lower() == wanted for m in self.models)


async def survey_engine(
    config: NodeConfig, home: Path, env: Mapping[str, str]
) -> EngineSurvey:
    """Look at the engine `open_backend` picks, without starting one.

    Raises:
        BackendError: an explicitly configured engine is not running, or it cannot list its
            models.
    """
    from infernet.backends.select import open_backend

    opened = False
    try:
        async with open_backend(config, home, env=env, start_embedded=False) as backend:
            opened = True
            listed = tuple(m.name for m in await backend.list_models())
            caps = backend.capabilities
            spec = ENGINES.get(backend.name)  # type: ignore[call-overload]
            hint = spec.install_hint if spec is not None else EMBEDDED_HINT
            return EngineSurvey(backend.name, caps.model_naming, caps.pull, listed, hint)
    except BackendError:
        if opened or config.backend not in ("auto", "embedded"):
            raise  # only "no engine running" means: the embedded engine would start
    return EngineSurvey(EMBEDDED_BACKEND, "alias", False, (EMBEDDED_MODEL,), EMBEDDED_HINT)


async def recommend_models(
    home: Path,
    *,
    install_all: bool = False,
    console: Console | None = None,
    out: Console | None = None,
    env: Mapping[str, str] | None = None,
) -> int:
    """Print the models that suit this node (a table, or JSON on ``out``); with
    ``install_all`` install those the engine does not have. Return the exit code.

    Raises:
        InfernetError: the config is invalid, or the configured engine is not running.
    """
    from infernet.node.config import load_config
    from infernet.node.hardware import detect_hardware

    console = console or Console()
    env = cli_env(env)
    config = load_config(home, env)
    hardware = await trio.to_thread.run_sync(detect_hardware, home)
    survey = await survey_engine(config, home, env)
    budget = hardware.memory_budget_bytes or None
    picks = recommend(hardware.tier, budget, survey.naming,
                      embedded=survey.engine == EMBEDDED_BACKEND)  # fmt: skip
    doc: dict[str, Any] = {
        "tier": hardware.tier,
        "memory": "VRAM" if hardware.vram_total_bytes else "RAM",
        "budget_bytes": budget,
        "usable_bytes": usable_bytes(budget, survey.naming) if budget else None,
        "engine": survey.engine,
        "naming": survey.naming,
        "models": [_row(p, survey) for p in picks],
        "installed_now": [],
        "skipped": [],
        "failed": [],
    }
    if out is None:
        _print_table(console, doc, survey, footnote=not install_all)
    if install_all:
        await _install_missing(home, picks, survey, doc, console, env)
    if out is not None:
        print_json(out, doc)
    elif not install_all and any(m["status"] == "available" for m in doc["models"]):
        console.print("Install them all with `infernet model recommend --install-all`.",
                      highlight=False)  # fmt: skip
    return 1 if doc["failed"] else 0


def _row(pick: Recommendation, survey: EngineSurvey) -> dict[str, Any]:
    installed = survey.has(pick.name)
    status = "installed" if installed else "available" if survey.can_pull else "manual"
    return {
        "model": pick.name,
        "family": pick.model.family,
        "params_b": float(pick.model.params_b),
        "size_bytes": pick.weights_bytes,
        "needed_bytes": pick.needed_bytes,
        "band": pick.model.band,
        "min_tier": pick.model.min_tier,
        "use": pick.model.use,
        "default": pick.default,
        "installed": installed,
        "installable": installed or survey.can_pull,
        "status": status,
    }


def _print_table(
    console: Console, doc: dict[str, Any], survey: EngineSurvey, *, footnote: bool
) -> None:
    budget, memory = doc["budget_bytes"], doc["memory"]
    shown = f"{format_size(budget)} {memory}" if budget else "unknown memory"
    console.print(f"Tier {doc['tier']}, {shown}; engine {survey.engine} "
                  f"({_NAMING_LABEL[survey.naming]})", highlight=False)  # fmt: skip
    if budget:
        console.print(describe_rule(budget, survey.naming, memory), highlight=False)
    if not doc["models"]:
        console.print("No catalogue model fits this node.", highlight=False)
        return
    table = Table(box=None, pad_edge=False)
    for column in ("MODEL", "SIZE", "NEEDS", "BAND", "MIN TIER", "STATUS"):
        table.add_column(column)
    for m in doc["models"]:
        name = m["model"] + (" (default)" if m["default"] else "")
        size, needs = (f"~{format_size(m[k])}" if m[k] else "-"
                       for k in ("size_bytes", "needed_bytes"))  # fmt: skip
        table.add_row(name, size, needs, m["band"], m["min_tier"], m["status"])
    console.print(table)
    if footnote and any(m["status"] == "manual" for m in doc["models"]):
        console.print(f"manual: {survey.engine} cannot download models; {survey.hint}",
                      highlight=False)  # fmt: skip


async def _install_missing(
    home: Path,
    picks: list[Recommendation],
    survey: EngineSurvey,
    doc: dict[str, Any],
    console: Console,
    env: Mapping[str, str],
) -> None:
    for pick in picks:
        if survey.has(pick.name):
            continue
        if not survey.can_pull:
            reason = f"{survey.engine} cannot download models; {survey.hint}"
            doc["skipped"].append({"model": pick.name, "reason": reason})
            console.print(f"skip {pick.name}: {reason}", highlight=False)
            continue
        try:
            done = await install_one(home, pick.name, console=console, env=env)
        except BackendError as exc:
            doc["failed"].append({"model": pick.name, "error": exc.message, "code": exc.code})
            console.print(f"failed {pick.name}: {exc.message} [{exc.code}]", highlight=False)
            continue
        doc["installed_now"].append(pick.name)
        for row in doc["models"]:
            if row["model"] == pick.name:
                row.update(installed=True, installable=True, status="installed")
        size = f" ({format_size(done.size_bytes)})" if done.size_bytes else ""
        console.print(f"Installed {pick.name} on {done.engine}{size}.", highlight=False)
