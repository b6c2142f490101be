"""``infernet payout set|list``, ``infernet payout [--auto]`` and ``infernet payments``.

Owns: payout addresses in the node config (``payout_addresses``: coin, network, address;
validated by ``infernet.protocol.pricing.payout_network`` and
``infernet.protocol.address.check_address``), claiming the balance the coordinator holds
for this node (``GET /api/v1/nodes/:id/balance``, ``POST /api/v1/nodes/:id/payouts``, both
signed with the node key; ``specs/http-api.md`` "Node API"), and the earnings summary built
from the coordinator's figures and the node's own receipt store
(``infernet.node.receipt_store``).

Settlement is in USDC on a chain (``pricing.CHAINS``); each chain with a balance is paid to
the USDC address set for that network (else any address set for it) when the balance
reaches the chain's minimum.

Exit codes: 0 ok; 1 failure (coordinator unreachable or refusing; ``payout`` without
``--auto`` when nothing could be paid); 2 bad input (unknown coin or network, malformed
address: one line, nothing written).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Final

import httpx
import msgspec
import trio

from infernet.node.config import (
    NodeConfig,
    PayoutAddress,
    load_config,
    load_node_key,
    save_config,
)
from infernet.node.receipt_store import ReceiptStore, StoredReceipt
from infernet.node.receipt_submit import signed_request
from infernet.protocol.address import check_address
from infernet.protocol.errors import InfernetError
from infernet.protocol.keys import SecretKey
from infernet.protocol.pricing import CHAINS, payout_amount, payout_minimum, payout_network

__all__ = ["add_payout_commands"]

TIMEOUT: Final = 10.0
DAY: Final = 86_400
RECENT_SHOWN: Final = 20


def add_payout_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``payout`` (with ``set`` and ``list``) and ``payments``."""
    payout = sub.add_parser("payout", help="claim earnings, or set where they are paid")
    payout.add_argument("--chain", help="claim only this chain (base, ethereum, polygon, "
                        "solana)")
    payout.add_argument("--coin", help="claim only chains this coin's address is set for")
    payout.add_argument("--auto", action="store_true", help="for cron: pay every chain at "
                        "or above its minimum, one line per chain, exit 0 when below")
    payout.add_argument("--set-address", metavar="ADDR", help="same as `payout set --coin "
                        "USDC --network CHAIN --address ADDR` (CHAIN from --chain, else base)")
    payout.add_argument("--json", action="store_true", help="print the outcome as JSON")
    payout.set_defaults(func=_cmd_payout)
    actions = payout.add_subparsers(dest="action", metavar="ACTION")
    set_ = actions.add_parser("set", help="set the payout address for a coin")
    set_.add_argument("words", nargs="*", metavar="COIN ADDRESS",
                      help="the coin and address, or use --coin and --address")
    set_.add_argument("--coin", help="BTC, ETH, SOL, POL, USDC, USDT, BNB, XRP, DOGE")
    set_.add_argument("--address", help="the wallet address on that network")
    set_.add_argument("--network", "--chain", dest="network",
                      help="network (default: the coin's first, e.g. base for USDC)")
    set_.add_argument("--json", action="store_true", help="print the stored entry as JSON")
    set_.set_defaults(func=_cmd_set)
    list_ = actions.add_parser("list", help="show the payout addresses")
    list_.add_argument("--json", action="store_true", help="print them as JSON")
    list_.set_defaults(func=_cmd_list)
    payments = sub.add_parser("payments", help="earnings summary and recent jobs")
    payments.add_argument("--json", action="store_true", help="print the summary as JSON")
    payments.set_defaults(func=_cmd_payments)


# -- payout set / list ------------------------------------------------------------------------

def _bad(message: str) -> InfernetError:
    return InfernetError(message, code="bad_request")


def _cmd_set(args: argparse.Namespace, home: Path) -> int:
    words = list(args.words)
    coin = args.coin or (words.pop(0) if words else None)
    address = args.address or (words.pop(0) if words else None)
    if words:
        raise _bad(f"unexpected argument {words[0]!r}; use `infernet payout set --coin COIN "
                   "--address ADDR [--network NET]`")
    if not coin or not address:
        raise _bad("both a coin and an address are needed: `infernet payout set --coin USDC "
                   "--address 0x… [--network base]`")
    return _store_address(home, coin, args.network, address, args.json)


