"""Will a model fit? The VRAM rule of thumb by quantization, and the numbers it needs.

Owns: reading a parameter count out of what engines report (``"7.6B"``, ``"270M"``) or out of
a model name (``qwen2.5:14b``, ``Qwen/Qwen2.5-72B-Instruct-AWQ``), bytes per parameter by
quantization, and `check_fit`, the verdict the node acts on before advertising a model and the
CLI before installing one. Pure functions: no I/O.

The rule (from the product book): a model needs about 2 bytes per parameter at FP16/BF16,
1 at INT8/Q8 and 0.5 at Q4; other GGUF levels scale with their bit width (Q5 0.625 ...).
When the engine reports the weights' size on disk, that size is the better estimate and wins.
Ollama pulls Q4 variants unless a tag says otherwise; a HuggingFace repo id without a
quantization marker is FP16/BF16.

Invariants: an estimate is never invented: without a size and without a parameter count the
verdict is "unknown" and the model is allowed (with a note), not refused.
"""

from __future__ import annotations

import re
from typing import Final

import msgspec

from infernet.backends.base import ModelInfo, ModelNaming

__all__ = [
    "FitVerdict",
    "bytes_per_parameter",
    "check_fit",
    "estimate_bytes",
    "parameter_count_from_name",
    "parse_parameter_count",
    "quantization_from_name",
]

_SUFFIX: Final = {"k": 1e3, "m": 1e6, "b": 1e9, "t": 1e12}
# "7.6B", "270M", "8x7B" (mixture of experts: all experts' weights are resident)
_COUNT_RE: Final = re.compile(r"^(?:(\d+)x)?(\d+(?:\.\d+)?)([kmbt])$", re.IGNORECASE)
# a size token inside a name: qwen2.5:14b, Llama-3.1-8B-Instruct, mixtral:8x7b, gemma3-270m
_NAME_COUNT_RE: Final = re.compile(
    r"(?:^|[^a-z0-9.])((?:\d+x)?\d+(?:\.\d+)?[mb])(?=$|[^a-z0-9])", re.IGNORECASE
)
# (marker in a quantization label or name, bytes per parameter), most specific first
_QUANT_BYTES: Final[tuple[tuple[str, float], ...]] = (
    ("f32", 4.0), ("fp32", 4.0),
    ("bf16", 2.0), ("f16", 2.0), ("fp16", 2.0),
    ("fp8", 1.0), ("int8", 1.0), ("q8", 1.0), ("w8a8", 1.0),
    ("q6", 0.75), ("q5", 0.625),
    ("int4", 0.5), ("q4", 0.5), ("awq", 0.5), ("gptq", 0.5), ("bnb-4bit", 0.5), ("nf4", 0.5),
    ("iq4", 0.5), ("q3", 0.375), ("iq3", 0.375), ("q2", 0.25), ("iq2", 0.25),
)  # fmt: skip
_DEFAULT_BYTES: Final[dict[ModelNaming, float]] = {
    "ollama": 0.5,  # Ollama's default tags are Q4_K_M
    "huggingface": 2.0,  # safetensors in BF16/FP16
    "alias": 0.5,  # GGUF aliases: Q4_K_M is the usual choice
}
_GB: Final = 1e9


class FitVerdict(msgspec.Struct, frozen=True, kw_only=True):
    """Whether a model fits in the memory budget, and why."""

    fits: bool
    needed_bytes: int | None
    budget_bytes: int | None
    reason: str

    @property
    def known(self) -> bool:
        """False when there was nothing to estimate from (the model is then allowed)."""
        return self.needed_bytes is not None and self.budget_bytes is not None


def parse_parameter_count(text: str) -> int | None:
    """Parse ``"7.6B"``, ``"270M"``, ``"8x7B"`` into a parameter count; None if not one."""
    match = _COUNT_RE.match(text.strip())
    if match is None:
        return None
    experts = int(match.group(1)) if match.group(1) else 1
    return int(experts * float(match.group(2)) * _SUFFIX[match.group(3).lower()])


def parameter_count_from_name(name: str) -> int | None:
    """The parameter count a model name states (``qwen2.5:14b`` → 14e9), or None."""
    matches = _NAME_COUNT_RE.findall(name)
    return parse_parameter_count(matches[-1]) if matches else None


def quantization_from_name(name: str) -> str | None:
    """The quantization marker a name carries (``...-q4_K_M`` → ``q4``), or None."""
    lowered = name.lower()
    for marker, _ in _QUANT_BYTES:
        if re.search(rf"(?:^|[^a-z0-9]){re.escape(marker)}(?:$|[^a-z0-9])", lowered):
            return marker
    return None


def bytes_per_parameter(quantization: str | None, naming: ModelNaming = "alias") -> float:
    """Bytes per parameter for a quantization label (``Q4_K_M``, ``F16``, ``AWQ``...).

    Unknown or missing labels fall back to the engine family's usual format.
    """
    if quantization:
        lowered = quantization.lower().replace(" ", "")
        for marker, size in _QUANT_BYTES:
            if marker in lowered:
                return size
    return _DEFAULT_BYTES[naming]


def estimate_bytes(model: ModelInfo, naming: ModelNaming = "alias") -> int | None:
    """Memory the model's weights need: the reported size, else parameters × bytes each."""
    if model.size_bytes:
        return model.size_bytes
    count = model.parameter_count or parameter_count_from_name(model.name)
    if count is None:
        return None
    quant = model.quantization or quantization_from_name(model.name)
    return int(count * bytes_per_parameter(quant, naming))


def check_fit(
    model: ModelInfo, budget_bytes: int | None, naming: ModelNaming = "alias"
) -> FitVerdict:
    """Decide whether ``model`` fits in ``budget_bytes`` (total VRAM; RAM on CPU nodes)."""
    needed = estimate_bytes(model, naming)
    if needed is None or budget_bytes is None:
        what = "its size" if needed is None else "this node's memory"
        return FitVerdict(
            fits=True, needed_bytes=needed, budget_bytes=budget_bytes,
            reason=f"{model.name}: cannot tell {what}; allowed without a fit check",
        )  # fmt: skip
    fits = needed <= budget_bytes
    relation = "fits in" if fits else "does not fit in"
    return FitVerdict(
        fits=fits,
        needed_bytes=needed,
        budget_bytes=budget_bytes,
        reason=f"{model.name} needs ~{needed / _GB:.1f} GB, {relation} "
        f"{budget_bytes / _GB:.1f} GB"
        + ("" if fits else "; pick a smaller or more quantized variant (e.g. a q4 tag)"),
    )
