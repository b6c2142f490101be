"""Hardware detection from recorded tool outputs and a pynvml stand-in; tiers; summary."""

from __future__ import annotations

import ast
import json
import logging
import subprocess
from collections.abc import Sequence
from pathlib import Path

import msgspec
import pytest

from infernet.node.hardware import (
    GpuInfo,
    HardwareInfo,
    default_model,
    detect_hardware,
    parse_nvidia_smi,
    parse_rocm_smi,
    parse_rocminfo,
    parse_system_profiler,
    vram_tier,
)

MIB = 1024**2
GIB = 1024**3
H200 = Path(__file__).parent / "fixtures" / "h200"  # recorded on a real H200, see its README

# Recorded outputs (trimmed to what detection reads).
NVIDIA_SMI = "NVIDIA GeForce RTX 4090, 24564, 23918\nNVIDIA GeForce RTX 4090, 24564, [N/A]\n"
ROCM_SMI = json.dumps({
    "card0": {
        "Card series": "Navi 21 [Radeon RX 6800/6800 XT / 6900 XT]",
        "Card model": "0x73bf",
        "Card vendor": "Advanced Micro Devices, Inc. [AMD/ATI]",
        "Card SKU": "D4120100",
        "VRAM Total Memory (B)": "17163091968",
        "VRAM Total Used Memory (B)": "12578816",
    },
    "system": {"Driver version": "6.7.0"},
})  # fmt: skip
ROCMINFO = """\
ROCk module is loaded
=====================
HSA Agents
==========
*******
Agent 1
*******
  Name:                    AMD Ryzen 9 5950X 16-Core Processor
  Marketing Name:          AMD Ryzen 9 5950X 16-Core Processor
  Device Type:             CPU
  Pool Info:
    Pool 1
      Segment:                 GLOBAL; FLAGS: FINE GRAINED
      Size:                    65756572(0x3eb5e9c) KB
*******
Agent 2
*******
  Name:                    gfx1030
  Marketing Name:          AMD Radeon RX 6800 XT
  Vendor Name:             AMD
  Device Type:             GPU
  Pool Info:
    Pool 1
      Segment:                 GLOBAL; FLAGS: COARSE GRAINED
      Size:                    16760832(0xffc000) KB
      Allocatable:             TRUE
    Pool 2
      Segment:                 GROUP
      Size:                    64(0x40) KB
"""
APPLE_SILICON = json.dumps({"SPDisplaysDataType": [{
    "_name": "Apple M2 Pro", "sppci_model": "Apple M2 Pro", "sppci_cores": "19",
    "spdisplays_vendor": "sppci_vendor_Apple", "sppci_device_type": "spdisplays_gpu",
}]})  # fmt: skip
INTEL_MAC = json.dumps({"SPDisplaysDataType": [
    {"sppci_model": "Intel UHD Graphics 630", "spdisplays_vram_shared": "1536 MB",
     "spdisplays_vendor": "sppci_vendor_intel"},
    {"sppci_model": "AMD Radeon Pro 5500M", "spdisplays_vram": "8 GB",
     "spdisplays_vendor": "sppci_vendor_amd"}]})  # fmt: skip


class FakeNvml:
    """A pynvml stand-in with two GPUs, or one that fails like a missing driver."""

    class NVMLError(Exception):
        pass

    def __init__(self, gpus: list[tuple[object, int, int]], fail: str | None = None) -> None:
        self.gpus = gpus
        self.fail = fail
        self.shutdown = False

    def nvmlInit(self) -> None:
        if self.fail:
            raise self.NVMLError(self.fail)

    def nvmlShutdown(self) -> None:
        self.shutdown = True

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetName(self, handle: int) -> object:
        return self.gpus[handle][0]

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> object:
        _, total, free = self.gpus[handle]
        return type("Memory", (), {"total": total, "free": free, "used": total - free})()


def runner(outputs: dict[str, str | BaseException]):
    """A command runner answering recorded outputs by tool name; others are missing."""
    calls: list[str] = []

    def run(command: Sequence[str]) -> str:
        calls.append(command[0])
        result = outputs.get(command[0], FileNotFoundError(command[0]))
        if isinstance(result, BaseException):
            raise result
        return result

    run.calls = calls  # type: ignore[attr-defined]
    return run


NO_DRIVER = FakeNvml([], fail="Driver Not Loaded")


def h200(name: str) -> str:
    """A tool's output recorded verbatim on one NVIDIA H200."""
    return (H200 / name).read_text()


def h200_nvml() -> FakeNvml:
    """A pynvml stand-in answering what pynvml answered on that H200."""
    gpus = json.loads(h200("nvml.json"))["gpus"]
    return FakeNvml([(ast.literal_eval(g["name_repr"]), g["mem_v1"]["total"], g["mem_v1"]["free"])
                     for g in gpus])  # fmt: skip


