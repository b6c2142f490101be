"""The VRAM rule of thumb: bytes per parameter by quantization, and the fit verdict."""

from __future__ import annotations

import pytest

from infernet.backends.base import ModelInfo
from infernet.backends.fit import (
    bytes_per_parameter,
    check_fit,
    estimate_bytes,
    parameter_count_from_name,
    parse_parameter_count,
    quantization_from_name,
)

GB = 1_000_000_000


@pytest.mark.parametrize(
    ("text", "count"),
    [("7.6B", 7_600_000_000), ("270M", 270_000_000), ("8x7B", 56_000_000_000),
     ("1.5b", 1_500_000_000), ("", None), ("big", None), ("7", None)],
)  # fmt: skip
def test_parse_parameter_count(text: str, count: int | None) -> None:
    assert parse_parameter_count(text) == count


@pytest.mark.parametrize(
    ("name", "count", "quant"),
    [
        ("qwen2.5:14b", 14 * GB, None),  # "2.5" is a version, not a size
        ("qwen2.5:14b-instruct-q4_K_M", 14 * GB, "q4"),
        ("qwen2.5:14b-instruct-fp16", 14 * GB, "fp16"),
        ("Qwen/Qwen2.5-72B-Instruct-AWQ", 72 * GB, "awq"),
        ("meta-llama/Llama-3.1-8B-Instruct", 8 * GB, None),
        ("mixtral:8x7b", 56 * GB, None),
        ("gemma3-270m", 270_000_000, None),
        ("qwen2.5-7b-instruct-q8_0.gguf", 7 * GB, "q8"),
        ("nomic-embed-text:latest", None, None),
    ],
)
def test_sizes_and_quantization_from_names(name: str, count: int | None, quant: str | None) -> None:
    assert parameter_count_from_name(name) == count
    assert quantization_from_name(name) == quant


def test_the_books_bytes_per_parameter() -> None:
    # 2 bytes at FP16, 1 at INT8, 0.5 at Q4 (the book's table: 7B → 14 / 7 / 3.5 GB)
    assert bytes_per_parameter("F16") == bytes_per_parameter("BF16") == 2.0
    assert bytes_per_parameter("Q8_0") == bytes_per_parameter("int8") == 1.0
    assert bytes_per_parameter("Q4_K_M") == bytes_per_parameter("Q4_K - Medium") == 0.5
    assert bytes_per_parameter("Q5_K_M") == 0.625
    assert bytes_per_parameter(None, "ollama") == 0.5  # Ollama's default tags are Q4
    assert bytes_per_parameter(None, "huggingface") == 2.0
    for size_b, fp16, int8, q4 in ((3, 6, 3, 1.5), (7, 14, 7, 3.5), (70, 140, 70, 35)):
        for suffix, expected in (("fp16", fp16), ("int8", int8), ("q4_K_M", q4)):
            model = ModelInfo(name=f"m:{size_b}b-{suffix}")
            assert estimate_bytes(model) == pytest.approx(expected * GB)


def test_a_reported_size_beats_the_estimate() -> None:
    model = ModelInfo(name="qwen2.5:7b", size_bytes=4_683_087_332, parameter_count=7_600_000_000)
    assert estimate_bytes(model, "ollama") == 4_683_087_332


def test_verdicts() -> None:
    big = ModelInfo(name="qwen2.5:72b")  # Ollama Q4: ~36 GB
    fits = check_fit(big, 48 * GB, "ollama")
    assert fits.fits and fits.known and "fits in 48.0 GB" in fits.reason
    refused = check_fit(big, 24 * GB, "ollama")
    assert not refused.fits
    assert refused.reason == (
        "qwen2.5:72b needs ~36.0 GB, does not fit in 24.0 GB; pick a smaller or more "
        "quantized variant (e.g. a q4 tag)"
    )
    unknown = check_fit(ModelInfo(name="nomic-embed-text"), 8 * GB)
    assert unknown.fits and not unknown.known and "cannot tell its size" in unknown.reason
    assert check_fit(big, None, "ollama").fits  # no budget known: allowed
