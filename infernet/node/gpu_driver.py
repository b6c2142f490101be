"""Is the GPU driver usable, and which driver and CUDA/ROCm versions does it have?

Owns: `probe_driver` and `DriverReport`, what ``infernet doctor`` reports as "GPU driver".
The operator book asks for the driver to be installed before setup (NVIDIA: a working
``nvidia-smi``; CUDA 12.1+ for vLLM and SGLang, Ollama brings its own runtime; AMD: ROCm
5.7+ and ``rocm-smi``). `infernet.node.hardware` finds the GPUs; this module says whether
the driver behind them works.

Rules:
- Signs of a GPU: the vendor tool on PATH (``nvidia-smi``, ``rocm-smi``), or the kernel
  driver's device or proc files (``/dev/nvidia0``, ``/proc/driver/nvidia/version``,
  ``/dev/kfd``). No sign at all: no GPU here (a CPU-only node, valid with the embedded
  engine).
- With a sign, the driver is usable when the vendor tool runs and reports a driver version;
  a tool that fails, hangs (timeout) or prints no version means the driver is unusable.
- Never raises; every command has a timeout (`infernet.node.hardware.run_command`).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Final, Literal

import msgspec

from infernet.node.hardware import CommandRunner, run_command

__all__ = [
    "MIN_CUDA",
    "DriverReport",
    "cuda_at_least",
    "parse_nvidia_smi_versions",
    "parse_rocm_driver",
    "probe_driver",
]

MIN_CUDA: Final = (12, 1)  # vLLM and SGLang wheels need CUDA 12.1 or newer
_NVIDIA_FILES: Final = ("/proc/driver/nvidia/version", "/dev/nvidia0")
_AMD_FILES: Final = ("/dev/kfd",)
_ROCM_VERSION_FILE: Final = "/opt/rocm/.info/version"
_DRIVER_RE: Final = re.compile(r"Driver Version:\s*([0-9][0-9.]*)", re.IGNORECASE)
_CUDA_RE: Final = re.compile(r"CUDA Version:\s*([0-9][0-9.]*)", re.IGNORECASE)
_ROCM_DRIVER_RE: Final = re.compile(r"Driver version:\s*(\S+)", re.IGNORECASE)


class DriverReport(msgspec.Struct, frozen=True, kw_only=True):
    """What the probe found: a GPU driver or not, whether it works, and its versions."""

    vendor: Literal["nvidia", "amd"] | None = None
    present: bool = False
    usable: bool = False
    driver_version: str | None = None
    runtime_version: str | None = None  # CUDA (NVIDIA) or ROCm (AMD)
    detail: str = ""


def parse_nvidia_smi_versions(output: str) -> tuple[str | None, str | None]:
    """Driver and CUDA versions from plain ``nvidia-smi`` output (its header line)."""
    driver = _DRIVER_RE.search(output)
    cuda = _CUDA_RE.search(output)
    return (driver.group(1) if driver else None, cuda.group(1) if cuda else None)


def parse_rocm_driver(output: str) -> str | None:
    """The driver version from ``rocm-smi --showdriverversion``."""
    match = _ROCM_DRIVER_RE.search(output)
    return match.group(1) if match else None


def cuda_at_least(version: str, minimum: tuple[int, int] = MIN_CUDA) -> bool:
    """Whether CUDA ``version`` (``"12.4"``) is ``minimum`` or newer; unparsable: True."""
    parts = version.split(".")
    try:
        major, minor = int(parts[0]), int(parts[1]) if len(parts) > 1 else 0
    except ValueError:
        return True
    return (major, minor) >= minimum


def probe_driver(
    run: CommandRunner = run_command,
    which: Callable[[str], str | None] = shutil.which,
    exists: Callable[[str], bool] = lambda p: Path(p).exists(),
    read: Callable[[str], str] = lambda p: Path(p).read_text(),
) -> DriverReport:
    """Look for an NVIDIA, then an AMD driver, and check it works. Never raises.

    Blocking (runs tools with timeouts). The arguments are for tests.
    """
    if which("nvidia-smi") or any(exists(p) for p in _NVIDIA_FILES):
        return _nvidia(run, which)
    if which("rocm-smi") or any(exists(p) for p in _AMD_FILES):
        return _amd(run, which, read)
    return DriverReport(detail="no NVIDIA or AMD GPU driver found")


def _failure(tool: str, exc: BaseException) -> str:
    if isinstance(exc, FileNotFoundError):
        return f"{tool} is not installed"
    if isinstance(exc, subprocess.TimeoutExpired):
        return f"{tool} did not answer within {exc.timeout:g}s"
    if isinstance(exc, subprocess.CalledProcessError):
        said = f"{exc.stdout or ''}\n{exc.stderr or ''}".strip().splitlines()
        first = said[0].strip() if said else ""
        return f"{tool} exited with status {exc.returncode}" + (f": {first}" if first else "")
    return f"{tool}: {type(exc).__name__}: {exc}"


def _nvidia(run: CommandRunner, which: Callable[[str], str | None]) -> DriverReport:
    if not which("nvidia-smi"):
        return DriverReport(vendor="nvidia", present=True, detail="the NVIDIA kernel driver "
                            "is loaded but nvidia-smi is not installed")  # fmt: skip
    try:
        output = run(("nvidia-smi",))
    except (OSError, subprocess.SubprocessError) as exc:
        return DriverReport(vendor="nvidia", present=True, detail=_failure("nvidia-smi", exc))
    driver, cuda = parse_nvidia_smi_versions(output)
    if driver is None:
        return DriverReport(vendor="nvidia", present=True,
                            detail="nvidia-smi printed no driver version")  # fmt: skip
    return DriverReport(vendor="nvidia", present=True, usable=True, driver_version=driver,
                        runtime_version=cuda, detail="nvidia-smi")  # fmt: skip


def _amd(
    run: CommandRunner, which: Callable[[str], str | None], read: Callable[[str], str]
) -> DriverReport:
    if not which("rocm-smi"):
        return DriverReport(vendor="amd", present=True,
                            detail="/dev/kfd exists but rocm-smi is not installed")  # fmt: skip
    try:
        output = run(("rocm-smi", "--showdriverversion"))
    except (OSError, subprocess.SubprocessError) as exc:
        return DriverReport(vendor="amd", present=True, detail=_failure("rocm-smi", exc))
    driver = parse_rocm_driver(output)
    if driver is None:
        return DriverReport(vendor="amd", present=True,
                            detail="rocm-smi printed no driver version")  # fmt: skip
    try:
        rocm: str | None = read(_ROCM_VERSION_FILE).strip() or None
    except OSError:
        rocm = None
    return DriverReport(vendor="amd", present=True, usable=True, driver_version=driver,
                        runtime_version=rocm, detail="rocm-smi")  # fmt: skip
