"""Will a model fit? Its weights by quantization, the headroom it needs on top, and the share
of the memory its engine takes; and how sizes are shown to operators.

Owns: reading a parameter count out of what engines report (``"7.6B"``, ``"270M"``) or out of
a model name (``qwen2.5:14b``, ``Qwen/Qwen2.5-72B-Instruct-AWQ``), bytes per parameter by
quantization, the fit rule below and `check_fit`, the verdict the node acts on before
advertising a model, the CLI before installing one, ``infernet model recommend`` before
offering one and ``infernet doctor`` before calling a served model too big. Also
`format_size`: every size the CLI prints (VRAM, model, disk) is in binary units labelled
GiB/MiB, the unit nvidia-smi counts in and the one card makers' "24 GB" and tier names
(``>=24gb``) mean. Pure functions: no I/O.

Weights (from the product book): about 2 bytes per parameter at FP16/BF16, 1 at INT8/Q8 and
0.5 at Q4; other GGUF levels scale with their bit width (Q5 0.625 ...). When the engine
reports the weights' size on disk, that size is the better estimate and wins. Ollama pulls Q4
variants unless a tag says otherwise; a HuggingFace repo id without a quantization marker is
FP16/BF16.

The fit rule (this is the only place it lives)::

    weights + headroom <= usable
    headroom = 20 % of the weights + 1 GiB
    usable   = VRAM (RAM on a CPU-only node) x the engine's share:
               90 % for vLLM, SGLang and MAX; 100 % for Ollama, llama.cpp, the embedded engine

Where the numbers come from:

- 20 % of the weights: the KV cache for a working context, activations and allocator
  fragmentation grow with the model. Serving guides estimate memory as weights x 1.2 (BentoML,
  "Calculating GPU memory for serving LLMs": P x Q/8 x (1 + overhead), with a 20 % overhead
  in its worked 70B example; others quote 10-30 %). A long context or many concurrent
  requests need more; this is the floor a model must clear to be offered.
- 1 GiB: the CUDA (or ROCm/Metal) context and the engine's own buffers, whatever the model.
  On the H200 of ``tests/node/fixtures/h200`` (torch 2.11, CUDA 13) the context took 621 MiB
  and ~685 MiB once cuBLAS had run an FP16 matmul, outside anything torch allocated; Ollama
  keeps 457 MiB of every CUDA or ROCm GPU free (``cudaMinimumMemory`` in its GPU discovery).
- 90 %: vLLM preallocates ``--gpu-memory-utilization`` of each GPU, 0.9 by default (vLLM's
  engine arguments), for weights, activations and KV cache together; the rest is never the
  model's. SGLang (``--mem-fraction-static``) and MAX (``--device-memory-utilization``) also
  take a fixed share up front; vLLM's documented default stands for all three. Ollama and
  llama.cpp allocate what they need, so their share is the whole budget.

The share is keyed by `ModelNaming` because naming is what separates the engine families:
in `infernet.backends.engines.ENGINES` the HuggingFace-id engines are exactly vLLM, SGLang
and MAX, the preallocating servers (``tests/backends/test_fit.py`` checks that).

Invariants: an estimate is never invented: without a size and without a parameter count the
verdict is "unknown" and the model is allowed (with a note), not refused. Integer arithmetic
throughout, so a verdict at the boundary does not depend on float rounding.
"""

from __future__ import annotations

import re
from typing import Final

import msgspec

from infernet.backends.base import ModelInfo, ModelNaming

__all__ = [
    "ENGINE_SHARE_PERCENT",
    "HEADROOM_PERCENT",
    "RUNTIME_BYTES",
    "FitVerdict",
    "bytes_per_parameter",
    "check_fit",
    "describe_rule",
    "estimate_bytes",
    "format_size",
    "headroom_bytes",
    "parameter_count_from_name",
    "parse_parameter_count",
    "quantization_from_name",
    "usable_bytes",
]

