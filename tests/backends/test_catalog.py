"""The model catalogue: what each tier is recommended, under each engine's naming; and what
a real H200 (``tests/node/fixtures/h200``) is offered."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from infernet.backends.base import ModelInfo
from infernet.backends.catalog import CATALOG, find, recommend, tier_at_least
from infernet.backends.fit import check_fit
from infernet.node.hardware import parse_nvidia_smi, vram_tier
from infernet.protocol.pricing import DEFAULT_MODELS, EMBEDDED_MODEL, VRAM_TIERS

GB = 1_000_000_000
GIB = 1024**3
MIB = 1024**2
H200_QUERY = Path(__file__).parents[1] / "node" / "fixtures" / "h200" / "nvidia-smi-query.csv"


def h200_vram() -> int:
    """The recorded H200's VRAM as detection reads it: 143,771 MiB = 150.75 GB."""
    (gpu,) = parse_nvidia_smi(H200_QUERY.read_text())
    return gpu.vram_total_bytes


def names(tier: str, budget: int, naming: str, *, embedded: bool = False) -> list[str]:
    return [r.name for r in recommend(tier, budget, naming, embedded=embedded)]  # type: ignore[arg-type]


def test_every_tier_default_is_in_the_catalogue() -> None:
    for tier, tag in DEFAULT_MODELS.items():
        row = find(tag)
        assert row is not None, tag
        assert tier_at_least(tier, row.min_tier)
    assert find(EMBEDDED_MODEL) is not None


def test_cpu_node_on_ollama_gets_small_models_default_first() -> None:
    assert names("cpu", 16 * GB, "ollama") == ["qwen2.5:1.5b", "llama3.2:3b"]


def test_cpu_node_on_the_embedded_engine_leads_with_its_bundled_model() -> None:
    picks = names("cpu", 16 * GB, "alias", embedded=True)
    assert picks[0] == EMBEDDED_MODEL
    assert all(p.endswith(".gguf") for p in picks[1:])


def test_flagship_tier_gets_the_largest_models_and_at_most_five() -> None:
    picks = recommend(">=48gb", 80 * GB, "ollama")
    assert [r.name for r in picks][:2] == ["qwen2.5:72b", "llama3.1:70b"]
    assert picks[0].default
    assert len(picks) == 5
    assert all(r.needed_bytes is not None and r.needed_bytes <= 80 * GB for r in picks)


def test_huggingface_engines_fall_back_to_awq_when_fp16_does_not_fit() -> None:
    picks = names(">=24gb", 24 * GB, "huggingface")
    assert picks[0] == "Qwen/Qwen2.5-14B-Instruct-AWQ"  # the tier default, 4-bit
    assert "Qwen/Qwen2.5-7B-Instruct" in picks  # FP16 fits in 24 GB


def test_a_model_that_does_not_fit_the_budget_is_left_out() -> None:
    # An 8 GB tier card that reports a little less than 8 GB still takes the 7B Q4 models
    # (3.8 GB of weights, 5.6 GB with headroom); 2 GB leaves only the 1.5B (1.97 GB with
    # headroom), not the 3B (1.6 GB of weights, 3.0 GB with headroom).
    assert "qwen2.5:7b" in names(">=8gb", 8 * GB, "ollama")
    assert names(">=8gb", 2 * GB, "ollama") == ["qwen2.5:1.5b"]


@pytest.mark.parametrize("tier", VRAM_TIERS)
def test_every_tier_default_fits_the_smallest_card_of_its_tier(tier: str) -> None:
    # The smallest VRAM that still counts as the tier (95 % of its nominal GiB), or a
    # 4 GiB CPU node: the tier's default must fit there with headroom, and lead the list.
    floor_gib = {">=48gb": 48, ">=24gb": 24, ">=12gb": 12, ">=8gb": 8}.get(tier)
    budget = math.ceil(floor_gib * 1024 * 0.95) * MIB if floor_gib else 4 * GIB
    assert floor_gib is None or vram_tier(budget) == tier
    first = recommend(tier, budget, "ollama")[0]  # type: ignore[arg-type]
    assert (first.name, first.default) == (DEFAULT_MODELS[tier], True)  # type: ignore[index]


def test_an_h200_on_vllm_is_not_offered_the_72b_at_fp16() -> None:
    # 145.4 GB of FP16 weights "fit" 150.75 GB of VRAM, but vLLM takes 90 % of the card
    # (135.7 GB) and the KV cache needs room beyond the weights: it would not load.
    picks = recommend(">=48gb", h200_vram(), "huggingface")
    offered = [p.name for p in picks]
    assert "Qwen/Qwen2.5-72B-Instruct" not in offered
    assert "meta-llama/Llama-3.1-70B-Instruct" not in offered  # 141 GB at FP16, no AWQ row
    assert (picks[0].name, picks[0].default) == ("Qwen/Qwen2.5-72B-Instruct-AWQ", True)
    assert "Qwen/Qwen2.5-32B-Instruct" in offered  # 65.6 GB at FP16: loads with room to spare
    usable = h200_vram() * 9 // 10
    assert all(p.needed_bytes is not None and p.needed_bytes <= usable for p in picks)


def test_an_h200_on_ollama_keeps_the_72b_default() -> None:
    picks = recommend(">=48gb", h200_vram(), "ollama")
    assert (picks[0].name, picks[0].default) == ("qwen2.5:72b", True)  # Q4: ~36 GB


@pytest.mark.parametrize(("params_b", "fits"), [(56, True), (57, False)])
def test_the_largest_fp16_model_an_h200_loads_on_vllm(params_b: int, fits: bool) -> None:
    # 56B at FP16: 112 GB + 22.4 GB + 1 GiB = 135.47 GB <= 135.68 GB (90 % of the card);
    # 57B: 137.87 GB does not fit, though its 114 GB of weights are far below 150.75 GB.
    model = ModelInfo(name=f"org/Model-{params_b}B", parameter_count=params_b * GB)
    assert check_fit(model, h200_vram(), "huggingface").fits is fits


def test_rows_are_consistent() -> None:
    assert len({r.family for r in CATALOG}) == len(CATALOG)
    for row in CATALOG:
        assert row.min_tier in VRAM_TIERS
        assert row.band  # every row prices in a band
