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

from coordinator.store import (
    MIGRATIONS,
    AsyncStore,
    JobRecord,
    PeerRecord,
    Store,
    TokenRecord,
    hash_token,
)


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
    store.create_job("job-1", "tok_1", "gemma3-270m", created_at=1000.0)
    assert store.get_job("job-1") == JobRecord(
        id="job-1", token_id="tok_1", model="gemma3-270m", status="pending",
        node_pubkey=None, prompt_tokens=None, completion_tokens=None, error_code=None,
        created_at=1000.0, updated_at=1000.0,
    )


def test_job_lifecycle_to_completed(store: Store, db_path: Path) -> None:
    store.create_job("job-1", "tok_1", "gemma3-270m")
    store.start_job("job-1", "ab" * 32)
    started = store.get_job("job-1")
    assert started is not None
    assert (started.status, started.node_pubkey) == ("processing", "ab" * 32)

    store.finish_job("job-1", 12, 34)
    done = store.get_job("job-1")
    assert done is not None
    assert (done.status, done.node_pubkey, done.prompt_tokens, done.completion_tokens,
            done.error_code) == ("completed", "ab" * 32, 12, 34, None)
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


# --- schema version 2: results, limits, peers -------------------------------------------------


def test_a_version_1_database_is_migrated_in_place(db_path: Path) -> None:
    db_path.parent.mkdir(parents=True)
    old = sqlite3.connect(db_path, isolation_level=None)
    old.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    old.execute("INSERT INTO schema_version VALUES (1)")
    old.executescript(MIGRATIONS[0])
    old.execute("INSERT INTO jobs (id, token_id, model, status, created_at, updated_at)"
                " VALUES ('job-old', 'tok_1', 'm', 'completed', 1.0, 2.0)")
    old.close()

    store = Store(db_path)
    try:
        job = store.get_job("job-old")
        assert job is not None
        assert (job.status, job.source, job.attempts, job.result_text) == (
            "completed", "openai", 0, None)
    finally:
        store.close()
    assert query(db_path, "SELECT version FROM schema_version") == [(len(MIGRATIONS),)]


def test_token_limits(store: Store) -> None:
    token, record = store.create_token("limited", rpm=5, rph=50)
    assert (record.rpm, record.rph) == (5, 50)
    assert store.check_token(token) == record
    assert store.set_token_limits(record.id, rpm=None, rph=7) is True
    checked = store.check_token(token)
    assert checked is not None and (checked.rpm, checked.rph) == (None, 7)
    assert store.set_token_limits("tok_missing", rpm=1, rph=1) is False
    store.revoke_token(record.id)
    assert [(r.id, revoked) for r, revoked in store.list_tokens()] == [(record.id, True)]


def test_a_completed_job_keeps_its_result_and_forgets_its_request(store: Store) -> None:
    store.create_job("job-1", "tok_1", "m", source="jobs", request='{"r": 1}', deadline=99.0)
    store.start_job("job-1", "ab" * 32, weights_hash="sha256:w")
    store.finish_job("job-1", 3, 4, text="Paris.", finish_reason="stop", ttft_ms=12.5,
                     latency_ms=40.0, tokens_per_s=50.0)
    job = store.get_job("job-1")
    assert job is not None
    assert (job.result_text, job.finish_reason, job.ttft_ms, job.latency_ms, job.tokens_per_s,
            job.weights_hash, job.request, job.source, job.deadline) == (
        "Paris.", "stop", 12.5, 40.0, 50.0, "sha256:w", None, "jobs", 99.0)
    assert job.completed_at is not None and job.started_at is not None


def test_requeue_counts_attempts_and_clears_the_node(store: Store) -> None:
    store.create_job("job-1", "tok_1", "m")
    store.start_job("job-1", "ab" * 32)
    store.requeue_job("job-1")
    job = store.get_job("job-1")
    assert job is not None
    assert (job.status, job.node_pubkey, job.attempts) == ("pending", None, 1)
    assert [j.id for j in store.unfinished_jobs()] == ["job-1"]
    store.fail_job("job-1", "timeout", "slow", latency_ms=1.0)
    assert store.unfinished_jobs() == []


def test_list_jobs_filters_and_orders(store: Store) -> None:
    for i, status in enumerate(["completed", "failed", "completed"]):
        store.create_job(f"job-{i}", "tok_1", "m", created_at=100.0 + i)
        if status == "completed":
            store.finish_job(f"job-{i}", 1, 1)
        else:
            store.fail_job(f"job-{i}", "timeout", "slow")
    store.create_job("job-other", "tok_2", "m", created_at=500.0)
    assert [j.id for j in store.list_jobs("tok_1")] == ["job-2", "job-1", "job-0"]
    assert [j.id for j in store.list_jobs("tok_1", limit=1)] == ["job-2"]
    assert [j.id for j in store.list_jobs("tok_1", status="failed")] == ["job-1"]
    assert [j.id for j in store.list_jobs("tok_1", since=101.0)] == ["job-2", "job-1"]
    assert store.job_times_since(101.0) == [("tok_1", 101.0), ("tok_1", 102.0),
                                            ("tok_2", 500.0)]