def _store_address(home: Path, coin: str, network: str | None, address: str,
                   as_json: bool) -> int:
    known_coin, net = payout_network(coin, network)
    entry = PayoutAddress(coin=known_coin, network=net, address=check_address(net, address))
    config = load_config(home, env={})  # the file as it is: a broken one is reported
    kept = tuple(a for a in config.payout_addresses
                 if (a.coin, a.network) != (entry.coin, entry.network))
    path = save_config(home, msgspec.structs.replace(config, payout_addresses=(*kept, entry)))
    if as_json:
        print(json.dumps({**msgspec.to_builtins(entry), "file": str(path)}))
    else:
        print(f"Payout address for {entry.coin} on {entry.network}: {entry.address}  ({path})")
        if entry.network not in CHAINS:
            print(f"note: earnings settle in USDC on {', '.join(CHAINS)}; an address on "
                  f"{entry.network} is kept for when the network pays there")
    return 0


def _cmd_list(args: argparse.Namespace, home: Path) -> int:
    entries = load_config(home).payout_addresses
    rows = [{**msgspec.to_builtins(a), "pays": a.network in CHAINS} for a in entries]
    if args.json:
        print(json.dumps({"payout_addresses": rows}))
        return 0
    if not rows:
        print("No payout address set; add one with `infernet payout set --coin USDC "
              "--network base --address 0x…`.")
        return 0
    for a in entries:
        note = "" if a.network in CHAINS else "  (not a settlement chain yet)"
        print(f"{a.coin:<5} {a.network:<9} {a.address}{note}")
    return 0


# -- payout (claim) ---------------------------------------------------------------------------

@dataclass
class _Link:
    """The signed conversation with the coordinator for one command."""

    url: str
    key: SecretKey

    @property
    def node_id(self) -> str:
        return self.key.public_key.hex()

    async def call(self, method: str, path: str, body: dict[str, Any] | None = None
                   ) -> tuple[int, dict[str, Any]]:
        """(status, JSON body). Raises InfernetError when the coordinator does not answer."""
        raw = msgspec.json.encode(body) if body is not None else b""
        try:
            async with httpx.AsyncClient() as client:
                r = await signed_request(client, self.key, method, self.url, path, raw,
                                         timeout=TIMEOUT)
        except httpx.HTTPError as exc:
            raise InfernetError(f"the coordinator at {self.url} is unreachable ({exc!r}); "
                                "check coordinator_url and that it runs",
                                code="node_disconnected") from None
        try:
            doc = r.json()
        except ValueError:
            doc = {}
        return r.status_code, doc if isinstance(doc, dict) else {}

    async def balance(self) -> dict[str, Any]:
        status, doc = await self.call("GET", f"/api/v1/nodes/{self.node_id}/balance")
        if status == 401:
            raise InfernetError("the coordinator does not know this node yet (it learns a "
                                "node's key from its announcements): start the node with "
                                "this coordinator_url and try again", code="unauthorized")
        if status != 200:
            raise InfernetError(f"the coordinator answered {status}: "
                                f"{doc.get('error_message', doc)}")
        return doc


NO_COORDINATOR: Final = ("no coordinator configured: earnings are held by a coordinator; "
                         "set it with `infernet config set coordinator_url http://HOST:8080`")


def _link(home: Path, config: NodeConfig) -> _Link:
    return _Link(config.coordinator_url, load_node_key(home))


@dataclass
class _ChainOutcome:
    chain: str
    balance: Decimal
    minimum: Decimal
    status: str  # paid | below_minimum | no_address | failed
    address: str | None = None
    amount: str | None = None
    payout_id: str | None = None
    reference: str | None = None
    message: str = ""

    def doc(self) -> dict[str, Any]:
        return {"chain": self.chain, "balance": _text(self.balance),
                "minimum": _text(self.minimum), "status": self.status,
                "address": self.address, "amount": self.amount, "payout_id": self.payout_id,
                "reference": self.reference, "message": self.message}


