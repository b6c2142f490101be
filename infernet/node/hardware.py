"""What this machine has: GPUs and their VRAM, RAM, disk, CPU cores, and the VRAM tier.

Owns: GPU detection (NVIDIA through pynvml, then ``nvidia-smi``; AMD through ``rocm-smi``,
then ``rocminfo``; Apple through ``system_profiler``; CPU-only otherwise), the VRAM tier and
default model per tier, the memory budget a model must fit in, and `HardwareSummary`, the
coarse record that may leave the node. DESIGN.md "Announcements" (VRAM tier, GPU summary).

Invariants:
- Detection never raises: a missing driver, library or tool, a tool that hangs (every
  command has a timeout) or prints garbage becomes a line in ``warnings`` and the next
  fallback is tried; with nothing found the node is CPU-only.
- pynvml is imported lazily (and only when detection runs), so the node starts on machines
  without it; its deprecation notice on import (pynvml 13 forwards to nvidia-ml-py) is
  silenced there, as it says nothing about this machine.
- `HardwareSummary` carries no hostname, serial, UUID, exact CPU model, driver version or
  free-space figure: tier, GPU vendor/model/count and whole GiB only.

Tiers: ``>=48gb``, ``>=24gb``, ``>=12gb``, ``>=8gb``, else ``cpu``, on the total VRAM of all
GPUs (vLLM/Ollama split a model across them), where a card counts at 95 % of its nominal
size because cards report a little less (a "24 GB" card shows 24,564 MiB). Apple Silicon
has unified memory: 75 % of RAM counts as VRAM (Metal's default working-set limit is about
that). The tier table itself is `infernet.protocol.pricing`'s; this module only measures.
Sizes are shown in binary units labelled GiB (`infernet.backends.fit.format_size`), the unit
nvidia-smi counts in and card makers' "24 GB" means. Recorded on a real NVIDIA H200
(``tests/node/fixtures/h200``): pynvml and ``nvidia-smi`` agree on 143,771 MiB total
(140.4 GiB, shown "140 GiB"; 150.75 decimal GB), tier ``>=48gb``.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import platform
import re
import shutil
import subprocess
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final, Literal

import msgspec

from infernet.protocol import pricing
from infernet.protocol.pricing import DEFAULT_MODELS, EMBEDDED_MODEL, VramTier

__all__ = [
    "DEFAULT_MODELS",
    "EMBEDDED_DEFAULT_MODEL",
    "GpuInfo",
    "HardwareInfo",
    "HardwareSummary",
    "VramTier",
    "default_model",
    "detect_hardware",
    "parse_nvidia_smi",
    "parse_rocm_smi",
    "parse_rocminfo",
    "parse_system_profiler",
    "run_command",
    "vram_tier",
]

log = logging.getLogger("infernet.node.hardware")

GpuVendor = Literal["nvidia", "amd", "apple", "intel", "other"]
CommandRunner = Callable[[Sequence[str]], str]

# The tier table and the default model per tier are protocol facts (infernet.protocol.pricing);
# this module only measures the machine.
EMBEDDED_DEFAULT_MODEL: Final = EMBEDDED_MODEL
_MIB: Final = 1024**2
_GIB: Final = 1024**3
_APPLE_UNIFIED_SHARE: Final = 0.75
COMMAND_TIMEOUT: Final = 5.0
_NVIDIA_SMI: Final = (
    "nvidia-smi",
    "--query-gpu=name,memory.total,memory.free",
    "--format=csv,noheader,nounits",
)
_ROCM_SMI: Final = ("rocm-smi", "--showproductname", "--showmeminfo", "vram", "--json")
_ROCMINFO: Final = ("rocminfo",)
_SYSTEM_PROFILER: Final = ("system_profiler", "SPDisplaysDataType", "-json")


class GpuInfo(msgspec.Struct, frozen=True, kw_only=True):
    """One GPU: vendor, marketing name, VRAM in bytes (free when the tool tells)."""

    vendor: GpuVendor
    name: str
    vram_total_bytes: int
    vram_free_bytes: int | None = None


class HardwareSummary(msgspec.Struct, frozen=True, kw_only=True):
    """The coarse view of the machine that may be announced (see the module invariants)."""

    vram_tier: VramTier
    gpu_vendor: str = ""
    gpu_model: str = ""
    gpu_count: int = 0
    vram_gb: int = 0  # whole GiB (the name predates the unit's label)
    ram_gb: int = 0  # whole GiB
    cpu_cores: int = 0

    def gpu_label(self) -> str:
        """``"2x NVIDIA GeForce RTX 4090 (48 GiB)"``, or ``""`` on a CPU-only node."""
        if not self.gpu_count:
            return ""
        count = f"{self.gpu_count}x " if self.gpu_count > 1 else ""
        return f"{count}{self.gpu_model} ({self.vram_gb} GiB)"


class HardwareInfo(msgspec.Struct, frozen=True, kw_only=True):
    """Everything detection found; stays on the node (see `summary` for what leaves)."""

    gpus: tuple[GpuInfo, ...] = ()
    gpu_source: str = "none"  # pynvml, nvidia-smi, rocm-smi, rocminfo, system_profiler
    ram_total_bytes: int = 0
    ram_available_bytes: int | None = None
    disk_total_bytes: int | None = None
    disk_free_bytes: int | None = None
    cpu_count: int = 0
    warnings: tuple[str, ...] = ()

    @property
    def vram_total_bytes(self) -> int:
        """Total VRAM of all GPUs (0 on a CPU-only node)."""
        return sum(g.vram_total_bytes for g in self.gpus)

    @property
    def vram_free_bytes(self) -> int | None:
        """Free VRAM of all GPUs, or None when a tool did not tell."""
        free = [g.vram_free_bytes for g in self.gpus]
        return None if not free or None in free else sum(f for f in free if f is not None)

    @property
    def tier(self) -> VramTier:
        """The VRAM tier of this machine."""
        return vram_tier(self.vram_total_bytes)

    @property
    def memory_budget_bytes(self) -> int:
        """What a model must fit in, weights and headroom (`infernet.backends.fit`): total
        VRAM, or RAM on a CPU-only node."""
        return self.vram_total_bytes or self.ram_total_bytes

    def summary(self) -> HardwareSummary:
        """The coarse record for announcements (no free figures, no host details)."""
        first = self.gpus[0] if self.gpus else None
        return HardwareSummary(
            vram_tier=self.tier,
            gpu_vendor=first.vendor if first is not None else "",
            gpu_model=first.name if first is not None else "",
            gpu_count=len(self.gpus),
            vram_gb=round(self.vram_total_bytes / _GIB),
            ram_gb=round(self.ram_total_bytes / _GIB),
            cpu_cores=self.cpu_count,
        )


def vram_tier(vram_bytes: int) -> VramTier:
    """The tier for ``vram_bytes`` of VRAM (`infernet.protocol.pricing.vram_tier`)."""
    return pricing.vram_tier(vram_bytes // _MIB)


def default_model(tier: VramTier, *, engine: str | None) -> str:
    """The model a fresh node on ``tier`` serves: the tier's Ollama default, or, on a CPU
    node without an engine (``engine`` None or ``"embedded"``), the embedded model."""
    return pricing.default_model(tier, engine=None if engine == "embedded" else engine)


def run_command(command: Sequence[str]) -> str:
    """Run ``command`` with a `COMMAND_TIMEOUT`; return its stdout.

    Raises:
        OSError: the tool is not installed or not executable.
        subprocess.SubprocessError: it timed out or exited non-zero.
    """
    done = subprocess.run(  # a fixed argument list, no shell
        list(command),
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
        check=True,
        stdin=subprocess.DEVNULL,
    )
    return done.stdout


def detect_hardware(
    disk_path: Path,
    *,
    run: CommandRunner = run_command,
    nvml: Any = None,
    system: str | None = None,
) -> HardwareInfo:
    """Detect GPUs, RAM, disk (where ``disk_path`` lives) and CPU cores. Never raises.

    Blocking (runs tools with timeouts): call it with ``trio.to_thread.run_sync``.
    ``run``, ``nvml`` (a pynvml stand-in) and ``system`` (``platform.system()``) are for tests.
    """
    system = system if system is not None else platform.system()
    notes: list[str] = []
    ram_total, ram_available = _ram()
    gpus, source = _detect_gpus(run, nvml, system, ram_total, notes)
    if not gpus:
        log.warning("no GPU found (%s): running CPU-only", "; ".join(notes))
    disk_total, disk_free = _disk(disk_path)
    return HardwareInfo(
        gpus=tuple(gpus),
        gpu_source=source,
        ram_total_bytes=ram_total,
        ram_available_bytes=ram_available,
        disk_total_bytes=disk_total,
        disk_free_bytes=disk_free,
        cpu_count=os.cpu_count() or 0,
        warnings=tuple(notes),
    )


def _detect_gpus(
    run: CommandRunner, nvml: Any, system: str, ram_total: int, notes: list[str]
) -> tuple[list[GpuInfo], str]:
    """Try each source in turn; return the first GPUs found and the source's name."""
    if system == "Darwin":
        gpus = _try(
            notes,
            "system_profiler",
            lambda: parse_system_profiler(run(_SYSTEM_PROFILER), ram_total),
        )
        return gpus, "system_profiler" if gpus else "none"
    sources: tuple[tuple[str, Callable[[], list[GpuInfo]]], ...] = (
        ("pynvml", lambda: _nvml(nvml if nvml is not None else _import_nvml())),
        ("nvidia-smi", lambda: parse_nvidia_smi(run(_NVIDIA_SMI))),
        ("rocm-smi", lambda: parse_rocm_smi(run(_ROCM_SMI))),
        ("rocminfo", lambda: parse_rocminfo(run(_ROCMINFO))),
    )
    for name, detect in sources:
        gpus = _try(notes, name, detect)
        if gpus:
            return gpus, name
    return [], "none"


