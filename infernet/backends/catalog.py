"""The model catalogue: which well-known models a node can serve, how big they are, and
which of them suit this node.

Owns: `CATALOG` (one row per model: parameter count, the smallest VRAM tier it is meant for,
and its name under each engine family's naming: Ollama tag, HuggingFace repo id, GGUF file
or alias), and `recommend`, the ranking behind ``infernet model recommend`` and the model
that ``infernet setup`` suggests. Sources: the operator book's tier chapter (what each tier
runs) and model-management chapter (naming per engine, the VRAM rule of thumb).

Rules:
- A model is recommended when the node's tier is at least the row's ``min_tier`` and it
  fits the memory budget with headroom (`infernet.backends.fit.check_fit`, under the engine's
  naming: Q4 for Ollama and GGUF, FP16 for HuggingFace ids; weights + 20 % + 1 GiB within the
  budget, or within 90 % of it on vLLM, SGLang and MAX).
- Best first: the tier's default model (`infernet.protocol.pricing.default_model`) leads,
  then the largest models (they earn the most per token, `pricing.size_band`); at most
  `RECOMMEND_LIMIT` rows, so ``--install-all`` never fills a disk with every small model.
- A row without a name in the engine's naming is not offered on that engine. For HuggingFace
  engines a Qwen row also names its AWQ (4-bit) repo, offered when FP16 does not fit.

Pure data and functions: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Final

from infernet.backends.base import ModelInfo, ModelNaming
from infernet.backends.fit import check_fit
from infernet.protocol.pricing import (
    EMBEDDED_MODEL,
    VRAM_TIERS,
    VramTier,
    default_model,
    size_band,
)

__all__ = [
    "CATALOG",
    "RECOMMEND_LIMIT",
    "CatalogModel",
    "Recommendation",
    "find",
    "recommend",
    "tier_at_least",
]

RECOMMEND_LIMIT: Final = 5


@dataclass(frozen=True, slots=True)
class CatalogModel:
    """One model: its size, the smallest tier it suits, and its name per engine naming."""

    family: str
    params_b: Decimal
    min_tier: VramTier
    ollama: str | None
    huggingface: str | None
    gguf: str | None
    use: str = "chat"
    huggingface_awq: str | None = None  # a 4-bit AWQ repo, for when FP16 does not fit

    def names_for(self, naming: ModelNaming) -> tuple[str, ...]:
        """This model's names under ``naming``, preferred first (empty: not offered there)."""
        names: tuple[str | None, ...]
        if naming == "ollama":
            names = (self.ollama,)
        elif naming == "huggingface":
            names = (self.huggingface, self.huggingface_awq)
        else:
            names = (self.gguf,)
        return tuple(n for n in names if n)

    @property
    def band(self) -> str:
        """The pricing size band (``"7b"``, ``"70b+"``...)."""
        return size_band(self.params_b).name


def _row(family: str, params_b: str, min_tier: VramTier, ollama: str | None,
         hf: str | None, gguf: str | None, use: str = "chat", *, awq: bool = False) -> CatalogModel:
    return CatalogModel(family, Decimal(params_b), min_tier, ollama, hf, gguf, use,
                        f"{hf}-AWQ" if awq and hf else None)


