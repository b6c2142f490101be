"""GPU driver probe: versions from nvidia-smi / rocm-smi, and the broken-driver cases."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path

from infernet.node.gpu_driver import (
    cuda_at_least,
    parse_nvidia_smi_versions,
    parse_rocm_driver,
    probe_driver,
)

NVIDIA_SMI = """\
Tue Nov 18 10:12:01 2026
+---------------------------------------------------------------------------------------+
| NVIDIA-SMI 545.29.06              Driver Version: 545.29.06    CUDA Version: 12.4     |
|-----------------------------------------+----------------------+----------------------+
"""
NO_DRIVER = ("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
             "Make sure that the latest NVIDIA driver is installed and running.\n")
# plain `nvidia-smi`, recorded verbatim on one NVIDIA H200 (see the folder's README)
H200_SMI = Path(__file__).parent / "fixtures" / "h200" / "nvidia-smi.txt"
ROCM_SMI = """\
============================ ROCm System Management Interface ============================
Driver version: 6.7.0
==========================================================================================
"""


def tools(*names: str) -> dict[str, str]:
    return {name: f"/usr/bin/{name}" for name in names}


def runner(outputs: dict[str, str | BaseException]) -> object:
    def run(command: Sequence[str]) -> str:
        answer = outputs[command[0]]
        if isinstance(answer, BaseException):
            raise answer
        return answer

    return run


def probe(outputs: dict[str, str | BaseException], files: tuple[str, ...] = ()):  # type: ignore[no-untyped-def]
    found = tools(*outputs)
    return probe_driver(run=runner(outputs), which=found.get,  # type: ignore[arg-type]
                        exists=lambda p: p in files, read=lambda p: "6.2.1\n")


def test_parsers() -> None:
    assert parse_nvidia_smi_versions(NVIDIA_SMI) == ("545.29.06", "12.4")
    assert parse_nvidia_smi_versions(NO_DRIVER) == (None, None)
    assert parse_rocm_driver(ROCM_SMI) == "6.7.0"
    assert cuda_at_least("12.4") and cuda_at_least("12.1") and not cuda_at_least("11.8")


def test_no_gpu_at_all() -> None:
    report = probe({})
    assert (report.present, report.usable) == (False, False)


def test_a_working_nvidia_driver() -> None:
    report = probe({"nvidia-smi": NVIDIA_SMI})
    assert (report.vendor, report.usable, report.driver_version, report.runtime_version) == (
        "nvidia", True, "545.29.06", "12.4")  # fmt: skip


def test_nvidia_smi_that_cannot_reach_the_driver() -> None:
    failed = subprocess.CalledProcessError(9, ["nvidia-smi"], output=NO_DRIVER, stderr="")
    report = probe({"nvidia-smi": failed})
    assert report.present and not report.usable
    assert report.detail.startswith("nvidia-smi exited with status 9: NVIDIA-SMI has failed")


def test_a_hanging_nvidia_smi_is_unusable() -> None:
    report = probe({"nvidia-smi": subprocess.TimeoutExpired(["nvidia-smi"], 5.0)})
    assert not report.usable and "did not answer within 5s" in report.detail


def test_kernel_driver_without_nvidia_smi() -> None:
    report = probe({}, files=("/dev/nvidia0",))
    assert report.present and not report.usable and "nvidia-smi is not installed" in report.detail


def test_amd_with_rocm() -> None:
    report = probe({"rocm-smi": ROCM_SMI}, files=("/dev/kfd",))
    assert (report.vendor, report.usable, report.driver_version, report.runtime_version) == (
        "amd", True, "6.7.0", "6.2.1")  # fmt: skip


def test_a_real_h200_driver() -> None:
    output = H200_SMI.read_text()
    assert parse_nvidia_smi_versions(output) == ("580.159.04", "13.0")
    assert cuda_at_least("13.0")  # a new major version clears the 12.1 floor
    report = probe({"nvidia-smi": output}, files=("/dev/nvidia0", "/proc/driver/nvidia/version"))
    assert (report.vendor, report.usable, report.driver_version, report.runtime_version) == (
        "nvidia", True, "580.159.04", "13.0")  # fmt: skip