def _try(notes: list[str], name: str, detect: Callable[[], list[GpuInfo]]) -> list[GpuInfo]:
    """Run one detector; record why it found nothing instead of raising."""
    try:
        gpus = detect()
    except FileNotFoundError:
        notes.append(f"{name}: not installed")
        return []
    except subprocess.TimeoutExpired:
        notes.append(f"{name}: no answer within {COMMAND_TIMEOUT}s")
        return []
    except subprocess.CalledProcessError as exc:
        notes.append(f"{name}: exited with status {exc.returncode}")
        return []
    except _NvmlFailure as exc:
        notes.append(f"{name}: {exc}")
        return []
    except (OSError, ValueError, KeyError, TypeError, ImportError) as exc:
        notes.append(f"{name}: {type(exc).__name__}: {exc}")
        return []
    if not gpus:
        notes.append(f"{name}: no GPU listed")
    return gpus


class _NvmlFailure(Exception):
    """pynvml raised one of its own errors (no driver, no library, a GPU lost)."""


def _import_nvml() -> Any:
    """Import pynvml on first use.

    Raises:
        ImportError: pynvml is not installed.
    """
    with warnings.catch_warnings():
        # pynvml 13 is a shim over nvidia-ml-py and says so with a FutureWarning on import.
        warnings.simplefilter("ignore", FutureWarning)
        return importlib.import_module("pynvml")


