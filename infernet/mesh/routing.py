"""Choosing a node for a job and failing over before the first token.

Owns: the candidate list for a model (online nodes that announce it — with the pinned
weights hash and under the price cap when the request sets them — most free slots first,
then fewest recent failures, then lowest measured RTT, remaining ties broken at random so
load spreads), and
`dispatch`, which opens the job on the first candidate that accepts. A refusal, an
unreachable node or a missing ``accepted`` within `ACCEPT_TIMEOUT` moves on to the next
candidate. Used by nodes that relay jobs for models they do not serve.

Invariants: no job is sent to a node that has not announced the model in a verified
announcement; an unknown model is ``model_not_found``; a model whose nodes are all busy or
unreachable is ``no_capacity``.
"""

from __future__ import annotations

import logging
import random
from collections.abc import AsyncIterator, Container
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Final

from infernet.mesh.host import MeshHost
from infernet.mesh.jobs import JobCall, open_job
from infernet.mesh.peer_table import PeerEntry, PeerTable
from infernet.protocol.announce import ModelOffer
from infernet.protocol.errors import InfernetError, JobFailed, TransportError
from infernet.protocol.frames import JobRequest

__all__ = ["ACCEPT_TIMEOUT", "candidates", "dispatch"]

log = logging.getLogger("infernet.mesh.routing")

ACCEPT_TIMEOUT: Final = 10.0
_FAIL_OVER_CODES: Final = frozenset({"no_capacity", "model_not_found", "backend_unavailable"})


def _offer(entry: PeerEntry, model: str) -> ModelOffer | None:
    return next((m for m in entry.announcement.caps.models if m.name == model), None)


def _fits(entry: PeerEntry, model: str, weights_hash: str, max_price: float | None) -> bool:
    offer = _offer(entry, model)
    if offer is None:
        return False
    if weights_hash and offer.weights_hash != weights_hash:
        return False
    return max_price is None or offer.price_per_1k_output <= max_price


def _score(entry: PeerEntry, now: float) -> tuple[int, int, float]:
    # Most free slots first; then the fewest recent failures; then the nearest (measured
    # RTT; unmeasured last).
    rtt = entry.rtt_ms if entry.rtt_ms is not None else float("inf")
    return -entry.announcement.caps.slots_free, entry.failures(now), rtt


def candidates(
    table: PeerTable,
    model: str,
    now: float,
    exclude: Container[str] = (),
    *,
    weights_hash: str = "",
    max_price: float | None = None,
    pinned: str = "",
) -> list[PeerEntry]:
    """Online nodes serving ``model`` (minus ``exclude``d pubkeys), best first.

    ``weights_hash`` pins the exact weights; ``max_price`` caps the output price per 1000
    tokens; ``pinned`` allows only that node (a job sealed to its key). Ties are broken at
    random so load spreads.

    Raises:
        InfernetError: ``no_capacity`` when no node is online at all or every node serving
            the model is over the price cap; ``model_not_found`` when online nodes exist but
            none serves ``model`` (with those weights).
    """
    online = [e for e in table.online(now) if e.pubkey not in exclude]
    if not online:
        raise InfernetError("no node is online in the network right now", code="no_capacity")
    serving = [e for e in online if _fits(e, model, weights_hash, None)]
    if pinned:
        serving = [e for e in serving if e.pubkey == pinned]
        if not serving:
            raise InfernetError(f"node {pinned[:16]} is not online serving {model!r}",
                                code="no_capacity" if exclude else "model_not_found")
    if not serving:
        pinned = f" with weights {weights_hash}" if weights_hash else ""
        raise InfernetError(f"no online node serves model {model!r}{pinned}",
                            code="model_not_found")
    serving = [e for e in serving if not e.announcement.caps.draining]
    if not serving:
        raise InfernetError(f"every node serving {model!r} is shutting down",
                            code="no_capacity")
    affordable = [e for e in serving if _fits(e, model, weights_hash, max_price)]
    if not affordable:
        raise InfernetError(f"every node serving {model!r} charges more than {max_price}",
                            code="no_capacity")
    random.shuffle(affordable)  # the sort below is stable: equal nodes stay in random order
    affordable.sort(key=lambda e: _score(e, now))
    return affordable


@asynccontextmanager
async def dispatch(
    mesh: MeshHost,
    table: PeerTable,
    request: JobRequest,
    now: float,
    *,
    exclude: Container[str] = (),
    accept_timeout: float = ACCEPT_TIMEOUT,
    pinned: str = "",
) -> AsyncIterator[tuple[JobCall, PeerEntry]]:
    """Open ``request`` on the first candidate that accepts it; yield the call and the node.

    Raises:
        InfernetError: as `candidates`, or ``no_capacity`` when every candidate refused
            or was unreachable.
        JobFailed: a node rejected the request itself (``bad_request``).
    """
    last: InfernetError | None = None
    for entry in candidates(table, request.model, now, exclude,
                            weights_hash=request.weights_hash,
                            max_price=request.max_price_per_1k, pinned=pinned):
        stack = AsyncExitStack()
        try:
            call = await stack.enter_async_context(open_job(mesh, entry.peer_id, request))
            await call.accepted(accept_timeout)
        except (JobFailed, TransportError) as exc:
            await stack.aclose()
            if isinstance(exc, JobFailed) and exc.code not in _FAIL_OVER_CODES:
                raise
            log.info("job %s: node %s unavailable (%s: %s); trying next",
                     request.job_id, entry.pubkey[:12], exc.code, exc)
            if not (isinstance(exc, JobFailed) and exc.code == "no_capacity"):
                table.record_outcome(entry.pubkey, False, now)  # busy is not broken
            last = exc
            continue
        except BaseException:
            await stack.aclose()
            raise
        async with stack:
            yield call, entry
        return
    detail = f" (last: {last})" if last else ""
    raise InfernetError(f"every node serving {request.model!r} is busy or unreachable{detail}",
                        code="no_capacity")
