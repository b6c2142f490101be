"""Per-token rate limits: a sliding window per minute and per hour over job submissions.

Owns: the limit arithmetic and the ``X-RateLimit-*`` / ``Retry-After`` values
(``specs/http-api.md`` §"Rate limits"). Pure: time is an argument (Unix seconds).

What counts: each request that submits a job (``POST /v1/chat/completions``,
``POST /api/v1/jobs``) once it passed validation. Every job is a row in the store with its
``created_at``, so the store's jobs table *is* the persisted sliding-window log: after a
restart `RateLimiter.seed` rebuilds the last hour from it and limits carry over.

Header values: the window that would refuse first is reported (the minute window unless
the hour window has fewer requests left). ``Reset`` is the Unix time at which that window
is empty again; ``Retry-After`` (only on 429) is the whole seconds until one request fits.

Invariant: memory per token is bounded by its hourly limit (older hits are dropped).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

__all__ = ["DEFAULT_RPH", "DEFAULT_RPM", "Decision", "Limits", "RateLimiter"]

DEFAULT_RPM: Final = 60
DEFAULT_RPH: Final = 1000
MINUTE: Final = 60.0
HOUR: Final = 3600.0


@dataclass(frozen=True, slots=True)
class Limits:
    """A token's limits: requests per minute and per hour."""

    per_minute: int = DEFAULT_RPM
    per_hour: int = DEFAULT_RPH


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of one check, with what the headers report."""

    allowed: bool
    limit: int
    remaining: int
    reset: int
    retry_after: int

    def headers(self) -> dict[str, str]:
        """``X-RateLimit-*`` (and ``Retry-After`` when refused)."""
        out = {"X-RateLimit-Limit": str(self.limit),
               "X-RateLimit-Remaining": str(self.remaining),
               "X-RateLimit-Reset": str(self.reset)}
        if not self.allowed:
            out["Retry-After"] = str(self.retry_after)
        return out


class RateLimiter:
    """Sliding-window counters for every token seen in the last hour."""

    def __init__(self) -> None:
        self._hits: dict[str, deque[float]] = {}

    def seed(self, hits: Iterable[tuple[str, float]]) -> None:
        """Load past hits (token id, Unix time), oldest first, e.g. from the jobs table."""
        for token_id, at in hits:
            self._hits.setdefault(token_id, deque()).append(at)

    def peek(self, token_id: str, limits: Limits, now: float) -> Decision:
        """What a request now would get, without counting it."""
        return self._decide(self._window(token_id, limits, now), limits, now)

    def hit(self, token_id: str, limits: Limits, now: float) -> Decision:
        """Count one request if it fits; the decision reports what is left after it."""
        hits = self._window(token_id, limits, now)
        before = self._decide(hits, limits, now)
        if not before.allowed:
            return before
        hits.append(now)
        after = self._decide(hits, limits, now)
        return Decision(True, after.limit, after.remaining, after.reset, 0)

    def forget_idle(self, now: float) -> None:
        """Drop tokens with no hit in the last hour (bounds memory across many tokens)."""
        for token_id in [t for t, h in self._hits.items() if not h or h[-1] <= now - HOUR]:
            del self._hits[token_id]

    def _window(self, token_id: str, limits: Limits, now: float) -> deque[float]:
        hits = self._hits.setdefault(token_id, deque())
        while hits and hits[0] <= now - HOUR:
            hits.popleft()
        while len(hits) > max(limits.per_hour, limits.per_minute, 1):
            hits.popleft()  # a lowered limit: older hits can no longer matter
        return hits

    @staticmethod
    def _decide(hits: deque[float], limits: Limits, now: float) -> Decision:
        """Whether one more request fits now; the binding window's header values."""
        in_minute = _count_after(hits, now - MINUTE)
        left_m = limits.per_minute - in_minute
        left_h = limits.per_hour - len(hits)
        retry = 0
        for left, limit, span in ((left_m, limits.per_minute, MINUTE),
                                  (left_h, limits.per_hour, HOUR)):
            if left <= 0:
                # One more fits once the hit that fills the window has aged out of it.
                filling = hits[len(hits) - limit] if 0 < limit <= len(hits) else now
                retry = max(retry, math.ceil(filling + span - now), 1)
        if left_h < left_m:
            limit, left, span, count = limits.per_hour, left_h, HOUR, len(hits)
        else:
            limit, left, span, count = limits.per_minute, left_m, MINUTE, in_minute
        reset = math.ceil(hits[-1] + span) if count else math.ceil(now)
        return Decision(left_m > 0 and left_h > 0, limit, max(left, 0), reset, retry)


def _count_after(hits: deque[float], since: float) -> int:
    """How many hits are newer than ``since`` (hits are in time order)."""
    n = 0
    for at in reversed(hits):
        if at <= since:
            break
        n += 1
    return n
