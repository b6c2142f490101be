"""Handing the node's receipts to its coordinator: the submitter task, and signed requests.

Owns: ``POST {coordinator_url}/api/v1/receipts`` for every receipt in ``pending/``
(``specs/receipts.md`` §7, ``specs/http-api.md`` "Node API"), signed with
``X-Infernet-Auth`` (`signed_request`, which the CLI's balance and payout calls use too);
filing the answer (countersigned or unwitnessed → ``submitted/``, a definitive refusal →
``rejected/``); exponential backoff with full jitter while the coordinator cannot take them;
and the node's last known balance at the coordinator, for ``infernet status``.

Receipts an earlier node key signed (before ``infernet keys rotate``) go out under the
current key, named in ``X-Infernet-Pubkey`` (``specs/auth.md`` §3.1); one that, by this
node's own chain and clock, no coordinator will take any more (its 24 h grace is spent, its
job completed after the rotation, or its key is not in the chain) is filed as rejected
without being sent.

Invariants: every call has a timeout; a receipt leaves ``pending/`` only on an answer that
settles it, or on this node's own finding that none ever will (logged once, as it moves);
a restart loses nothing (the task starts by rescanning ``pending/``); the current key signs
every request.
"""

from __future__ import annotations

import base64
import logging
import random
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Final
from urllib.parse import urlsplit

import httpx
import msgspec
import trio
from trio_typing import TaskStatus

from infernet.node.receipt_store import ReceiptQueue, ReceiptStatus
from infernet.protocol.auth import AUTH_HEADER, PUBKEY_HEADER, sign_request
from infernet.protocol.delegation import MAX_CLOCK_SKEW_S, DelegationError, check_rotation_grace
from infernet.protocol.errors import InfernetError
from infernet.protocol.keys import SecretKey
from infernet.protocol.receipt import (
    Receipt,
    decode_countersigned_receipt,
    decode_signed_receipt,
    receipt_id,
    verify_receipt,
)

__all__ = ["ReceiptSubmitter", "RetryLater", "SubmitSettings", "api_url", "signed_request"]

log = logging.getLogger("infernet.node.receipts")

REQUEST_TIMEOUT: Final = 10.0
# A refusal that will not change on a retry: the receipt is filed under rejected/.
DEFINITIVE: Final = frozenset({400, 403, 410, 413, 422})


@dataclass(frozen=True, slots=True)
class SubmitSettings:
    """Timing of the submitter (tests shorten it)."""

    timeout: float = REQUEST_TIMEOUT
    backoff_min: float = 1.0
    backoff_max: float = 300.0
    rescan_every: float = 60.0  # pick up receipts written by anything but this process
    balance_every: float = 300.0


def api_url(coordinator_url: str, path: str) -> tuple[str, str]:
    """(absolute URL, signed target) of an API path under ``coordinator_url``."""
    base = coordinator_url.rstrip("/")
    prefix = urlsplit(base).path.rstrip("/")
    return base + path, prefix + path


async def signed_request(client: httpx.AsyncClient, key: SecretKey, method: str,
                         coordinator_url: str, path: str, body: bytes = b"",
                         *, timeout: float = REQUEST_TIMEOUT,
                         extra_headers: Mapping[str, str] | None = None) -> httpx.Response:
    """Send one ``X-Infernet-Auth``-signed request to the coordinator. Cancel-safe.

    Raises:
        httpx.HTTPError: no answer (connection refused, timeout, ...).
    """
    url, target = api_url(coordinator_url, path)
    auth = sign_request(key, method=method, target=target, body=body,
                        nonce=secrets.token_bytes(16), timestamp=int(time.time()))
    headers = {**(extra_headers or {}), AUTH_HEADER: auth}
    if body:
        headers["Content-Type"] = "application/json"
    return await client.request(method, url, content=body, headers=headers, timeout=timeout)


class RetryLater(Exception):
    """Raised by a submission pass when the coordinator cannot take receipts now (down, 5xx,
    401 before it saw this node's announcement, ...): the receipts stay pending; back off."""