def test_pynvml_first(tmp_path: Path) -> None:
    nvml = FakeNvml([(b"NVIDIA A100-SXM4-80GB", 85_899_345_920, 80_000_000_000),
                     ("NVIDIA H100 80GB HBM3", 85_520_809_984, 85_000_000_000)])  # fmt: skip
    run = runner({"nvidia-smi": NVIDIA_SMI})
    info = detect_hardware(tmp_path, run=run, nvml=nvml, system="Linux")
    assert info.gpu_source == "pynvml" and run.calls == []  # type: ignore[attr-defined]
    assert [g.name for g in info.gpus] == ["NVIDIA A100-SXM4-80GB", "NVIDIA H100 80GB HBM3"]
    assert info.vram_total_bytes == 85_899_345_920 + 85_520_809_984
    assert info.vram_free_bytes == 165_000_000_000
    assert info.tier == ">=48gb" and nvml.shutdown
    assert info.warnings == ()


def test_missing_driver_falls_back_to_nvidia_smi(tmp_path: Path) -> None:
    info = detect_hardware(tmp_path, run=runner({"nvidia-smi": NVIDIA_SMI}), nvml=NO_DRIVER,
                           system="Linux")  # fmt: skip
    assert info.gpu_source == "nvidia-smi"
    assert info.gpus[0] == GpuInfo(vendor="nvidia", name="NVIDIA GeForce RTX 4090",
                                   vram_total_bytes=24564 * MIB, vram_free_bytes=23918 * MIB)
    assert info.gpus[1].vram_free_bytes is None  # "[N/A]"
    assert info.vram_free_bytes is None
    assert info.tier == ">=48gb"  # two 24 GB cards
    assert info.warnings == ("pynvml: Driver Not Loaded",)


def test_amd_through_rocm_smi_then_rocminfo(tmp_path: Path) -> None:
    info = detect_hardware(tmp_path, run=runner({"rocm-smi": ROCM_SMI}), nvml=NO_DRIVER,
                           system="Linux")  # fmt: skip
    assert info.gpu_source == "rocm-smi"
    (gpu,) = info.gpus
    assert (gpu.vendor, gpu.vram_total_bytes) == ("amd", 17163091968)
    assert gpu.name.startswith("Navi 21") and gpu.vram_free_bytes == 17163091968 - 12578816
    assert info.tier == ">=12gb"

    broken = runner({"rocm-smi": "not json", "rocminfo": ROCMINFO})
    info = detect_hardware(tmp_path, run=broken, nvml=NO_DRIVER, system="Linux")
    assert info.gpu_source == "rocminfo"
    assert info.gpus == (GpuInfo(vendor="amd", name="AMD Radeon RX 6800 XT",
                                 vram_total_bytes=16760832 * 1024),)  # fmt: skip
    assert any(w.startswith("rocm-smi: JSONDecodeError") for w in info.warnings)


def test_apple_silicon_counts_unified_memory(tmp_path: Path) -> None:
    info = detect_hardware(tmp_path, run=runner({"system_profiler": APPLE_SILICON}),
                           system="Darwin")  # fmt: skip
    (gpu,) = info.gpus
    assert (gpu.vendor, gpu.name) == ("apple", "Apple M2 Pro")
    assert gpu.vram_total_bytes == int(info.ram_total_bytes * 0.75)
    assert parse_system_profiler(APPLE_SILICON, 32 * GIB)[0].vram_total_bytes == 24 * GIB


def test_intel_mac_with_a_discrete_gpu() -> None:
    intel, amd = parse_system_profiler(INTEL_MAC, 16 * GIB)
    assert (intel.vendor, intel.vram_total_bytes) == ("intel", 0)
    assert (amd.vendor, amd.name, amd.vram_total_bytes) == ("amd", "AMD Radeon Pro 5500M", 8 * GIB)


def test_nothing_found_is_cpu_only_with_one_warning(tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="infernet.node.hardware")
    hung = subprocess.TimeoutExpired("nvidia-smi", 5.0)
    failed = subprocess.CalledProcessError(9, "rocm-smi")
    run = runner({"nvidia-smi": hung, "rocm-smi": failed})
    info = detect_hardware(tmp_path, run=run, nvml=NO_DRIVER, system="Linux")
    assert (info.gpus, info.gpu_source, info.tier) == ((), "none", "cpu")
    assert info.warnings == (
        "pynvml: Driver Not Loaded",
        "nvidia-smi: no answer within 5.0s",
        "rocm-smi: exited with status 9",
        "rocminfo: not installed",
    )
    (record,) = caplog.records
    assert record.getMessage().startswith("no GPU found (pynvml: Driver Not Loaded; ")
    assert info.ram_total_bytes > 0 and info.cpu_count > 0
    assert info.disk_total_bytes and info.disk_free_bytes is not None
    assert info.memory_budget_bytes == info.ram_total_bytes  # CPU-only: models live in RAM


def test_real_machine_detection_never_raises(tmp_path: Path) -> None:
    info = detect_hardware(tmp_path / "not" / "yet" / "created")  # the real tools and pynvml
    assert isinstance(info, HardwareInfo) and info.ram_total_bytes > 0
    assert info.disk_total_bytes is not None  # the nearest existing parent was used


