"""Pricing and tiers: VRAM tiers, default models, job value, platform fee, payout minimums.

Owns: the numbers of DESIGN.md §3 "Receipts" and the operator book's earnings chapter
(``specs/receipts.md`` §5): VRAM tier of a GPU, default model per tier, the per-token rates
of each model size band, the value of a job, the 15 % platform fee, the minimum payout
of each chain, and the coins and networks an operator can name a payout address for
(``infernet payout set``; address formats are ``infernet.protocol.address``).

Invariants:

- Money is ``Decimal`` from end to end; no float ever enters a value (floats are refused).
- ``job_value`` is exact (no rounding); rounding happens once, at payout, down to the
  token's 6 decimals, so a node is never paid more than it earned.
- Output tokens cost 4x input tokens in every band (``OUTPUT_WEIGHT``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import ROUND_DOWN, Decimal, InvalidOperation
from typing import Final, Literal, get_args

from infernet.protocol.errors import ErrorCode, InfernetError

__all__ = [
    "BANDS",
    "CHAINS",
    "COINS",
    "COIN_NETWORKS",
    "DEFAULT_MODELS",
    "EMBEDDED_MODEL",
    "NETWORKS",
    "OUTPUT_WEIGHT",
    "PAYOUT_MINIMUMS",
    "PLATFORM_FEE",
    "TOKEN_DECIMALS",
    "VRAM_TIERS",
    "Chain",
    "Coin",
    "FeeSplit",
    "Network",
    "PricingError",
    "Rates",
    "SizeBand",
    "VramTier",
    "default_model",
    "job_value",
    "model_params_b",
    "payout_amount",
    "payout_minimum",
    "payout_network",
    "rates_for_model",
    "size_band",
    "split_fee",
    "vram_tier",
]

VramTier = Literal[">=48gb", ">=24gb", ">=12gb", ">=8gb", "cpu"]
VRAM_TIERS: Final[tuple[VramTier, ...]] = get_args(VramTier)
Chain = Literal["base", "ethereum", "polygon", "solana"]
CHAINS: Final[tuple[Chain, ...]] = get_args(Chain)

# Where an operator can be paid (the seeds' FAQ: BTC, ETH, SOL, POL, BNB, XRP, DOGE; USDT on
# Ethereum/Polygon/Solana; USDC on Ethereum/Polygon/Solana/Base, and Arbitrum as the book's
# `payout set` example shows). Settlement happens in USDC on a `Chain`; the other coins are
# stored for when a gateway pays in them. BCH and ADA are not offered: their address formats
# (CashAddr; Shelley bech32 longer than 90 characters) have no maintained validator here.
Coin = Literal["USDC", "USDT", "BTC", "ETH", "SOL", "POL", "BNB", "XRP", "DOGE"]
COINS: Final[tuple[Coin, ...]] = get_args(Coin)
Network = Literal["base", "ethereum", "polygon", "solana", "arbitrum", "bsc", "bitcoin",
                  "xrp", "dogecoin"]
NETWORKS: Final[tuple[Network, ...]] = get_args(Network)
COIN_NETWORKS: Final[dict[Coin, tuple[Network, ...]]] = {  # the first is the default
    "USDC": ("base", "ethereum", "polygon", "solana", "arbitrum"),
    "USDT": ("ethereum", "polygon", "solana"),
    "BTC": ("bitcoin",),
    "ETH": ("ethereum", "base", "arbitrum"),
    "SOL": ("solana",),
    "POL": ("polygon",),
    "BNB": ("bsc",),
    "XRP": ("xrp",),
    "DOGE": ("dogecoin",),
}

_MIB_PER_GB: Final = 1024
# Lower bound of each GPU tier in GiB of VRAM, best first; below the last one is "cpu".
_TIER_FLOORS_GB: Final[tuple[tuple[VramTier, int], ...]] = (
    (">=48gb", 48),
    (">=24gb", 24),
    (">=12gb", 12),
    (">=8gb", 8),
)

DEFAULT_MODELS: Final[dict[VramTier, str]] = {
    ">=48gb": "qwen2.5:72b",
    ">=24gb": "qwen2.5:14b",
    ">=12gb": "qwen2.5:7b",
    ">=8gb": "qwen2.5:7b",
    "cpu": "qwen2.5:1.5b",
}
EMBEDDED_MODEL: Final = "gemma3-270m"  # served by the embedded llama.cpp engine, no install

OUTPUT_WEIGHT: Final = Decimal(4)  # one output token costs as much as four input tokens
PLATFORM_FEE: Final = Decimal("0.15")
TOKEN_DECIMALS: Final = 6  # USDC
PAYOUT_MINIMUMS: Final[dict[Chain, Decimal]] = {
    "base": Decimal("1"),
    "ethereum": Decimal("10"),  # mainnet gas makes small payouts pointless
    "polygon": Decimal("1"),
    "solana": Decimal("1"),
}


class PricingError(InfernetError):
    """Raised on an unknown chain or tier, a negative count, or a float where money belongs."""

    code: ErrorCode = "bad_request"


@dataclass(frozen=True, slots=True)
class Rates:
    """USDC per 1000 tokens, input and output."""

    input_per_1k: Decimal
    output_per_1k: Decimal


@dataclass(frozen=True, slots=True)
class SizeBand:
    """Models up to ``max_params_b`` billion parameters (None: no upper bound) and their rates."""

    name: str
    max_params_b: Decimal | None
    rates: Rates


def _band(name: str, max_params_b: str | None, output_per_1k: str) -> SizeBand:
    output = Decimal(output_per_1k)
    upper = None if max_params_b is None else Decimal(max_params_b)
    return SizeBand(name, upper, Rates(input_per_1k=output / OUTPUT_WEIGHT, output_per_1k=output))


# The book's "approximate rates" table (per 1K output tokens), input at a quarter of that.
# Bounds sit between the sizes models ship in, so 8B falls with 7B and 34B with 33B.
BANDS: Final[tuple[SizeBand, ...]] = (
    _band("1b-3b", "4", "0.001"),  # sub-1B models (the embedded 270M) price here too
    _band("7b", "10", "0.002"),
    _band("13b-14b", "20", "0.005"),
    _band("30b-33b", "40", "0.012"),
    _band("70b+", None, "0.025"),
)
_UNKNOWN_SIZE_BAND: Final = BANDS[1]  # a name without a size is priced as a 7B model

# "qwen2.5:72b", "llama3.2:3b", "deepseek-coder:6.7b", "gemma3-270m", "Qwen2.5-7B-Instruct":
# a number followed by b/m, not part of a longer word or version ("qwen2.5:" is no size).
_SIZE_RE: Final = re.compile(r"(?<![0-9.])([0-9]+(?:\.[0-9]+)?)([bm])(?![a-z0-9])", re.IGNORECASE)


def vram_tier(vram_mib: int) -> VramTier:
    """Return the tier of a GPU with ``vram_mib`` MiB of memory (0 or less: ``"cpu"``).

    Raises:
        Nothing.
    """
    for tier, floor_gb in _TIER_FLOORS_GB:
        # Cards report a little under their nominal size (a "24 GB" card shows ~24,220 MiB
        # free of 24,564), so 95 % of the nominal size counts.
        if vram_mib * 100 >= floor_gb * _MIB_PER_GB * 95:
            return tier
    return "cpu"


def default_model(tier: VramTier, *, engine: str | None) -> str:
    """Return the model a fresh node serves: the tier's Ollama default, or the embedded one.

    ``engine`` None means no engine is installed: a CPU node then runs the embedded model.

    Raises:
        PricingError: unknown tier.
    """
    if tier not in DEFAULT_MODELS:
        raise PricingError(f"unknown VRAM tier {tier!r}")
    if tier == "cpu" and engine is None:
        return EMBEDDED_MODEL
    return DEFAULT_MODELS[tier]


def model_params_b(model: str) -> Decimal | None:
    """Return the parameter count in billions that a model name states, or None.

    Raises:
        Nothing.
    """
    matches = _SIZE_RE.findall(model)
    if not matches:
        return None
    number, unit = matches[-1]
    size = Decimal(number)
    return size / 1000 if unit.lower() == "m" else size


def size_band(params_b: Decimal | None) -> SizeBand:
    """Return the band of a model of ``params_b`` billion parameters (None: the 7B band).

    Raises:
        PricingError: a negative size.
    """
    if params_b is None:
        return _UNKNOWN_SIZE_BAND
    if params_b < 0:
        raise PricingError("model size cannot be negative")
    for band in BANDS:
        if band.max_params_b is None or params_b <= band.max_params_b:
            return band
    return BANDS[-1]  # unreachable: the last band has no bound


def rates_for_model(model: str) -> Rates:
    """Return the rates of a model, by the size its name states.

    Raises:
        Nothing.
    """
    return size_band(model_params_b(model)).rates


def _count(value: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise PricingError(f"{what} must be a non-negative integer")
    return value


def job_value(input_tokens: int, output_tokens: int, rates: Rates) -> Decimal:
    """Return input × input rate + output × output rate, exactly, in USDC.

    Raises:
        PricingError: a negative or non-integer count, or rates that are not Decimals.
    """
    _count(input_tokens, "input_tokens")
    _count(output_tokens, "output_tokens")
    if not isinstance(rates.input_per_1k, Decimal) or not isinstance(rates.output_per_1k, Decimal):
        raise PricingError("rates must be Decimals, never floats")
    total = input_tokens * rates.input_per_1k + output_tokens * rates.output_per_1k
    return total / 1000


@dataclass(frozen=True, slots=True)
class FeeSplit:
    """A job value split into the operator's share and the platform fee (they sum exactly)."""

    operator: Decimal
    platform: Decimal