def _address_for(config: NodeConfig, chain: str, coin: str | None) -> PayoutAddress | None:
    on_chain = [a for a in config.payout_addresses if a.network == chain
                and (coin is None or a.coin == coin)]
    usdc = [a for a in on_chain if a.coin == "USDC"]
    best = usdc or on_chain
    return best[0] if best else None


async def _claim(link: _Link, config: NodeConfig, chain: str, balance: Decimal,
                 coin: str | None) -> _ChainOutcome:
    minimum = payout_minimum(chain)
    out = _ChainOutcome(chain, balance, minimum, "below_minimum")
    target = _address_for(config, chain, coin)
    out.address = target.address if target else None
    if payout_amount(balance, chain) is None:
        out.message = (f"{_text(balance)} USDC is below the {_text(minimum)} USDC minimum on "
                       f"{chain}; nothing sent")
        return out
    if target is None:
        out.status = "no_address"
        out.message = (f"{_text(balance)} USDC waiting on {chain}, but no payout address is "
                       f"set for it: `infernet payout set --coin USDC --network {chain} "
                       "--address …`")
        return out
    status, doc = await link.call("POST", f"/api/v1/nodes/{link.node_id}/payouts",
                                  {"chain": chain, "address": target.address})
    if status != 201:
        out.status = "failed"
        out.message = f"the coordinator refused ({status}): {doc.get('error_message', doc)}"
        return out
    out.status, out.amount = "paid", str(doc.get("amount"))
    out.payout_id, out.reference = str(doc.get("id")), str(doc.get("reference"))
    out.message = (f"paid {out.amount} USDC to {target.address} on {chain} "
                   f"(reference {out.reference})")
    return out


def _chains_wanted(args: argparse.Namespace) -> tuple[tuple[str, ...], str | None]:
    coin = None
    chains: tuple[str, ...] = CHAINS
    if args.coin:
        coin, _ = payout_network(args.coin)
    if args.chain:
        chain = args.chain.strip().lower()
        if chain not in CHAINS:
            raise _bad(f"unknown chain {args.chain!r}; earnings settle on {', '.join(CHAINS)}")
        chains = (chain,)
    return chains, coin


def _cmd_payout(args: argparse.Namespace, home: Path) -> int:
    if args.action is None and args.set_address:
        return _store_address(home, "USDC", args.chain or None, args.set_address, args.json)
    chains, coin = _chains_wanted(args)
    config = load_config(home)
    if not config.coordinator_url:
        print(f"error: {NO_COORDINATOR}", file=sys.stderr)
        return 1
    link = _link(home, config)

    async def run() -> list[_ChainOutcome]:
        doc = await link.balance()
        balances = _balances(doc)
        return [await _claim(link, config, chain, balances.get(chain, Decimal(0)), coin)
                for chain in chains if chain in balances or args.chain]

    outcomes = trio.run(run)
    paid = [o for o in outcomes if o.status == "paid"]
    failed = [o for o in outcomes if o.status == "failed"]
    if args.json:
        print(json.dumps({"node_id": link.node_id, "coordinator_url": link.url,
                          "currency": "USDC", "paid": len(paid),
                          "chains": [o.doc() for o in outcomes]}))
    else:
        _render_payout(outcomes, auto=args.auto)
    if failed:
        return 1
    return 0 if paid or args.auto else 1


def _render_payout(outcomes: list[_ChainOutcome], *, auto: bool) -> None:
    if not outcomes:
        line = "nothing to claim: the coordinator holds no balance for this node"
        print(f"[{_now()}] {line}" if auto else line[0].upper() + line[1:] + ".")
        return
    for o in outcomes:
        if auto:
            print(f"[{_now()}] {o.chain}: {o.message}")
        else:
            print(f"{o.chain}: unclaimed {_text(o.balance)} USDC (minimum "
                  f"{_text(o.minimum)})")
            print(f"  {o.message}")


# -- payments ---------------------------------------------------------------------------------

def _balances(doc: dict[str, Any]) -> dict[str, Decimal]:
    raw = doc.get("balances") or {}
    try:
        return {str(k): Decimal(str(v)) for k, v in raw.items()}
    except (InvalidOperation, AttributeError):
        raise InfernetError("the coordinator sent a malformed balance") from None


