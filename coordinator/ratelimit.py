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


class _Window:
    """One token's hits: all of the last hour, and the tail of it in the last minute."""

    __slots__ = ("hour", "minute")

    def __init__(self) -> None:
        self.hour: deque[float] = deque()
        self.minute: deque[float] = deque()

    def trim(self, now: float, keep: int) -> None:
        while self.hour and (self.hour[0] <= now - HOUR or len(self.hour) > keep):
            self.hour.popleft()
        while self.minute and (self.minute[0] <= now - MINUTE or len(self.minute) > keep):
            self.minute.popleft()

    def add(self, at: float) -> None:
        self.hour.append(at)
        self.minute.append(at)


class RateLimiter:
    """Sliding-window counters for every token seen in the last hour (O(1) per request)."""

    def __init__(self) -> None:
        self._windows: dict[str, _Window] = {}

    def seed(self, hits: Iterable[tuple[str, float]]) -> None:
        """Load past hits (token id, Unix time), oldest first, e.g. from the jobs table."""
        for token_id, at in hits:
            self._windows.setdefault(token_id, _Window()).add(at)

    def peek(self, token_id: str, limits: Limits, now: float) -> Decision:
        """What a request now would get, without counting it."""
        return self._decide(self._window(token_id, limits, now), limits, now)

    def hit(self, token_id: str, limits: Limits, now: float) -> Decision:
        """Count one request if it fits; the decision reports what is left after it."""
        window = self._window(token_id, limits, now)
        before = self._decide(window, limits, now)
        if not before.allowed:
            return before
        window.add(now)
        after = self._decide(window, limits, now)
        return Decision(True, after.limit, after.remaining, after.reset, 0)

    def forget_idle(self, now: float) -> None:
        """Drop tokens with no hit in the last hour (bounds memory across many tokens)."""
        idle = [t for t, w in self._windows.items() if not w.hour or w.hour[-1] <= now - HOUR]
        for token_id in idle:
            del self._windows[token_id]

    def _window(self, token_id: str, limits: Limits, now: float) -> _Window:
        window = self._windows.setdefault(token_id, _Window())
        # A lowered limit: hits older than the newest `limit` can no longer matter.
        window.trim(now, max(limits.per_hour, limits.per_minute, 1))
        return window

    @staticmethod
    def _decide(window: _Window, limits: Limits, now: float) -> Decision:
        """Whether one more request fits now; the binding window's header values."""
        left_m = limits.per_minute - len(window.minute)
        left_h = limits.per_hour - len(window.hour)
        retry = 0
        for left, limit, span, hits in ((left_m, limits.per_minute, MINUTE, window.minute),
                                        (left_h, limits.per_hour, HOUR, window.hour)):
            if left <= 0:
                # One more fits once the hit that fills the window has aged out of it.
                filling = hits[len(hits) - limit] if 0 < limit <= len(hits) else now
                retry = max(retry, math.ceil(filling + span - now), 1)
        if left_h < left_m:
            limit, left, span, newest = limits.per_hour, left_h, HOUR, window.hour
        else:
            limit, left, span, newest = limits.per_minute, left_m, MINUTE, window.minute
        reset = math.ceil(newest[-1] + span) if newest else math.ceil(now)
        return Decision(left_m > 0 and left_h > 0, limit, max(left, 0), reset, retry)
