"""Tests for coordinator.store: migrations, tokens (hash only on disk), jobs, and AsyncStore."""

from __future__ import annotations

import hashlib
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trio.testing

from coordinator.store import MIGRATIONS, AsyncStore, JobRecord, Store, TokenRecord, hash_token


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "coordinator.sqlite"  # parent does not exist yet


@pytest.fixture
def store(db_path: Path) -> Iterator[Store]:
    s = Store(db_path)
    try:
        yield s
    finally:
        s.close()


def query(path: Path, sql: str, *args: object) -> list[tuple[object, ...]]:
    """Read the database through a separate connection, as another process would."""
    db = sqlite3.connect(path)
    try:
        return db.execute(sql, args).fetchall()
    finally:
        db.close()


def on_disk(path: Path) -> bytes:
    """Every byte of the database, its WAL and shared-memory files."""
    return b"".join(p.read_bytes() for p in sorted(path.parent.glob(path.name + "*")))


# --- schema -------------------------------------------------------------------------------


def test_open_creates_the_file_and_schema_in_wal_mode(store: Store, db_path: Path) -> None:
    assert db_path.is_file()
    assert query(db_path, "SELECT version FROM schema_version") == [(len(MIGRATIONS),)]
    tables = {row[0] for row in query(db_path, "SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"schema_version", "tokens", "jobs"} <= tables
    assert query(db_path, "PRAGMA journal_mode") == [("wal",)]


def test_migrations_are_idempotent(db_path: Path) -> None:
    first = Store(db_path)
    token, record = first.create_token("alice")
    first.create_job("job-1", record.id, "gemma3-270m")
    first.close()

    for _ in range(2):
        again = Store(db_path)
        try:
            assert again.check_token(token) == record  # data survived the reopen
            job = again.get_job("job-1")
            assert job is not None
            assert job.status == "pending"
        finally:
            again.close()

    assert query(db_path, "SELECT version FROM schema_version") == [(len(MIGRATIONS),)]


def test_two_stores_can_share_one_file(store: Store, db_path: Path) -> None:
    other = Store(db_path)
    try:
        token, record = store.create_token("shared")
        assert other.check_token(token) == record
    finally:
        other.close()


# --- tokens ---------------------------------------------------------------------------------


def test_hash_token_is_sha256_hex() -> None:
    assert hash_token("inf_abc") == hashlib.sha256(b"inf_abc").hexdigest()
    assert hash_token("inf_abc") != hash_token("inf_abd")


def test_create_token(store: Store) -> None:
    token, record = store.create_token("alice")
    assert token.startswith("inf_")
    assert len(token) > 40  # 32 random bytes, url-safe base64
    assert isinstance(record, TokenRecord)
    assert record.name == "alice"
    assert record.id.startswith("tok_")
    assert record.created_at > 0


def test_tokens_are_unique(store: Store) -> None:
    minted = [store.create_token("same name") for _ in range(20)]
    assert len({t for t, _ in minted}) == 20
    assert len({r.id for _, r in minted}) == 20


def test_check_token(store: Store) -> None:
    token, record = store.create_token("alice")
    other_token, other_record = store.create_token("bob")
    assert store.check_token(token) == record
    assert store.check_token(other_token) == other_record
    assert store.check_token(token + "x") is None
    assert store.check_token("") is None
    assert store.check_token(hash_token(token)) is None  # the stored hash is not a credential


def test_revoke_token(store: Store) -> None:
    token, record = store.create_token("alice")
    other_token, other_record = store.create_token("bob")

    assert store.revoke_token(record.id) is True
    assert store.check_token(token) is None
    assert store.check_token(other_token) == other_record  # only that one

    assert store.revoke_token(record.id) is False  # already revoked
    assert store.revoke_token("tok_missing") is False


def test_only_the_token_hash_is_stored(store: Store, db_path: Path) -> None:
    token, record = store.create_token("alice")
    assert query(db_path, "SELECT id, token_hash FROM tokens") == [(record.id, hash_token(token))]

    data = on_disk(db_path)
    assert hash_token(token).encode() in data  # we are reading the bytes that hold the row
    assert token.encode() not in data
    assert token.removeprefix("inf_").encode() not in data


def test_only_the_token_hash_is_stored_after_close(db_path: Path) -> None:
    store = Store(db_path)
    token, _ = store.create_token("alice")
    store.close()  # checkpoints the WAL into the main file

    data = on_disk(db_path)
    assert hash_token(token).encode() in data
    assert token.encode() not in data


# --- jobs -------------------------------------------------------------------------------------


def test_create_job_is_pending(store: Store) -> None:
    store.create_job("job-1", "tok_1", "gemma3-270m")
    assert store.get_job("job-1") == JobRecord(
        id="job-1", token_id="tok_1", model="gemma3-270m", status="pending",
        node_pubkey=None, prompt_tokens=None, completion_tokens=None, error_code=None,
    )


def test_job_lifecycle_to_completed(store: Store, db_path: Path) -> None:
    store.create_job("job-1", "tok_1", "gemma3-270m")
    store.start_job("job-1", "ab" * 32)
    started = store.get_job("job-1")
    assert started is not None
    assert (started.status, started.node_pubkey) == ("processing", "ab" * 32)

    store.finish_job("job-1", 12, 34)
    assert store.get_job("job-1") == JobRecord(
        id="job-1", token_id="tok_1", model="gemma3-270m", status="completed",
        node_pubkey="ab" * 32, prompt_tokens=12, completion_tokens=34, error_code=None,
    )
    [(created, updated)] = query(db_path, "SELECT created_at, updated_at FROM jobs")
    assert isinstance(created, float)
    assert isinstance(updated, float)
    assert updated >= created


def test_job_lifecycle_to_failed(store: Store, db_path: Path) -> None:
    store.create_job("job-2", "tok_1", "gemma3-270m")
    store.start_job("job-2", "cd" * 32)
    store.fail_job("job-2", "node_disconnected", "node went away")

    job = store.get_job("job-2")
    assert job is not None
    assert (job.status, job.error_code, job.node_pubkey) == (
        "failed", "node_disconnected", "cd" * 32
    )
    assert (job.prompt_tokens, job.completion_tokens) == (None, None)
    assert query(db_path, "SELECT error_message FROM jobs WHERE id = ?", "job-2") == [
        ("node went away",)
    ]


def test_a_job_can_fail_before_it_starts(store: Store) -> None:
    store.create_job("job-3", "tok_1", "m")
    store.fail_job("job-3", "no_capacity", "all busy")
    job = store.get_job("job-3")
    assert job is not None
    assert (job.status, job.error_code, job.node_pubkey) == ("failed", "no_capacity", None)


def test_updates_touch_only_their_job(store: Store) -> None:
    store.create_job("job-a", "tok_1", "m")
    store.create_job("job-b", "tok_1", "m")
    store.start_job("job-a", "ab" * 32)
    store.finish_job("job-a", 1, 2)
    other = store.get_job("job-b")
    assert other is not None
    assert (other.status, other.node_pubkey, other.prompt_tokens) == ("pending", None, None)


def test_get_unknown_job_is_none(store: Store) -> None:
    assert store.get_job("nope") is None


def test_duplicate_job_id_is_refused(store: Store) -> None:
    store.create_job("job-1", "tok_1", "m")
    with pytest.raises(sqlite3.IntegrityError):
        store.create_job("job-1", "tok_2", "m")


# --- AsyncStore --------------------------------------------------------------------------------


async def test_async_store_call_from_trio(store: Store) -> None:
    astore = AsyncStore(store)
    assert astore.sync is store
    token, record = await astore.call(store.create_token, "alice")
    assert await astore.call(store.check_token, token) == record
    await astore.call(store.create_job, "job-1", record.id, model="gemma3-270m")
    await astore.call(store.fail_job, "job-1", code="timeout", message="slow")
    job = await astore.call(store.get_job, "job-1")
    assert job is not None
    assert (job.model, job.status, job.error_code) == ("gemma3-270m", "failed", "timeout")


async def test_async_store_runs_calls_off_the_trio_thread(store: Store) -> None:
    astore = AsyncStore(store)
    worker = await astore.call(threading.get_ident)
    assert worker != threading.get_ident()


async def test_async_store_propagates_exceptions(store: Store) -> None:
    astore = AsyncStore(store)
    await astore.call(store.create_job, "job-1", "tok_1", "m")
    with pytest.raises(sqlite3.IntegrityError):
        await astore.call(store.create_job, "job-1", "tok_1", "m")


async def test_async_store_runs_one_call_at_a_time(store: Store) -> None:
    astore = AsyncStore(store)
    first_running = trio.Event()
    release = threading.Event()
    order: list[str] = []

    def first() -> None:
        trio.from_thread.run_sync(first_running.set)
        release.wait(timeout=30)  # a failed assertion below must not hang the test
        order.append("first")

    def second() -> None:
        order.append("second")

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(astore.call, first)
            await first_running.wait()
            nursery.start_soon(astore.call, second)
            await trio.testing.wait_all_tasks_blocked()
            assert order == []  # second waits for first's worker thread to finish
            release.set()
    finally:
        release.set()
    assert order == ["first", "second"]


async def test_async_store_many_concurrent_calls(store: Store) -> None:
    astore = AsyncStore(store)
    async with trio.open_nursery() as nursery:
        for i in range(25):
            nursery.start_soon(astore.call, store.create_job, f"job-{i}", "tok_1", "m")
    jobs = [await astore.call(store.get_job, f"job-{i}") for i in range(25)]
    assert all(j is not None and j.status == "pending" for j in jobs)
