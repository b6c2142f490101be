"""A bounded, clock-free memory of nonces already used: the replay guard of signed requests.

Owns: ``ReplayCache``, shared by the ``X-Infernet-Auth`` verifier (``specs/auth.md`` §4) and
the owner-command verifier (``specs/keys.md`` §6).

Invariants:

- Time is an argument (``now``, unix seconds); the cache never reads a clock.
- An entry is kept until ``now >= added_at + ttl``. When the cache is full it first drops
  expired entries, then entries whose ``stale_at`` has passed — the time after which the
  request they guard would be refused for its age anyway, so forgetting them is safe. If it
  is still full it refuses the new entry (``ReplayCacheFull``): it fails closed, never open.
- Memory is bounded by ``max_entries``.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Final

from infernet.protocol.errors import ErrorCode, InfernetError

__all__ = ["ReplayCache", "ReplayCacheFull", "ReplayStatistics"]


class ReplayCacheFull(InfernetError):
    """Raised when the nonce cache holds ``max_entries`` live nonces and cannot forget any.

    The request itself may be fine: answer 429 with ``Retry-After`` and let the client retry.
    """

    code: ErrorCode = "rate_limited"


@dataclass(frozen=True, slots=True)
class ReplayStatistics:
    """A snapshot of a ``ReplayCache``."""

    entries: int
    max_entries: int
    refused: int


class ReplayCache:
    """Remembers keys (e.g. ``pubkey:nonce``) for ``ttl`` seconds, at most ``max_entries``."""

    def __init__(self, *, ttl: float, max_entries: int) -> None:
        """Create an empty cache.

        Raises:
            InfernetError: ``ttl`` or ``max_entries`` is not positive (a configuration bug).
        """
        if ttl <= 0 or max_entries < 1:
            raise InfernetError("ttl and max_entries must be positive", code="internal_error")
        self._ttl: Final = ttl
        self._max: Final = max_entries
        # key -> (expires_at, stale_at); insertion order is roughly time order.
        self._entries: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._refused = 0

    def _prune(self, now: float, *, stale_too: bool) -> None:
        while self._entries:
            expires_at, stale_at = next(iter(self._entries.values()))
            if now >= expires_at or (stale_too and now > stale_at):
                self._entries.popitem(last=False)
            else:
                return

    def seen(self, key: str, now: float) -> bool:
        """Return True if ``key`` was added and has not expired at ``now``.

        Raises:
            Nothing.
        """
        self._prune(now, stale_too=False)
        entry = self._entries.get(key)
        return entry is not None and now < entry[0]

    def add(self, key: str, *, now: float, stale_at: float) -> None:
        """Remember ``key`` from ``now``; ``stale_at`` is when its request expires anyway.

        Raises:
            ReplayCacheFull: full of live, non-stale entries (fail closed).
        """
        self._prune(now, stale_too=False)
        if len(self._entries) >= self._max:
            self._prune(now, stale_too=True)
        if len(self._entries) >= self._max:
            self._refused += 1
            raise ReplayCacheFull("too many signed requests in flight; retry shortly")
        self._entries[key] = (now + self._ttl, stale_at)
        self._entries.move_to_end(key)

    def __len__(self) -> int:
        return len(self._entries)

    def statistics(self) -> ReplayStatistics:
        """Return a snapshot: live entries, the bound, and how many adds were refused."""
        return ReplayStatistics(
            entries=len(self._entries), max_entries=self._max, refused=self._refused
        )