def split_fee(value: Decimal, fee: Decimal = PLATFORM_FEE) -> FeeSplit:
    """Split ``value`` into operator share and platform fee (``value × fee``), exactly.

    Raises:
        PricingError: a negative or non-Decimal value, or a fee outside 0..1.
    """
    if not isinstance(value, Decimal) or not value.is_finite() or value < 0:
        raise PricingError("value must be a finite non-negative Decimal")
    if not isinstance(fee, Decimal) or not 0 <= fee <= 1:
        raise PricingError("fee must be a Decimal between 0 and 1")
    platform = value * fee
    return FeeSplit(operator=value - platform, platform=platform)


def payout_minimum(chain: str) -> Decimal:
    """Return the smallest payout on ``chain``, in USDC.

    Raises:
        PricingError: unknown chain.
    """
    for known, minimum in PAYOUT_MINIMUMS.items():
        if known == chain:
            return minimum
    raise PricingError(f"unknown chain {chain!r}; known: {', '.join(CHAINS)}")


def payout_network(coin: str, network: str | None = None) -> tuple[Coin, Network]:
    """Return (coin, network) for a payout address; ``network`` None picks the coin's default.

    Names are case-insensitive (``usdc`` → ``USDC``, ``Base`` → ``base``).

    Raises:
        PricingError: unknown coin, or a network the coin is not paid on.
    """
    wanted = coin.strip().upper()
    known = next((c for c in COINS if c == wanted), None)
    if known is None:
        raise PricingError(f"unknown coin {coin!r}; known: {', '.join(COINS)}")
    networks = COIN_NETWORKS[known]
    if network is None:
        return known, networks[0]
    net = next((n for n in networks if n == network.strip().lower()), None)
    if net is None:
        raise PricingError(f"{known} is not paid on {network!r}; networks for {known}: "
                           f"{', '.join(networks)}")
    return known, net


def payout_amount(balance: Decimal, chain: str) -> Decimal | None:
    """Return what a payout of ``balance`` transfers (6 decimals, rounded down), or None.

    None means the balance is below the chain's minimum: nothing is sent.

    Raises:
        PricingError: unknown chain, or a balance that is not a finite non-negative Decimal.
    """
    minimum = payout_minimum(chain)
    if not isinstance(balance, Decimal) or not balance.is_finite() or balance < 0:
        raise PricingError("balance must be a finite non-negative Decimal")
    try:
        amount = balance.quantize(Decimal(1).scaleb(-TOKEN_DECIMALS), rounding=ROUND_DOWN)
    except InvalidOperation:
        raise PricingError("balance is too large") from None
    return amount if amount >= minimum else None