@pytest.mark.parametrize(
    ("vram_mib", "tier"),
    [(0, "cpu"), (6144, "cpu"), (7680, "cpu"), (7800, ">=8gb"), (8192, ">=8gb"), (11264, ">=8gb"),
     (12288, ">=12gb"), (16376, ">=12gb"), (24564, ">=24gb"), (46068, ">=24gb"),
     (49140, ">=48gb"), (81920, ">=48gb"), (143771, ">=48gb")],
)  # fmt: skip
def test_vram_tiers(vram_mib: int, tier: str) -> None:
    assert vram_tier(vram_mib * MIB) == tier


def test_default_model_per_tier() -> None:
    expected = {">=48gb": "qwen2.5:72b", ">=24gb": "qwen2.5:14b", ">=12gb": "qwen2.5:7b",
                ">=8gb": "qwen2.5:7b", "cpu": "qwen2.5:1.5b"}  # fmt: skip
    for tier, model in expected.items():
        assert default_model(tier, engine="ollama") == model  # type: ignore[arg-type]
    assert default_model("cpu", engine=None) == "gemma3-270m"  # no engine: the embedded one
    assert default_model("cpu", engine="embedded") == "gemma3-270m"
    assert default_model(">=8gb", engine=None) == "qwen2.5:7b"


def test_summary_carries_only_coarse_data(tmp_path: Path) -> None:
    info = detect_hardware(tmp_path, run=runner({"nvidia-smi": NVIDIA_SMI}), nvml=NO_DRIVER,
                           system="Linux")  # fmt: skip
    summary = info.summary()
    assert msgspec.to_builtins(summary) == {
        "vram_tier": ">=48gb", "gpu_vendor": "nvidia", "gpu_model": "NVIDIA GeForce RTX 4090",
        "gpu_count": 2, "vram_gb": 48, "ram_gb": round(info.ram_total_bytes / GIB),
        "cpu_cores": info.cpu_count,
    }  # fmt: skip
    assert summary.gpu_label() == "2x NVIDIA GeForce RTX 4090 (48 GiB)"
    cpu = HardwareInfo(ram_total_bytes=8 * GIB, cpu_count=2).summary()
    assert (cpu.vram_tier, cpu.gpu_label()) == ("cpu", "")


def test_parsers_reject_garbage() -> None:
    with pytest.raises(ValueError):
        parse_nvidia_smi("garbage line")
    with pytest.raises(ValueError):
        parse_rocm_smi("<html>")
    assert parse_rocminfo("no agents here") == []


def test_a_real_h200_through_pynvml(tmp_path: Path) -> None:
    nvml = h200_nvml()
    run = runner({"nvidia-smi": h200("nvidia-smi-query.csv")})
    info = detect_hardware(tmp_path, run=run, nvml=nvml, system="Linux")
    assert (info.gpu_source, info.warnings, nvml.shutdown) == ("pynvml", (), True)
    assert run.calls == []  # type: ignore[attr-defined]
    assert info.gpus == (GpuInfo(vendor="nvidia", name="NVIDIA H200",  # NVML gives str, not bytes
                                 vram_total_bytes=143771 * MIB,  # nvidia-smi's total, to the byte
                                 vram_free_bytes=150_109_880_320),)  # fmt: skip
    assert info.tier == ">=48gb" and info.memory_budget_bytes == 150_754_820_096
    summary = info.summary()
    assert (summary.gpu_count, summary.vram_gb) == (1, 140)  # 140.4 GiB ("141 GB" on the box)
    assert summary.gpu_label() == "NVIDIA H200 (140 GiB)"  # 150.75 in decimal GB
    assert default_model(info.tier, engine="ollama") == "qwen2.5:72b"


def test_a_real_h200_through_nvidia_smi_reads_as_pynvml_does(tmp_path: Path) -> None:
    (gpu,) = parse_nvidia_smi(h200("nvidia-smi-query.csv"))
    assert gpu == GpuInfo(vendor="nvidia", name="NVIDIA H200", vram_total_bytes=143771 * MIB,
                          vram_free_bytes=143156 * MIB)  # fmt: skip
    by_smi = detect_hardware(tmp_path, run=runner({"nvidia-smi": h200("nvidia-smi-query.csv")}),
                             nvml=NO_DRIVER, system="Linux")  # fmt: skip
    by_nvml = detect_hardware(tmp_path, run=runner({}), nvml=h200_nvml(), system="Linux")
    assert by_smi.gpu_source == "nvidia-smi"
    assert by_smi.summary() == by_nvml.summary()  # the operator sees the same either way
    assert by_smi.vram_total_bytes == by_nvml.vram_total_bytes
    assert by_smi.vram_free_bytes is not None and by_nvml.vram_free_bytes is not None
    assert abs(by_smi.vram_free_bytes - by_nvml.vram_free_bytes) < MIB  # nvidia-smi rounds MiB
