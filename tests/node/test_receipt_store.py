"""The durable receipt queue: atomic 0600 files, the bound, the flush at stop, restart rescan."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import trio

from infernet.node.jobs import JobExecutor
from infernet.node.receipt_store import ReceiptQueue, ReceiptStore
from infernet.protocol.frames import Frame, JobRequest, Message
from infernet.protocol.keys import SecretKey
from infernet.protocol.pricing import job_value, rates_for_model
from infernet.protocol.receipt import (
    Receipt,
    SignedReceipt,
    decode_signed_receipt,
    encode_receipt,
    receipt_id,
    sign_receipt,
    verify_receipt,
)
from tests.node.test_jobs import FakeEngine

KEY = SecretKey.generate().even_y()


def signed(n: int, model: str = "gemma3-270m", key: SecretKey = KEY) -> SignedReceipt:
    value = job_value(7, n, rates_for_model(model))
    return sign_receipt(Receipt(job_id=f"job_{n}", node_pubkey=key.public_key.hex(),
                                model=model, input_tokens=7, output_tokens=n,
                                completed_at=1_800_000_000 + n, value=value, chain="base"), key)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def run_queue(queue: ReceiptQueue, receipts: list[SignedReceipt]) -> None:
    """Start the writer, queue ``receipts``, stop it at once: the flush writes them."""
    async with trio.open_nursery() as nursery:
        await nursery.start(queue.serve)
        for r in receipts:
            queue.add_nowait(r)
        nursery.cancel_scope.cancel()


async def test_every_receipt_the_executor_signs_lands_in_pending(tmp_path: Path) -> None:
    queue = ReceiptQueue(ReceiptStore(tmp_path))
    executor = JobExecutor(FakeEngine(), {"m"}, 2, KEY.public_key.hex(), key=KEY,
                           on_receipt=queue.add_nowait)
    frames: list[Frame] = []

    async def send(frame: Frame) -> None:
        frames.append(frame)

    async with trio.open_nursery() as nursery:
        await nursery.start(queue.serve)
        await executor.run(JobRequest(job_id="j1", model="m", messages=(
            Message(role="user", content="a b c"),)), "peer", send)
        nursery.cancel_scope.cancel()
    final = frames[-1]
    assert final.receipt is not None  # type: ignore[union-attr]
    rid = receipt_id(final.receipt.body)  # type: ignore[union-attr]
    path = tmp_path / "receipts" / "pending" / f"{rid}.cbor"
    assert decode_signed_receipt(path.read_bytes()) == final.receipt  # type: ignore[union-attr]
    assert mode(path) == 0o600
    for d in ("receipts", "receipts/pending", "receipts/submitted", "receipts/rejected"):
        assert mode(tmp_path / d) == 0o700
    assert queue.statistics().pending == 1


async def test_writes_are_atomic_and_leave_no_temporary_files(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = ReceiptStore(tmp_path)
    real_fsync = os.fsync

    def failing_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="No space"):
        store.write_pending([encode_receipt(signed(1))])
    assert os.listdir(store.pending) == []  # neither the receipt nor a half-written file
    monkeypatch.setattr(os, "fsync", real_fsync)
    # A temporary file a crash left behind is never taken for a receipt.
    (store.pending / f".{'ab' * 32}.cbor.123.tmp").write_bytes(b"half")
    assert store.write_pending([encode_receipt(signed(2))]) == 1
    assert store.ids(store.pending) == [receipt_id(signed(2).body)]


async def test_a_removed_pending_directory_is_made_again(tmp_path: Path) -> None:
    store = ReceiptStore(tmp_path)
    assert store.write_pending([encode_receipt(signed(1))]) == 1
    for path in store.pending.iterdir():
        path.unlink()
    store.pending.rmdir()
    assert store.write_pending([encode_receipt(signed(2))]) == 1
    assert store.ids(store.pending) == [receipt_id(signed(2).body)]
    assert mode(store.pending) == 0o700


async def test_given_ids_name_the_files(tmp_path: Path) -> None:
    store = ReceiptStore(tmp_path)
    envelopes = [encode_receipt(signed(n)) for n in (1, 2)]
    ids = [receipt_id(signed(n).body) for n in (1, 2)]
    assert store.write_pending(envelopes, ids) == 2
    assert sorted(store.ids(store.pending)) == sorted(ids)
    for rid, envelope in zip(ids, envelopes, strict=True):
        assert store.read_pending(rid) == envelope


async def test_a_full_store_drops_receipts_and_never_raises(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    queue = ReceiptQueue(ReceiptStore(tmp_path, max_pending=3))
    await run_queue(queue, [signed(n) for n in range(1, 6)])
    assert len(queue.store.ids(queue.store.pending)) == 3
    stats = queue.statistics()
    assert (stats.pending, stats.dropped) == (3, 2)
    assert "receipt not stored" in caplog.text and "holds 3 receipts" in caplog.text

    small = ReceiptQueue(ReceiptStore(tmp_path / "other"), capacity=2)
    for n in range(1, 5):  # nobody drains the queue: the third and fourth are dropped
        small.add_nowait(signed(n))
    assert small.statistics().dropped == 2


async def test_receipts_queued_at_stop_are_flushed_and_found_after_restart(
        tmp_path: Path) -> None:
    receipts = [signed(n) for n in range(1, 11)]
    await run_queue(ReceiptQueue(ReceiptStore(tmp_path)), receipts)

    again = ReceiptQueue(ReceiptStore(tmp_path))
    async with trio.open_nursery() as nursery:
        await nursery.start(again.serve)
        assert again.statistics().pending == 10
        with trio.fail_after(1):
            await again.wait_new()  # leftovers wake the submitter at once
        ids = await again.pending_ids()
        nursery.cancel_scope.cancel()
    assert sorted(ids) == sorted(receipt_id(r.body) for r in receipts)


async def test_moving_a_receipt_files_it_with_its_outcome(tmp_path: Path) -> None:
    queue = ReceiptQueue(ReceiptStore(tmp_path))
    one, two = signed(1), signed(2)
    await run_queue(queue, [one, two])
    store = queue.store
    r1, r2 = receipt_id(one.body), receipt_id(two.body)
    await queue.mark_submitted(r1, encode_receipt(one), verify_receipt(one).receipt, "unwitnessed",
                               {"coordinator_url": "http://c"})
    await queue.mark_rejected(r2, {"code": "bad_request", "message": "value is wrong"})
    assert store.ids(store.pending) == []
    assert store.submitted_status(r1) == "unwitnessed"
    rejected = store.load(r2, "rejected")
    assert rejected is not None and rejected.reason == "value is wrong"
    assert mode(store.rejected / f"{r2}.json") == 0o600
    stats = queue.statistics()
    assert (stats.pending, stats.unwitnessed, stats.rejected) == (0, 1, 1)
    assert sorted(s.status for s in store.scan()) == ["rejected", "unwitnessed"]