def test_peers_keep_their_latest_announcement(store: Store) -> None:
    store.save_peer(PeerRecord("ab" * 32, "16Uiu2HA1", '{"id": 1}', 10.0))
    store.save_peer(PeerRecord("cd" * 32, "16Uiu2HA2", '{"id": 2}', 20.0))
    store.save_peer(PeerRecord("ab" * 32, "16Uiu2HA3", '{"id": 3}', 30.0))
    assert store.get_peer("ab" * 32) == PeerRecord("ab" * 32, "16Uiu2HA3", '{"id": 3}', 30.0)
    assert [p.pubkey for p in store.load_peers()] == ["ab" * 32, "cd" * 32]
    assert store.get_peer("ef" * 32) is None


# --- group commit ------------------------------------------------------------------------------


async def test_writes_are_batched_into_few_commits_and_applied_in_order(store: Store) -> None:
    astore = AsyncStore(store)
    async with trio.open_nursery() as nursery:
        await nursery.start(astore.serve)
        pending = [astore.write_nowait(store.create_job, f"job-{i}", "tok_1", "m")
                   for i in range(100)]
        astore.write_nowait(store.fail_job, "job-7", "timeout", "slow")
        for item in pending:
            await item.wait()
        await astore.write(store.finish_job, "job-8", 1, 2)
        stats = astore.statistics()
        nursery.cancel_scope.cancel()
    assert stats.writes == 102 and stats.batches < 10
    job7, job8 = store.get_job("job-7"), store.get_job("job-8")
    assert job7 is not None and job7.status == "failed"
    assert job8 is not None and job8.status == "completed"


async def test_a_failing_write_fails_alone(store: Store) -> None:
    astore = AsyncStore(store)
    async with trio.open_nursery() as nursery:
        await nursery.start(astore.serve)
        await astore.write(store.create_job, "job-1", "tok_1", "m")
        dup = astore.write_nowait(store.create_job, "job-1", "tok_1", "m")
        fine = astore.write_nowait(store.create_job, "job-2", "tok_1", "m")
        with pytest.raises(sqlite3.IntegrityError):
            await dup.wait()
        await fine.wait()
        nursery.cancel_scope.cancel()
    assert store.get_job("job-2") is not None


async def test_queued_writes_are_committed_on_shutdown(store: Store) -> None:
    astore = AsyncStore(store)
    async with trio.open_nursery() as nursery:
        await nursery.start(astore.serve)
        for i in range(5):
            astore.write_nowait(store.create_job, f"job-{i}", "tok_1", "m")
        nursery.cancel_scope.cancel()  # before the writer ran
    assert [store.get_job(f"job-{i}") is not None for i in range(5)] == [True] * 5


def test_write_nowait_needs_a_writer(store: Store) -> None:
    with pytest.raises(RuntimeError):
        AsyncStore(store).write_nowait(store.create_job, "job-1", "tok_1", "m")


async def test_the_writer_checkpoints_the_wal_from_its_own_connection(store: Store) -> None:
    astore = AsyncStore(store)
    assert await astore.checkpoint() is False  # no writer running
    async with trio.open_nursery() as nursery:
        await nursery.start(astore.serve)
        await astore.write(store.create_job, "job-1", "tok_1", "m")
        assert await astore.checkpoint() is True
        job = await astore.read(Store.get_job, "job-1")  # through the second connection
        assert store.transaction().execute("PRAGMA wal_autocheckpoint").fetchone() == (0,)
        nursery.cancel_scope.cancel()
    assert astore.statistics().checkpoints == 1
    assert job is not None and job.status == "pending"


def test_payouts_made_before_version_7_still_count_against_their_key(db_path: Path) -> None:
    db_path.parent.mkdir(parents=True)
    old = sqlite3.connect(db_path, isolation_level=None)
    old.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    old.execute("INSERT INTO schema_version VALUES (6)")
    for script in MIGRATIONS[:6]:
        old.executescript(script)
    old.execute("INSERT INTO payouts VALUES ('pay_1', 'aa', 'base', '0x1', '2.5', 'settled',"
                " 'ledger:pay_1', 1.0)")
    old.execute("INSERT INTO payouts VALUES ('pay_2', 'aa', 'base', '0x1', '9', 'failed', '',"
                " 2.0)")
    old.close()
    store = Store(db_path)
    try:
        earned, paid = store.ledger_entries(["aa"])
        assert (earned, paid) == ([], [("aa", "base", "2.5")])  # the failed one gave it back
        assert [p.id for p in store.list_payouts(["aa", "bb"])] == ["pay_2", "pay_1"]
    finally:
        store.close()
