"""Tests for infernet.protocol.pricing: tiers, default models, job value, fee, payouts."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from infernet.protocol.pricing import (
    BANDS,
    CHAINS,
    EMBEDDED_MODEL,
    OUTPUT_WEIGHT,
    PLATFORM_FEE,
    PricingError,
    Rates,
    default_model,
    job_value,
    model_params_b,
    payout_amount,
    payout_minimum,
    rates_for_model,
    size_band,
    split_fee,
    vram_tier,
)


@pytest.mark.parametrize(
    ("mib", "tier"),
    [
        (81_559, ">=48gb"),  # H100 80GB
        (49_140, ">=48gb"),  # RTX 6000 Ada
        (24_564, ">=24gb"),  # RTX 4090
        (16_376, ">=12gb"),  # RTX 4080
        (12_288, ">=12gb"),  # RTX 3080 12GB
        (11_264, ">=8gb"),  # GTX 1080 Ti
        (8_188, ">=8gb"),  # RTX 4060 Ti
        (6_144, "cpu"),
        (0, "cpu"),
        (-1, "cpu"),
    ],
)
def test_vram_tier(mib: int, tier: str) -> None:
    assert vram_tier(mib) == tier


def test_default_models() -> None:
    assert default_model(">=48gb", engine="ollama") == "qwen2.5:72b"
    assert default_model(">=24gb", engine="ollama") == "qwen2.5:14b"
    assert default_model(">=12gb", engine="ollama") == "qwen2.5:7b"
    assert default_model(">=8gb", engine="ollama") == "qwen2.5:7b"
    assert default_model("cpu", engine="ollama") == "qwen2.5:1.5b"
    assert default_model("cpu", engine=None) == EMBEDDED_MODEL == "gemma3-270m"
    with pytest.raises(PricingError):
        default_model(">=4gb", engine=None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("qwen2.5:72b", "72"),
        ("qwen2.5:14b", "14"),
        ("llama3.2:3b", "3"),
        ("deepseek-coder:6.7b", "6.7"),
        ("gemma3-270m", "0.27"),
        ("Qwen/Qwen2.5-7B-Instruct", "7"),
        ("qwen2.5:1.5b", "1.5"),
        ("phi3:mini", None),
        ("qwen2.5", None),
    ],
)
def test_model_params_b(name: str, params: str | None) -> None:
    assert model_params_b(name) == (None if params is None else Decimal(params))


def test_bands_follow_the_book_and_output_costs_four_times_input() -> None:
    per_1k_output = {band.name: band.rates.output_per_1k for band in BANDS}
    assert per_1k_output == {
        "1b-3b": Decimal("0.001"),
        "7b": Decimal("0.002"),
        "13b-14b": Decimal("0.005"),
        "30b-33b": Decimal("0.012"),
        "70b+": Decimal("0.025"),
    }
    for band in BANDS:
        assert band.rates.output_per_1k == band.rates.input_per_1k * OUTPUT_WEIGHT == \
            band.rates.input_per_1k * 4


@pytest.mark.parametrize(
    ("name", "band"),
    [("gemma3-270m", "1b-3b"), ("llama3.2:3b", "1b-3b"), ("qwen2.5:7b", "7b"),
     ("llama3.1:8b", "7b"), ("qwen2.5:14b", "13b-14b"), ("deepseek-coder:33b", "30b-33b"),
     ("qwen2.5:72b", "70b+"), ("llama3.1:405b", "70b+"), ("phi3:mini", "7b")],
)
def test_size_band_of_models(name: str, band: str) -> None:
    assert size_band(model_params_b(name)).name == band


def test_job_value_is_exact() -> None:
    value = job_value(24, 312, rates_for_model("qwen2.5:14b"))
    # 24 × 0.00125/1K + 312 × 0.005/1K
    assert value == Decimal("0.00003") + Decimal("0.00156") == Decimal("0.00159")
    assert job_value(0, 0, rates_for_model("x")) == 0


def test_job_value_refuses_floats_and_negatives() -> None:
    with pytest.raises(PricingError):
        job_value(-1, 1, rates_for_model("qwen2.5:7b"))
    with pytest.raises(PricingError):
        job_value(True, 1, rates_for_model("qwen2.5:7b"))
    with pytest.raises(PricingError):
        job_value(1, 1, Rates(input_per_1k=0.1, output_per_1k=0.4))  # type: ignore[arg-type]
    with pytest.raises(PricingError):
        size_band(Decimal(-1))


def test_fee_split_is_15_percent_and_exact() -> None:
    split = split_fee(Decimal("0.00159"))
    assert Decimal("0.15") == PLATFORM_FEE
    assert split.platform == Decimal("0.0002385")
    assert split.operator + split.platform == Decimal("0.00159")
    for bad in (Decimal(-1), Decimal("NaN"), 1.0):
        with pytest.raises(PricingError):
            split_fee(bad)  # type: ignore[arg-type]
    with pytest.raises(PricingError):
        split_fee(Decimal(1), Decimal("1.5"))


def test_payout_minimums() -> None:
    assert set(CHAINS) == {"base", "ethereum", "polygon", "solana"}
    assert payout_minimum("base") == payout_minimum("polygon") == payout_minimum("solana") == 1
    assert payout_minimum("ethereum") == 10
    with pytest.raises(PricingError, match="unknown chain"):
        payout_minimum("dogecoin")


def test_payout_amount_rounds_down_to_six_decimals() -> None:
    assert payout_amount(Decimal("12.8412349"), "base") == Decimal("12.841234")
    assert payout_amount(Decimal("0.9999999"), "base") is None
    assert payout_amount(Decimal("1"), "solana") == Decimal("1")
    assert payout_amount(Decimal("9.99"), "ethereum") is None
    assert payout_amount(Decimal("10"), "ethereum") == Decimal("10")
    with pytest.raises(PricingError):
        payout_amount(Decimal("-1"), "base")
    with pytest.raises(PricingError):
        payout_amount(Decimal("1e30"), "base")


@settings(max_examples=200, deadline=None, database=None)
@given(st.integers(0, 10**7), st.integers(0, 10**7), st.sampled_from(BANDS))
def test_value_and_fee_never_lose_a_fraction(inp: int, out: int, band: object) -> None:
    rates = band.rates  # type: ignore[attr-defined]
    value = job_value(inp, out, rates)
    assert value * 1000 == inp * rates.input_per_1k + out * rates.output_per_1k
    split = split_fee(value)
    assert split.operator + split.platform == value
    assert split.operator >= 0 and split.platform >= 0
