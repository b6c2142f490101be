"""The ledger: what each node earned (countersigned receipts) and what it was paid.

Owns: a node's unclaimed balance per chain (the operator's 85 % of every countersigned
receipt, minus payouts not failed), payouts that respect each chain's minimum and round
down to 6 decimals (``specs/receipts.md`` §5, ``infernet.protocol.pricing``), and the
`Settlement` interface where a real chain plugs in. The default, `LedgerSettlement`, moves
no money: it records the payout in the ledger and returns a ledger reference (no chain is
reachable from here).

Invariants:
- Money is ``Decimal`` end to end; amounts are stored as canonical decimal text.
- A payout is recorded ``pending`` before settlement starts, so a concurrent request sees
  the reduced balance; one payout at a time per node; a failed settlement gives the amount
  back (the row stays, ``failed``, as an audit trail).
"""

from __future__ import annotations

import secrets
import time
from collections import defaultdict
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


def balances(earned: list[tuple[str, str]], paid: list[tuple[str, str]]) -> dict[str, Decimal]:
    """Unclaimed balance per chain from (chain, amount) of receipts and of live payouts."""
    out: dict[str, Decimal] = defaultdict(Decimal)
    for chain, amount in earned:
        out[chain] += Decimal(amount)
    for chain, amount in paid:
        out[chain] -= Decimal(amount)
    return dict(out)


def _text(amount: Decimal) -> str:
    return format(amount.normalize(), "f") if amount else "0"


class Ledger:
    """Balances and payouts over the store."""

    def __init__(self, store: AsyncStore, settlement: Settlement | None = None) -> None:
        self._store = store
        self._settlement = settlement or LedgerSettlement()
        self._locks: dict[str, trio.Lock] = defaultdict(trio.Lock)

    async def balances(self, node_pubkey: str) -> dict[str, Decimal]:
        """The node's unclaimed balance per chain."""
        earned, paid = await self._store.read(Store.ledger_entries, node_pubkey)
        return balances(earned, paid)

    async def payouts(self, node_pubkey: str) -> list[PayoutRecord]:
        """The node's payouts, newest first."""
        return await self._store.read(Store.list_payouts, node_pubkey)

    async def pay_out(self, node_pubkey: str, chain: str, address: str) -> PayoutRecord:
        """Pay the node's balance on ``chain`` to ``address``.

        Raises:
            InfernetError: ``bad_request`` for an unknown chain, an empty address or a
                balance below the chain's minimum; the settlement's own error if the
                transfer failed (the amount stays in the balance).
        """
        if not address or len(address) > 128:
            raise InfernetError("a payout address is required", code="bad_request")
        async with self._locks[node_pubkey]:
            balance = (await self.balances(node_pubkey)).get(chain, Decimal(0))
            try:
                amount = payout_amount(balance, chain)
                minimum = payout_minimum(chain)
            except PricingError as exc:
                raise InfernetError(str(exc), code="bad_request") from None
            if amount is None:
                raise InfernetError(
                    f"balance {_text(balance)} USDC on {chain} is below the payout minimum of"
                    f" {_text(minimum)}", code="bad_request")
            payout = PayoutRecord("pay_" + secrets.token_hex(8), node_pubkey, chain, address,
                                  _text(amount), "pending", "", time.time())
            await self._store.write(self._store.sync.save_payout, payout)
            try:
                reference = await self._settlement.settle(payout)
            except InfernetError:
                await self._store.write(self._store.sync.set_payout_status, payout.id,
                                        "failed", "")
                raise
            await self._store.write(self._store.sync.set_payout_status, payout.id, "settled",
                                    reference)
            return PayoutRecord(payout.id, node_pubkey, chain, address, payout.amount,
                                "settled", reference, payout.created_at)