def _nvml(nvml: Any) -> list[GpuInfo]:
    """Read every NVIDIA GPU through NVML (``nvml`` is the pynvml module or a stand-in).

    Raises:
        _NvmlFailure: NVML raised (driver not loaded, library missing, GPU lost).
    """
    nvml_error: type[BaseException] = getattr(nvml, "NVMLError", _NvmlFailure)
    try:
        nvml.nvmlInit()
    except nvml_error as exc:
        raise _NvmlFailure(str(exc) or type(exc).__name__) from exc
    try:
        gpus = []
        for index in range(int(nvml.nvmlDeviceGetCount())):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            name = nvml.nvmlDeviceGetName(handle)
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            gpus.append(
                GpuInfo(
                    vendor="nvidia",
                    name=name.decode() if isinstance(name, bytes) else str(name),
                    vram_total_bytes=int(memory.total),
                    vram_free_bytes=int(memory.free),
                )
            )
        return gpus
    except nvml_error as exc:
        raise _NvmlFailure(str(exc) or type(exc).__name__) from exc
    finally:
        try:
            nvml.nvmlShutdown()
        except nvml_error as exc:
            log.debug("nvmlShutdown: %s", exc)


def parse_nvidia_smi(output: str) -> list[GpuInfo]:
    """Parse ``nvidia-smi --query-gpu=name,memory.total,memory.free --format=csv,noheader,
    nounits`` (MiB); ``[N/A]`` free memory becomes None.

    Raises:
        ValueError: a line is not ``name, total, free``.
    """
    gpus = []
    for line in output.splitlines():
        if not line.strip():
            continue
        name, total, free = (part.strip() for part in line.rsplit(",", 2))
        gpus.append(
            GpuInfo(
                vendor="nvidia",
                name=name,
                vram_total_bytes=int(float(total) * 1024**2),
                vram_free_bytes=int(float(free) * 1024**2) if _is_number(free) else None,
            )
        )
    return gpus


