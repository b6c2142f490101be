"""The coordinator's durable state in SQLite: API tokens and the job log.

Owns: the schema and its versioned migrations, token minting (only a SHA-256 of each token
is stored), and job records. Nothing the coordinator needs after a restart lives in memory.

Invariants: WAL mode; one connection used from one worker thread at a time (`AsyncStore`
serialises calls through a `CapacityLimiter(1)` so trio never blocks on disk); SQL stays
portable (Postgres is the scale-out path, DESIGN.md §3 "Coordinator store").
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final, ParamSpec, TypeVar

import trio

__all__ = ["AsyncStore", "JobRecord", "Store", "TokenRecord", "hash_token"]

TOKEN_PREFIX: Final = "inf_"

# Each entry upgrades the schema from version i to i + 1. Never edit a shipped entry.
MIGRATIONS: Final[tuple[str, ...]] = (
    """
    CREATE TABLE tokens (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        token_hash TEXT NOT NULL UNIQUE,
        created_at REAL NOT NULL,
        revoked_at REAL
    );
    CREATE TABLE jobs (
        id TEXT PRIMARY KEY,
        token_id TEXT NOT NULL,
        model TEXT NOT NULL,
        status TEXT NOT NULL,
        node_pubkey TEXT,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        prompt_tokens INTEGER,
        completion_tokens INTEGER,
        error_code TEXT,
        error_message TEXT
    );
    CREATE INDEX jobs_token_created ON jobs (token_id, created_at);
    """,
)

P = ParamSpec("P")
T = TypeVar("T")


def hash_token(token: str) -> str:
    """The stored form of a bearer token."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class TokenRecord:
    """A minted token, without its secret."""

    id: str
    name: str
    created_at: float


@dataclass(frozen=True, slots=True)
class JobRecord:
    """One job as the store knows it."""

    id: str
    token_id: str
    model: str
    status: str
    node_pubkey: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    error_code: str | None


class Store:
    """Synchronous SQLite access; use `AsyncStore` from trio code."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._migrate()

    def _migrate(self) -> None:
        self._db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        row = self._db.execute("SELECT version FROM schema_version").fetchone()
        version = row[0] if row else 0
        if row is None:
            self._db.execute("INSERT INTO schema_version VALUES (0)")
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            self._db.executescript(
                f"BEGIN; {script}; UPDATE schema_version SET version = {number}; COMMIT;"
            )

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    def create_token(self, name: str) -> tuple[str, TokenRecord]:
        """Mint a token; return (the secret, shown once, and its record)."""
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        record = TokenRecord(id="tok_" + secrets.token_hex(8), name=name, created_at=time.time())
        self._db.execute(
            "INSERT INTO tokens (id, name, token_hash, created_at) VALUES (?, ?, ?, ?)",
            (record.id, name, hash_token(token), record.created_at),
        )
        return token, record

    def check_token(self, token: str) -> TokenRecord | None:
        """The record of a valid, unrevoked token, else None."""
        row = self._db.execute(
            "SELECT id, name, created_at FROM tokens WHERE token_hash = ? AND revoked_at IS NULL",
            (hash_token(token),),
        ).fetchone()
        return TokenRecord(*row) if row else None

    def revoke_token(self, token_id: str) -> bool:
        """Revoke a token by id; False when no such live token exists."""
        cur = self._db.execute(
            "UPDATE tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
            (time.time(), token_id),
        )
        return cur.rowcount == 1

    def create_job(self, job_id: str, token_id: str, model: str) -> None:
        """Record a new pending job."""
        now = time.time()
        self._db.execute(
            "INSERT INTO jobs (id, token_id, model, status, created_at, updated_at)"
            " VALUES (?, ?, ?, 'pending', ?, ?)",
            (job_id, token_id, model, now, now),
        )

    def start_job(self, job_id: str, node_pubkey: str) -> None:
        """Mark a job as processing on ``node_pubkey``."""
        self._db.execute(
            "UPDATE jobs SET status = 'processing', node_pubkey = ?, updated_at = ? WHERE id = ?",
            (node_pubkey, time.time(), job_id),
        )

    def finish_job(self, job_id: str, prompt_tokens: int, completion_tokens: int) -> None:
        """Mark a job completed with its usage."""
        self._db.execute(
            "UPDATE jobs SET status = 'completed', prompt_tokens = ?, completion_tokens = ?,"
            " updated_at = ? WHERE id = ?",
            (prompt_tokens, completion_tokens, time.time(), job_id),
        )

    def fail_job(self, job_id: str, code: str, message: str) -> None:
        """Mark a job failed with an error code."""
        self._db.execute(
            "UPDATE jobs SET status = 'failed', error_code = ?, error_message = ?, updated_at = ?"
            " WHERE id = ?",
            (code, message, time.time(), job_id),
        )

    def get_job(self, job_id: str) -> JobRecord | None:
        """One job by id."""
        row = self._db.execute(
            "SELECT id, token_id, model, status, node_pubkey, prompt_tokens, completion_tokens,"
            " error_code FROM jobs WHERE id = ?",
            (job_id,),
        ).fetchone()
        return JobRecord(*row) if row else None


class AsyncStore:
    """Runs `Store` calls on a worker thread, one at a time."""

    def __init__(self, store: Store) -> None:
        self.sync = store
        self._limiter = trio.CapacityLimiter(1)

    async def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn(*args, **kwargs)`` off the trio thread. Not cancel-safe mid-write:
        the write completes even if the caller is cancelled."""
        return await trio.to_thread.run_sync(
            lambda: fn(*args, **kwargs), limiter=self._limiter
        )