def _remote(home: Path, config: NodeConfig) -> dict[str, Any]:
    """The coordinator's figures, or why there are none."""
    if not config.coordinator_url:
        return {"reachable": False, "error": NO_COORDINATOR}
    try:
        doc = trio.run(_link(home, config).balance)
    except InfernetError as exc:
        return {"reachable": False, "error": str(exc)}
    unclaimed = sum(_balances(doc).values(), Decimal(0))
    paid = sum((Decimal(str(p.get("amount", "0"))) for p in doc.get("payouts", [])
                if p.get("status") == "settled"), Decimal(0))
    return {"reachable": True, "unclaimed": _text(unclaimed), "paid_lifetime": _text(paid),
            "balances": {k: _text(v) for k, v in sorted(_balances(doc).items())}}


def _job_doc(r: StoredReceipt) -> dict[str, Any]:
    rc = r.receipt
    return {"job_id": rc.job_id, "receipt_id": r.receipt_id, "model": rc.model,
            "input_tokens": rc.input_tokens, "output_tokens": rc.output_tokens,
            "tokens": rc.input_tokens + rc.output_tokens, "value": _text(rc.value),
            "node_amount": _text(r.node_amount), "chain": rc.chain,
            "completed_at": rc.completed_at, "status": r.status}


def _cmd_payments(args: argparse.Namespace, home: Path) -> int:
    config = load_config(home)
    remote = _remote(home, config)
    store = ReceiptStore(home)
    now = time.time()
    recent = sorted((r for r in store.scan(since=now - 2 * DAY)
                     if r.receipt.completed_at >= now - DAY),
                    key=lambda r: r.receipt.completed_at, reverse=True)
    midnight = time.mktime((*time.localtime(now)[:3], 0, 0, 0, 0, 0, -1))
    today = [r for r in recent if r.receipt.completed_at >= midnight]
    stats = store.statistics()
    by_status: dict[str, Decimal] = {}
    for r in today:
        by_status[r.status] = by_status.get(r.status, Decimal(0)) + r.node_amount
    doc = {
        "currency": "USDC", "coordinator": remote,
        "local": {"countersigned_value": _text(sum(stats.earned.values(), Decimal(0))),
                  "receipts": {"pending": stats.pending, "countersigned": stats.countersigned,
                               "unwitnessed": stats.unwitnessed, "rejected": stats.rejected}},
        "recent_jobs": [_job_doc(r) for r in recent],
        "today": {"jobs": len(today),
                  "amounts": {k: _text(v) for k, v in sorted(by_status.items())}},
    }
    if args.json:
        print(json.dumps(doc))
    else:
        _render_payments(doc)
    return 0


def _render_payments(doc: dict[str, Any]) -> None:
    remote, local = doc["coordinator"], doc["local"]
    print("Earnings summary")
    if remote["reachable"]:
        print(f"Unclaimed balance:   {remote['unclaimed']} USDC")
        print(f"Paid out (lifetime): {remote['paid_lifetime']} USDC")
    else:
        print(f"Coordinator: unreachable ({remote['error']}); local figures only")
        print(f"Countersigned receipts held here: {local['countersigned_value']} USDC")
    jobs = doc["recent_jobs"]
    print(f"\nRecent jobs (last 24h): {len(jobs)}")
    for j in jobs[:RECENT_SHOWN]:
        stamp = time.strftime("%Y-%m-%d %H:%M", time.localtime(j["completed_at"]))
        print(f"  {j['job_id'][:24]:<24} {j['model'][:20]:<20} {j['tokens']:>6} tokens  "
              f"{j['node_amount']} USDC  {stamp}  {j['status']}")
    if len(jobs) > RECENT_SHOWN:
        print(f"  … and {len(jobs) - RECENT_SHOWN} more (`infernet payments --json`)")
    today = doc["today"]
    amounts = ", ".join(f"{v} USDC {k}" for k, v in today["amounts"].items()) or "0 USDC"
    print(f"\nTotal today: {today['jobs']} jobs, {amounts}")
    r = local["receipts"]
    print(f"Receipts: {r['pending']} pending, {r['countersigned']} countersigned, "
          f"{r['unwitnessed']} unwitnessed (not paid), {r['rejected']} rejected")


def _text(amount: Decimal) -> str:
    return format(amount.normalize(), "f") if amount else "0"


def _now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S")

