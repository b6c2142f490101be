"""Shared timing for the CPU-bound protocol benchmarks (not a benchmark itself).

Cases run interleaved — A B C, A B C, ... — and each keeps its best round, so background
load on the machine hits every case alike and ratios within one run stay meaningful.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Case:
    """One thing to time: ``run(n)`` performs ``n`` operations."""

    name: str
    run: Callable[[int], object]


def rates(cases: Sequence[Case], *, ops: int, rounds: int) -> dict[str, float]:
    """Return the best operations/second of each case over ``rounds`` interleaved rounds."""
    best = {case.name: float("inf") for case in cases}
    for case in cases:  # warm-up: caches, lazy imports, first allocations
        case.run(max(1, ops // 10))
    for _ in range(rounds):
        for case in cases:
            start = time.perf_counter()
            case.run(ops)
            best[case.name] = min(best[case.name], time.perf_counter() - start)
    return {name: ops / seconds for name, seconds in best.items()}


def table(title: str, results: dict[str, float], baseline: str, unit: str = "ops/s") -> str:
    """Format ``results`` with each rate's ratio to ``baseline`` (same run)."""
    base = results[baseline]
    width = max(len(name) for name in results)
    lines = [title, f"  {'case':<{width}}  {unit:>14}  ratio vs {baseline}"]
    for name, rate in results.items():
        lines.append(f"  {name:<{width}}  {rate:>14,.0f}  {rate / base:6.3f}")
    return "\n".join(lines)
