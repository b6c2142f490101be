"""The ledger: what each node earned (countersigned receipts) and what it was paid.

Owns: a node's unclaimed balance per chain (the operator's 85 % of every countersigned
receipt, minus payouts not failed), payouts that respect each chain's minimum and round
down to 6 decimals (``specs/receipts.md`` §5, ``infernet.protocol.pricing``), and the
`Settlement` interface where a real chain plugs in. The default, `LedgerSettlement`, moves
no money: it records the payout in the ledger and returns a ledger reference (no chain is
reachable from here).

A node that rotated its key (``specs/keys.md`` §4) owns what its retired keys earned: the
routes pass its keys, retired ones first, and a balance is the sum over them. Money stays
attached to the key that earned it: a payout records the part it draws on each key (the
oldest keys' balances first), so a retired key that two chains name (a leaked key used to
fork one) is paid out once.

Invariants:
- Money is ``Decimal`` end to end; amounts are stored as canonical decimal text.
- A payout is recorded ``pending`` before settlement starts, so a concurrent request sees
  the reduced balance; one payout at a time per key (a payout holds the locks of every key
  it may draw on, taken in sorted order); a failed settlement gives the amount back (the
  row stays, ``failed``, as an audit trail).
"""

from __future__ import annotations

import secrets
import time
from collections import defaultdict
from collections.abc import Sequence
from contextlib import AsyncExitStack
from decimal import Decimal
from typing import Protocol

import trio

from coordinator.store import PayoutRecord, Store
from coordinator.store_writer import AsyncStore
from infernet.protocol.errors import InfernetError
from infernet.protocol.pricing import PricingError, payout_amount, payout_minimum

__all__ = ["Ledger", "LedgerSettlement", "PayoutRecord", "Settlement", "balances"]


class Settlement(Protocol):
    """Moves ``amount`` USDC to ``address`` on ``chain``; returns a reference (a tx hash).

    Raises ``InfernetError`` when the transfer did not happen.
    """

    async def settle(self, payout: PayoutRecord) -> str: ...


class LedgerSettlement:
    """The default settlement: the ledger entry is the payout (no chain is reachable)."""

    async def settle(self, payout: PayoutRecord) -> str:
        await trio.lowlevel.checkpoint()
        return f"ledger:{payout.id}"


def balances(earned: list[tuple[str, str, str]],
             paid: list[tuple[str, str, str]]) -> dict[str, dict[str, Decimal]]:
    """Unclaimed balance per key and chain from (key, chain, amount) of receipts and of
    live payout parts."""
    out: dict[str, dict[str, Decimal]] = defaultdict(lambda: defaultdict(Decimal))
    for key, chain, amount in earned:
        out[key][chain] += Decimal(amount)
    for key, chain, amount in paid:
        out[key][chain] -= Decimal(amount)
    return {key: dict(chains) for key, chains in out.items()}


def _total(by_key: dict[str, dict[str, Decimal]]) -> dict[str, Decimal]:
    out: dict[str, Decimal] = defaultdict(Decimal)
    for chains in by_key.values():
        for chain, amount in chains.items():
            out[chain] += amount
    return dict(out)


def _draw(amount: Decimal, keys: Sequence[str],
          by_key: dict[str, dict[str, Decimal]], chain: str) -> list[tuple[str, str]]:
    """Split ``amount`` over the keys' positive balances on ``chain``, in ``keys`` order."""
    parts: list[tuple[str, str]] = []
    left = amount
    for key in keys:
        take = min(left, max(by_key.get(key, {}).get(chain, Decimal(0)), Decimal(0)))
        if take > 0:
            parts.append((key, _text(take)))
            left -= take
    return parts


def _text(amount: Decimal) -> str:
    return format(amount.normalize(), "f") if amount else "0"


class Ledger:
    """Balances and payouts over the store."""

    def __init__(self, store: AsyncStore, settlement: Settlement | None = None) -> None:
        self._store = store
        self._settlement = settlement or LedgerSettlement()
        self._locks: dict[str, trio.Lock] = defaultdict(trio.Lock)

    async def balances(self, keys: Sequence[str]) -> dict[str, Decimal]:
        """The unclaimed balance per chain of a node whose keys are ``keys``."""
        return _total(await self._by_key(keys))

    async def _by_key(self, keys: Sequence[str]) -> dict[str, dict[str, Decimal]]:
        earned, paid = await self._store.read(Store.ledger_entries, keys)
        return balances(earned, paid)

    async def payouts(self, keys: Sequence[str]) -> list[PayoutRecord]:
        """The payouts a node claimed under any of ``keys``, newest first."""
        return await self._store.read(Store.list_payouts, keys)

    async def pay_out(self, keys: Sequence[str], chain: str, address: str) -> PayoutRecord:
        """Pay the balance on ``chain`` of the node whose keys are ``keys`` (retired keys
        first, the claiming current key last) to ``address``.

        Raises:
            InfernetError: ``bad_request`` for an unknown chain, an empty address or a
                balance below the chain's minimum; the settlement's own error if the
                transfer failed (the amount stays in the balance).
        """
        if not address or len(address) > 128:
            raise InfernetError("a payout address is required", code="bad_request")
        claimer = keys[-1]
        async with AsyncExitStack() as held:
            for key in sorted(set(keys)):
                await held.enter_async_context(self._locks[key])
            by_key = await self._by_key(keys)
            balance = _total(by_key).get(chain, Decimal(0))
            try:
                amount = payout_amount(balance, chain)
                minimum = payout_minimum(chain)
            except PricingError as exc:
                raise InfernetError(str(exc), code="bad_request") from None
            if amount is None:
                raise InfernetError(
                    f"balance {_text(balance)} USDC on {chain} is below the payout minimum of"
                    f" {_text(minimum)}", code="bad_request")
            payout = PayoutRecord("pay_" + secrets.token_hex(8), claimer, chain, address,
                                  _text(amount), "pending", "", time.time())
            await self._store.write(self._store.sync.save_payout, payout,
                                    _draw(amount, keys, by_key, chain))
            try:
                reference = await self._settlement.settle(payout)
            except InfernetError:
                await self._store.write(self._store.sync.set_payout_status, payout.id,
                                        "failed", "")
                raise
            await self._store.write(self._store.sync.set_payout_status, payout.id, "settled",
                                    reference)
            return PayoutRecord(payout.id, claimer, chain, address, payout.amount,
                                "settled", reference, payout.created_at)