class ReceiptSubmitter:
    """Sends pending receipts to one coordinator until cancelled.

    ``retired`` maps the node keys rotated away under the current delegation (pubkey hex)
    to their ``rotated_at``; None when the chain could not be read, which leaves every
    judgement on an earlier key's receipt to the coordinator. ``clock`` is the time that
    judgement is made at (tests move it); requests are always signed at the real time.
    """

    def __init__(self, queue: ReceiptQueue, coordinator_url: str, key: SecretKey, *,
                 settings: SubmitSettings | None = None,
                 transport: httpx.AsyncBaseTransport | None = None,
                 retired: Mapping[str, int] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.queue = queue
        self.url = coordinator_url
        self.key = key
        self.settings = settings or SubmitSettings()
        self.retired = dict(retired) if retired is not None else None
        self._clock = clock
        self._transport = transport
        self.balance: dict[str, Decimal] | None = None  # per chain, as the coordinator said
        self.balance_at: float | None = None
        self._balance_due = 0.0
        self._backoff = 0.0

    async def serve(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Submit pending receipts until cancelled. Cancel-safe (a receipt whose answer was
        lost stays pending and is sent again; the coordinator answers a repeat the same)."""
        async with httpx.AsyncClient(transport=self._transport) as client:
            task_status.started()
            while True:
                try:
                    sent = await self.submit_pending(client)
                    await self._refresh_balance(client, force=sent > 0)
                    self._backoff = 0.0
                except RetryLater as exc:
                    self._backoff = min(max(self._backoff * 2, self.settings.backoff_min),
                                        self.settings.backoff_max)
                    delay = random.uniform(self._backoff / 2, self._backoff)  # equal jitter
                    log.info("receipts: %s; retrying in %.0f s", exc, delay)
                    await trio.sleep(delay)  # backoff timer, not a wait for a condition
                    continue
                with trio.move_on_after(self.settings.rescan_every):
                    await self.queue.wait_new()

    async def submit_pending(self, client: httpx.AsyncClient) -> int:
        """One pass over ``pending/``, oldest first; return how many were settled.

        Raises:
            RetryLater: the coordinator cannot take receipts now (the rest stay pending).
        """
        settled = 0
        waiting: list[str] = []
        for rid in await self.queue.pending_ids():
            envelope = await self.queue.read_pending(rid)
            if envelope is None:
                continue
            why = await self._submit(client, rid, envelope)
            if why is None:
                settled += 1
            else:
                waiting.append(why)
        if waiting:
            raise RetryLater(f"{len(waiting)} receipt(s) wait: {'; '.join(sorted(set(waiting)))}")
        return settled

    async def _submit(self, client: httpx.AsyncClient, rid: str, envelope: bytes) -> str | None:
        """Send one receipt; None when it was filed, else why it waits for the next pass.

        Raises:
            RetryLater: the coordinator cannot take receipts now.
        """
        try:
            receipt = verify_receipt(decode_signed_receipt(envelope)).receipt
        except InfernetError as exc:  # cannot happen for files this node wrote
            await self.queue.mark_rejected(rid, self._info(0, "bad_request", str(exc)))
            return None
        extra: dict[str, str] = {}
        if receipt.node_pubkey != self.key.public_key.hex():  # signed before a rotation
            refusal = self._old_key_refusal(receipt)
            if refusal:
                await self._reject(rid, receipt, 0, "bad_request", refusal)
                return None
            extra[PUBKEY_HEADER] = self.key.public_key.hex()
        body = msgspec.json.encode({"receipt": base64.b64encode(envelope).decode()})
        try:
            r = await signed_request(client, self.key, "POST", self.url, "/api/v1/receipts",
                                     body, timeout=self.settings.timeout, extra_headers=extra)
        except httpx.HTTPError as exc:
            raise RetryLater(f"coordinator {self.url} unreachable ({exc!r})") from None
        doc = _json(r)
        if r.status_code in (200, 201, 202):
            status, filed = self._accepted(rid, envelope, r.status_code, doc)
            await self.queue.mark_submitted(rid, filed, receipt, status, {
                "coordinator_url": self.url, "submitted_at": round(time.time(), 3),
                "http_status": r.status_code})
            log.info("job %s: receipt %s %s by the coordinator", receipt.job_id, rid[:12],
                     status)
            return None
        code, message = str(doc.get("error", "")), str(doc.get("error_message", r.text[:200]))
        if r.status_code == 409:  # the final frame and this upload raced: later, this one
            return "a job still running at the coordinator"
        if r.status_code == 401 and extra:  # our registration may be on its way; the others go
            return f"an earlier key's receipt the coordinator cannot link to us yet ({message})"
        if r.status_code in DEFINITIVE:
            await self._reject(rid, receipt, r.status_code, code, message)
            return None
        raise RetryLater(f"coordinator answered {r.status_code} {code}: {message}")

    def _old_key_refusal(self, receipt: Receipt) -> str:
        """Why no coordinator will take this receipt of an earlier key, by this node's own
        chain and clock; "" when one may (then the coordinator decides)."""
        if self.retired is None:
            return ""
        signer = receipt.node_pubkey
        rotated_at = self.retired.get(signer)
        if rotated_at is None:
            return (f"signed by node key {signer}, which is neither this node's key nor one it "
                    "rotated away under its current delegation: no coordinator can link it to "
                    "this node; not sent")
        try:
            # A minute's margin: near the end of the grace the coordinator's clock decides.
            check_rotation_grace(rotated_at, completed_at=receipt.completed_at,
                                 now=int(self._clock()) - MAX_CLOCK_SKEW_S)
        except DelegationError as exc:
            return (f"{exc} (node key {signer} was rotated away at {_utc(rotated_at)}); no "
                    "coordinator will pay it; not sent")
        return ""

    async def _reject(self, rid: str, receipt: Receipt, http_status: int, code: str,
                      message: str) -> None:
        """File a receipt under ``rejected/`` and say so, once (it leaves ``pending/``)."""
        await self.queue.mark_rejected(rid, self._info(http_status, code, message))
        by = f"the coordinator ({http_status} {code})" if http_status else "this node"
        log.warning("job %s: receipt %s rejected by %s: %s", receipt.job_id, rid[:12], by,
                    message)

    def _accepted(self, rid: str, envelope: bytes, status_code: int,
                  doc: dict[str, Any]) -> tuple[ReceiptStatus, bytes]:
        """(status, envelope to keep): the countersigned one when it checks out."""
        if status_code == 202 or doc.get("status") == "unwitnessed":
            return "unwitnessed", envelope
        try:
            countersigned = base64.b64decode(str(doc.get("receipt", "")), validate=True)
            cs = decode_countersigned_receipt(countersigned)
        except (ValueError, InfernetError) as exc:
            raise RetryLater(f"the coordinator's countersigned receipt does not decode: {exc}"
                         ) from None
        if receipt_id(cs.body) != rid:
            raise RetryLater("the coordinator answered with another receipt")
        return "countersigned", countersigned

    def _info(self, http_status: int, code: str, message: str) -> dict[str, Any]:
        return {"coordinator_url": self.url, "http_status": http_status, "code": code,
                "message": message, "rejected_at": round(time.time(), 3)}

    async def _refresh_balance(self, client: httpx.AsyncClient, *, force: bool) -> None:
        """Ask for the node's balance after a submission, and now and then."""
        now = trio.current_time()
        if not force and now < self._balance_due:
            return
        self._balance_due = now + self.settings.balance_every
        path = f"/api/v1/nodes/{self.key.public_key.hex()}/balance"
        try:
            r = await signed_request(client, self.key, "GET", self.url, path,
                                     timeout=self.settings.timeout)
        except httpx.HTTPError:
            return  # the next pass asks again; receipts matter, the balance is a nicety
        balances = _json(r).get("balances") if r.status_code == 200 else None
        if isinstance(balances, dict):
            try:
                self.balance = {str(k): Decimal(str(v)) for k, v in balances.items()}
            except InvalidOperation:
                return
            self.balance_at = time.time()


def _utc(unix: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(unix))


def _json(r: httpx.Response) -> dict[str, Any]:
    try:
        doc = r.json()
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}