# Largest first. Parameter counts are the published ones (Qwen2.5-7B is 7.6B...), so the
# Q4 estimate is close to what Ollama downloads.
CATALOG: Final[tuple[CatalogModel, ...]] = (
    _row("qwen2.5-72b", "72.7", ">=48gb", "qwen2.5:72b", "Qwen/Qwen2.5-72B-Instruct",
         "qwen2.5-72b-instruct-q4_k_m.gguf", awq=True),
    _row("llama3.1-70b", "70.6", ">=48gb", "llama3.1:70b", "meta-llama/Llama-3.1-70B-Instruct",
         "llama-3.1-70b-instruct-q4_k_m.gguf"),
    _row("deepseek-coder-33b", "33", ">=24gb", "deepseek-coder:33b",
         "deepseek-ai/deepseek-coder-33b-instruct", "deepseek-coder-33b-instruct-q4_k_m.gguf",
         "code"),
    _row("qwen2.5-32b", "32.8", ">=24gb", "qwen2.5:32b", "Qwen/Qwen2.5-32B-Instruct",
         "qwen2.5-32b-instruct-q4_k_m.gguf", awq=True),
    _row("qwen2.5-14b", "14.8", ">=12gb", "qwen2.5:14b", "Qwen/Qwen2.5-14B-Instruct",
         "qwen2.5-14b-instruct-q4_k_m.gguf", awq=True),
    _row("llama3.1-8b", "8.0", ">=8gb", "llama3.1:8b", "meta-llama/Llama-3.1-8B-Instruct",
         "llama-3.1-8b-instruct-q4_k_m.gguf"),
    _row("qwen2.5-7b", "7.6", ">=8gb", "qwen2.5:7b", "Qwen/Qwen2.5-7B-Instruct",
         "qwen2.5-7b-instruct-q4_k_m.gguf", awq=True),
    _row("deepseek-coder-6.7b", "6.7", ">=8gb", "deepseek-coder:6.7b",
         "deepseek-ai/deepseek-coder-6.7b-instruct", "deepseek-coder-6.7b-instruct-q4_k_m.gguf",
         "code"),
    _row("llama3.2-3b", "3.2", "cpu", "llama3.2:3b", "meta-llama/Llama-3.2-3B-Instruct",
         "llama-3.2-3b-instruct-q4_k_m.gguf"),
    _row("qwen2.5-1.5b", "1.5", "cpu", "qwen2.5:1.5b", "Qwen/Qwen2.5-1.5B-Instruct",
         "qwen2.5-1.5b-instruct-q4_k_m.gguf"),
    # The embedded engine's bundled base model: offered only there (its alias).
    _row("gemma3-270m", "0.27", "cpu", None, None, EMBEDDED_MODEL, "base model, Q&A"),
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Recommendation:
    """A catalogue model under one engine's naming, with its estimated size and what it
    needs with headroom (`infernet.backends.fit.check_fit`)."""

    model: CatalogModel
    name: str
    weights_bytes: int | None
    needed_bytes: int | None
    default: bool


def tier_at_least(tier: VramTier, floor: VramTier) -> bool:
    """Whether ``tier`` is ``floor`` or better (`VRAM_TIERS` lists best first)."""
    return VRAM_TIERS.index(tier) <= VRAM_TIERS.index(floor)


def find(name: str) -> CatalogModel | None:
    """The catalogue row that has ``name`` under any naming (case-insensitive), or None."""
    lowered = name.lower()
    for row in CATALOG:
        names = (row.ollama, row.huggingface, row.huggingface_awq, row.gguf)
        if lowered in {n.lower() for n in names if n}:
            return row
    return None


def recommend(
    tier: VramTier,
    budget_bytes: int | None,
    naming: ModelNaming,
    *,
    embedded: bool = False,
    limit: int = RECOMMEND_LIMIT,
) -> list[Recommendation]:
    """The catalogue models for a node of ``tier`` with ``budget_bytes`` of VRAM (RAM on a
    CPU node) on an engine using ``naming``, best first (see the module rules).

    ``embedded``: the engine is the embedded one, whose default is its bundled model.
    """
    preferred = EMBEDDED_MODEL if embedded else default_model(tier, engine="engine")
    picks: list[Recommendation] = []
    for row in CATALOG:
        if not tier_at_least(tier, row.min_tier):
            continue
        params = int(row.params_b * 1_000_000_000)
        for name in row.names_for(naming):
            info = ModelInfo(name=name, parameter_count=params)
            verdict = check_fit(info, budget_bytes, naming)
            if verdict.fits:
                is_default = preferred in (row.ollama, row.gguf)
                picks.append(Recommendation(row, name, verdict.weights_bytes,
                                            verdict.needed_bytes, is_default))  # fmt: skip
                break
    picks.sort(key=lambda r: (not r.default, -r.model.params_b))
    return picks[:limit]