# The fit rule's numbers; the module docstring says where each comes from.
HEADROOM_PERCENT: Final = 20  # of the weights: KV cache, activations, fragmentation
RUNTIME_BYTES: Final = 1024**3  # per node: the GPU context and the engine's own buffers
ENGINE_SHARE_PERCENT: Final[dict[ModelNaming, int]] = {
    "huggingface": 90,  # vLLM --gpu-memory-utilization 0.9; SGLang and MAX alike
    "ollama": 100,
    "alias": 100,  # llama.cpp and the embedded engine
}
_PREALLOCATING: Final = "vLLM, SGLang and MAX"
_SMALLER: Final[dict[ModelNaming, str]] = {
    "ollama": "a smaller model or a more quantized tag (e.g. q4)",
    "huggingface": "a smaller model or a 4-bit repo (e.g. -AWQ)",
    "alias": "a smaller model or a more quantized GGUF (e.g. Q4_K_M)",
}
_MIB: Final = 1024**2
_GIB: Final = 1024**3

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


class FitVerdict(msgspec.Struct, frozen=True, kw_only=True):
    """Whether a model fits in the memory budget, and why (see the module's fit rule)."""

    fits: bool
    weights_bytes: int | None  # the weights alone: reported size, else the estimate
    needed_bytes: int | None  # weights + headroom
    budget_bytes: int | None  # VRAM, or RAM on a CPU-only node
    usable_bytes: int | None  # the engine's share of the budget
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


def headroom_bytes(weights_bytes: int) -> int:
    """What a model needs beyond its weights: 20 % of them plus 1 GiB (the module's rule)."""
    return weights_bytes * HEADROOM_PERCENT // 100 + RUNTIME_BYTES


def usable_bytes(budget_bytes: int, naming: ModelNaming = "alias") -> int:
    """The part of ``budget_bytes`` an engine of this naming lets a model use."""
    return budget_bytes * ENGINE_SHARE_PERCENT[naming] // 100


def format_size(size: int | None) -> str:
    """``"4.4 GiB"``, ``"715 MiB"``, or ``"-"`` when the size is unknown: binary units,
    labelled as such, for every size the CLI prints."""
    if not size:
        return "-"
    if size >= _GIB:
        return f"{size / _GIB:.1f} GiB"
    return f"{size / _MIB:.0f} MiB"


def describe_rule(budget_bytes: int, naming: ModelNaming, memory: str = "VRAM") -> str:
    """One sentence an operator can check a verdict against, for ``budget_bytes`` of
    ``memory`` on an engine of ``naming``."""
    share = ENGINE_SHARE_PERCENT[naming]
    within = format_size(usable_bytes(budget_bytes, naming))
    where = f"{within} of {memory}"
    if share < 100:
        where = f"{within}, the {share} % of {memory} that {_PREALLOCATING} allocate"
    return (f"A model fits when its weights + {HEADROOM_PERCENT} % + "
            f"{format_size(RUNTIME_BYTES)} (KV cache, runtime) stay within {where}.")


def check_fit(
    model: ModelInfo, budget_bytes: int | None, naming: ModelNaming = "alias"
) -> FitVerdict:
    """Decide whether ``model`` fits in ``budget_bytes`` (total VRAM; RAM on CPU nodes) on an
    engine of ``naming``, with the headroom of the module's rule."""
    weights = estimate_bytes(model, naming)
    needed = None if weights is None else weights + headroom_bytes(weights)
    if weights is None or needed is None or budget_bytes is None:
        what = "its size" if weights is None else "this node's memory"
        return FitVerdict(
            fits=True, weights_bytes=weights, needed_bytes=needed, budget_bytes=budget_bytes,
            usable_bytes=None, reason=f"{model.name}: cannot tell {what}; allowed without a "
            "fit check",
        )  # fmt: skip
    usable = usable_bytes(budget_bytes, naming)
    return FitVerdict(
        fits=needed <= usable, weights_bytes=weights, needed_bytes=needed,
        budget_bytes=budget_bytes, usable_bytes=usable,
        reason=f"{model.name} needs ~{format_size(needed)} ({format_size(weights)} weights + "
        f"{format_size(needed - weights)} for KV cache and runtime): "
        + _verdict(needed, budget_bytes, usable, naming),
    )  # fmt: skip


def _verdict(needed: int, budget: int, usable: int, naming: ModelNaming) -> str:
    """``fits in ...``, or ``does not fit, <by how much> more than <what the engine uses>``."""
    share = ENGINE_SHARE_PERCENT[naming]
    room = format_size(usable)
    if share < 100:
        room = f"the {room} that {_PREALLOCATING} use of {format_size(budget)} ({share} %)"
    if needed <= usable:
        return f"fits in {room}"
    return (f"does not fit, {format_size(needed - usable)} more than {room}; pick "
            f"{_SMALLER[naming]}")
