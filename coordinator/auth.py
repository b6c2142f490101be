"""Bearer-token checks with a short cache, and each token's rate limits.

Owns: `TokenCache`, which answers "is this token live, and whose is it" from memory for
`TOKEN_TTL` seconds after the store last said so (a request's hot path then costs no disk
read and no thread hop), and `limits_for`, the limits a token gets.

Invariants (``specs/http-api.md`` §"Authentication"):
- Only live tokens are cached, keyed by their SHA-256 (never the secret itself); an unknown
  token always asks the store, so a token minted a moment ago works at once.
- A revoked token stops working within `TOKEN_TTL` seconds (revocation is done by the admin
  CLI, another process, through the database).
- The cache is bounded (`MAX_CACHED` tokens, oldest dropped first).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Final

import trio

from coordinator.ratelimit import Limits
from coordinator.store import Store, TokenRecord, hash_token
from coordinator.store_writer import AsyncStore

__all__ = ["MAX_CACHED", "TOKEN_TTL", "TokenCache", "limits_for"]

TOKEN_TTL: Final = 2.0
MAX_CACHED: Final = 10_000


def limits_for(token: TokenRecord, default: Limits) -> Limits:
    """The token's own limits where set, else ``default``."""
    return Limits(per_minute=token.rpm if token.rpm is not None else default.per_minute,
                  per_hour=token.rph if token.rph is not None else default.per_hour)


class TokenCache:
    """Checks bearer tokens against the store, remembering live ones briefly."""

    def __init__(self, store: AsyncStore, ttl: float = TOKEN_TTL) -> None:
        self._store = store
        self._ttl = ttl
        self._live: OrderedDict[str, tuple[TokenRecord, float]] = OrderedDict()

    async def check(self, token: str) -> TokenRecord | None:
        """The record of a live token, else None. Cancel-safe.

        Raises:
            sqlite3.Error: the store could not be read.
        """
        key = hash_token(token)
        now = trio.current_time()
        hit = self._live.get(key)
        if hit is not None and hit[1] > now:
            return hit[0]
        record = await self._store.read(Store.check_token, token)
        if record is None:
            self._live.pop(key, None)
            return None
        self._live[key] = (record, now + self._ttl)
        self._live.move_to_end(key)
        while len(self._live) > MAX_CACHED:
            self._live.popitem(last=False)
        return record
