"""The VRAM rule of thumb: bytes per parameter by quantization, the headroom on top, the
engine's share of the card, and the fit verdict."""

from __future__ import annotations

import pytest

from infernet.backends.base import ModelInfo
from infernet.backends.engines import ENGINES
from infernet.backends.fit import (
    ENGINE_SHARE_PERCENT,
    bytes_per_parameter,
    check_fit,
    estimate_bytes,
    format_size,
    parameter_count_from_name,
    parse_parameter_count,
    quantization_from_name,
)

GB = 1_000_000_000
GIB = 1024**3
MIB = 1024**2


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
    big = ModelInfo(name="qwen2.5:72b")  # Ollama Q4: ~36 GB of weights
    fits = check_fit(big, 48 * GB, "ollama")
    assert fits.fits and fits.known
    assert (fits.weights_bytes, fits.needed_bytes) == (36 * GB, 36 * GB + 7_200_000_000 + GIB)
    assert fits.reason == (
        "qwen2.5:72b needs ~41.2 GiB (33.5 GiB weights + 7.7 GiB for KV cache and runtime): "
        "fits in 44.7 GiB"
    )
    refused = check_fit(big, 24 * GB, "ollama")
    assert not refused.fits
    assert refused.reason == (
        "qwen2.5:72b needs ~41.2 GiB (33.5 GiB weights + 7.7 GiB for KV cache and runtime): "
        "does not fit, 18.9 GiB more than 22.4 GiB; pick a smaller model or a more quantized "
        "tag (e.g. q4)"
    )
    unknown = check_fit(ModelInfo(name="nomic-embed-text"), 8 * GB)
    assert unknown.fits and not unknown.known and "cannot tell its size" in unknown.reason
    assert check_fit(big, None, "ollama").fits  # no budget known: allowed


def test_weights_that_fill_the_card_do_not_fit() -> None:
    # 20 GB of weights on a 21 GB card: the weights fit, the KV cache and the CUDA context
    # do not (this was called a fit before the headroom was counted).
    model = ModelInfo(name="some-model", size_bytes=20 * GB)
    verdict = check_fit(model, 21 * GB, "ollama")
    assert not verdict.fits
    assert verdict.needed_bytes == 20 * GB + 4 * GB + GIB
    assert "3.8 GiB more than 19.6 GiB" in verdict.reason


def test_the_boundary_is_exact() -> None:
    # Ollama and llama.cpp may use the whole budget: weights + 20 % + 1 GiB == budget fits,
    # one byte less of budget does not.
    model = ModelInfo(name="m", size_bytes=10 * GB)
    needed = 10 * GB + 2 * GB + GIB
    assert check_fit(model, needed, "ollama").fits
    assert not check_fit(model, needed - 1, "alias").fits
    # vLLM, SGLang and MAX take 90 % of the card: on 100 GB, 90 GB is all a model may need.
    # 74,105,215,147 B of weights + 14,821,043,029 (20 %, rounded down) + 1 GiB = 90 GB.
    assert check_fit(ModelInfo(name="m", size_bytes=74_105_215_147), 100 * GB,
                     "huggingface").fits  # fmt: skip
    over = check_fit(ModelInfo(name="m", size_bytes=74_105_215_148), 100 * GB, "huggingface")
    assert not over.fits and over.usable_bytes == 90 * GB and over.needed_bytes == 90 * GB + 1


def test_a_vllm_verdict_says_by_how_much_and_why() -> None:
    fp16 = ModelInfo(name="Qwen/Qwen2.5-72B-Instruct", parameter_count=72_700_000_000)
    verdict = check_fit(fp16, 143771 * MIB, "huggingface")  # one H200 (tests/node/fixtures)
    assert not verdict.fits
    assert verdict.reason == (
        "Qwen/Qwen2.5-72B-Instruct needs ~163.5 GiB (135.4 GiB weights + 28.1 GiB for KV "
        "cache and runtime): does not fit, 37.1 GiB more than the 126.4 GiB that vLLM, SGLang "
        "and MAX use of 140.4 GiB (90 %); pick a smaller model or a 4-bit repo (e.g. -AWQ)"
    )


def test_the_preallocating_engines_are_the_huggingface_naming_ones() -> None:
    # The share is keyed by naming; that is right only while these sets are the same.
    preallocating = {kind for kind, spec in ENGINES.items() if spec.model_naming == "huggingface"}
    assert preallocating == {"vllm", "sglang", "max"}
    assert ENGINE_SHARE_PERCENT == {"huggingface": 90, "ollama": 100, "alias": 100}


def test_sizes_are_shown_in_binary_units() -> None:
    assert format_size(143771 * MIB) == "140.4 GiB"  # an H200, as nvidia-smi counts it
    assert format_size(4_683_087_332) == "4.4 GiB"  # what `ollama list` shows as 4.7 GB
    assert format_size(750_000_000) == "715 MiB"
    assert (format_size(None), format_size(0)) == ("-", "-")
