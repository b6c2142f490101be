"""The directory protocol over libp2p streams (`/infernet/directory/1.0.0`), both sides.

Owns: answering "who serves this model?" from the node's peer table plus its own
announcement, and asking a peer that question. A client that is not in the gossip mesh
uses it to learn the key of the node that will serve its job, so it can seal the job end to
end to that node even when a relay carries it (`specs/mesh.md` §6).

Invariants: every read has a timeout and a size bound; every stream is closed or reset;
the client verifies each announcement's id and signature itself and drops expired ones.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Final

import trio

from infernet.mesh.host import MeshHost
from infernet.mesh.peer_table import PeerTable
from infernet.mesh.routing import candidates
from infernet.mesh.streams import finish, read_until, write
from infernet.protocol.announce import Announcement, parse_announcement
from infernet.protocol.directory import (
    DIRECTORY_PROTOCOL,
    MAX_ENTRIES,
    DirectoryAnswer,
    DirectoryQuery,
    encode_message,
    message_decoder,
)
from infernet.protocol.errors import InfernetError, SignatureError, TransportError
from infernet.protocol.event import encode_event

__all__ = ["Directory", "ask_directory"]

log = logging.getLogger("infernet.mesh.directory")

TIMEOUT: Final = 10.0


class Directory:
    """Serves the directory protocol from a peer table (and the node's own announcement)."""

    def __init__(self, table: PeerTable, own: Callable[[], bytes | None],
                 own_models: Callable[[], set[str]]) -> None:
        self.table = table
        self.own = own  # the node's current signed announcement, or None (serves nothing)
        self.own_models = own_models

    def answer(self, query: DirectoryQuery, now: float) -> DirectoryAnswer:
        """The signed announcements of nodes serving the model: this node first, if it does."""
        events: list[bytes] = []
        if query.model in self.own_models():
            own = self.own()
            if own is not None:
                events.append(own)
        try:
            found = candidates(self.table, query.model, now, weights_hash=query.weights_hash)
        except InfernetError:  # nobody else serves it: the answer is what we have
            found = []
        events += [encode_event(e.announcement.event) for e in found]
        return DirectoryAnswer(events=events[:MAX_ENTRIES])

    async def handle(self, stream: Any) -> None:
        """Serve one query. Never raises: failures are logged and the stream reset."""
        peer = stream.muxed_conn.peer_id.to_base58()
        ok = False
        try:
            with trio.fail_after(TIMEOUT):
                decoder = message_decoder(DirectoryQuery)
                query = await read_until(stream, decoder.next_frame, decoder.receive_data,
                                         float("inf"), "directory query")
                await write(stream, encode_message(self.answer(query, trio.current_time())))
            ok = True
        except trio.TooSlowError:
            log.info("directory query from %s timed out", peer)
        except InfernetError as exc:
            log.warning("directory query from %s refused: %s", peer, exc)
        finally:
            await finish(stream, ok)


async def ask_directory(mesh: MeshHost, peer_id: str, model: str, *,
                        weights_hash: str = "", timeout: float = TIMEOUT) -> list[Announcement]:
    """Ask ``peer_id`` which nodes serve ``model``; return the verified announcements.

    Announcements that fail verification or have expired are dropped (and logged).

    Raises:
        TransportError: the peer is unreachable, went silent or broke the protocol.
    """
    stream = await mesh.new_stream(peer_id, DIRECTORY_PROTOCOL)
    ok = False
    try:
        with trio.fail_after(timeout):
            await write(stream, encode_message(DirectoryQuery(model=model,
                                                              weights_hash=weights_hash)))
            decoder = message_decoder(DirectoryAnswer)
            answer = await read_until(stream, decoder.next_frame, decoder.receive_data,
                                      float("inf"), "directory answer")
        ok = True
    except trio.TooSlowError:
        raise TransportError(f"no directory answer within {timeout:.0f}s",
                             code="timeout") from None
    except TransportError:
        raise
    except InfernetError as exc:
        raise TransportError(f"directory answer refused: {exc}") from None
    finally:
        await finish(stream, ok)
    now = int(time.time())
    found: list[Announcement] = []
    for raw in answer.events:
        try:
            found.append(parse_announcement(raw, now=now, sender_pubkey=None))
        except (InfernetError, SignatureError) as exc:
            log.warning("directory answer from %s: dropped an announcement: %s", peer_id, exc)
    return found
