"""The model catalogue: what each tier is recommended, under each engine's naming."""

from __future__ import annotations

from infernet.backends.catalog import CATALOG, find, recommend, tier_at_least
from infernet.protocol.pricing import DEFAULT_MODELS, EMBEDDED_MODEL, VRAM_TIERS

GB = 1_000_000_000


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
    # An 8 GB tier card that reports a little less than 8 GB still takes the 7B Q4 models;
    # a 2 GB budget does not.
    assert "qwen2.5:7b" in names(">=8gb", 8 * GB, "ollama")
    assert names(">=8gb", 2 * GB, "ollama") == ["llama3.2:3b", "qwen2.5:1.5b"]  # largest first


def test_rows_are_consistent() -> None:
    assert len({r.family for r in CATALOG}) == len(CATALOG)
    for row in CATALOG:
        assert row.min_tier in VRAM_TIERS
        assert row.band  # every row prices in a band