def parse_rocm_smi(output: str) -> list[GpuInfo]:
    """Parse ``rocm-smi --showproductname --showmeminfo vram --json`` (bytes).

    Key spellings differ between ROCm releases, so keys are matched case-insensitively.

    Raises:
        ValueError: not JSON, or a card without a VRAM total.
    """
    cards = json.loads(output)
    gpus = []
    for card_name, fields in sorted(cards.items()):
        if not card_name.lower().startswith("card") or not isinstance(fields, dict):
            continue
        lowered = {str(k).lower(): str(v) for k, v in fields.items()}
        total = int(lowered["vram total memory (b)"])
        used = lowered.get("vram total used memory (b)")
        name = next(
            (lowered[k] for k in ("card series", "device name", "card model") if lowered.get(k)),
            "AMD GPU",
        )
        gpus.append(
            GpuInfo(
                vendor="amd",
                name=name,
                vram_total_bytes=total,
                vram_free_bytes=total - int(used) if used and used.isdigit() else None,
            )
        )
    return gpus


_FIELD_RE: Final = re.compile(r"^\s*([A-Za-z ]+):\s*(.*?)\s*$", re.MULTILINE)
_POOL_RE: Final = re.compile(
    r"Segment:\s*GLOBAL;\s*FLAGS:\s*COARSE GRAINED.*?Size:\s*(\d+)\([^)]*\)\s*KB", re.DOTALL
)


def parse_rocminfo(output: str) -> list[GpuInfo]:
    """Parse ``rocminfo``: each agent whose device type is GPU, with the size of its first
    coarse-grained global memory pool as VRAM (KB)."""
    gpus = []
    for block in re.split(r"\n(?=\*+\s*\nAgent \d+)", output):
        fields = {k.strip().lower(): v for k, v in _FIELD_RE.findall(block)}
        if fields.get("device type", "").upper() != "GPU":
            continue
        pool = _POOL_RE.search(block)
        name = fields.get("marketing name") or fields.get("name") or "AMD GPU"
        gpus.append(
            GpuInfo(
                vendor="amd",
                name=name,
                vram_total_bytes=int(pool.group(1)) * 1024 if pool else 0,
            )
        )
    return gpus


def parse_system_profiler(output: str, ram_total: int) -> list[GpuInfo]:
    """Parse ``system_profiler SPDisplaysDataType -json``.

    Apple Silicon reports no VRAM (unified memory): a share of RAM counts instead.

    Raises:
        ValueError: not JSON.
    """
    gpus = []
    for item in json.loads(output).get("SPDisplaysDataType", []):
        name = str(item.get("sppci_model") or item.get("_name") or "GPU")
        vendor_text = str(item.get("spdisplays_vendor", "")).lower() + " " + name.lower()
        vendor: GpuVendor = (
            "apple" if "apple" in vendor_text
            else "amd" if "amd" in vendor_text or "radeon" in vendor_text
            else "nvidia" if "nvidia" in vendor_text
            else "intel" if "intel" in vendor_text
            else "other"
        )  # fmt: skip
        vram_text = item.get("spdisplays_vram") or item.get("_spdisplays_vram")
        if vram_text:
            vram = _size_bytes(str(vram_text))
        elif vendor == "apple":
            vram = int(ram_total * _APPLE_UNIFIED_SHARE)
        else:
            vram = 0
        gpus.append(GpuInfo(vendor=vendor, name=name, vram_total_bytes=vram))
    return gpus


def _size_bytes(text: str) -> int:
    """``"8 GB"`` / ``"1536 MB"`` → bytes (binary units, as macOS means them here)."""
    number, _, unit = text.strip().partition(" ")
    scale = {"KB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4}.get(unit.upper(), 1)
    return int(float(number) * scale)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _ram() -> tuple[int, int | None]:
    """Total RAM and available RAM (``MemAvailable`` where Linux tells it)."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (OSError, ValueError):
        total = 0
    available: int | None = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        available = None
    return total, available


def _disk(path: Path) -> tuple[int | None, int | None]:
    """Total and free bytes of the filesystem holding ``path`` (or its nearest parent)."""
    for candidate in (path, *path.parents):
        try:
            usage = shutil.disk_usage(candidate)
        except OSError:
            continue
        return usage.total, usage.free
    return None, None
