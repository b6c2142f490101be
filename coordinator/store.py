"""The coordinator's durable state in SQLite: API tokens, the job log and known peers.

Owns: the schema and its versioned migrations, token minting (only a SHA-256 of each token
is stored) with per-token rate limits, job records from ``pending`` to their outcome (result
text, usage, timings, the request while the job may still have to run again), and each
node's last verified announcement. Nothing the coordinator promised a client lives only in
memory (``specs/http-api.md`` §"Durability").

Invariants:
- WAL mode with ``synchronous=NORMAL``: a commit survives the coordinator process dying
  (SIGKILL included); the last few commits may be lost only if the machine itself loses
  power (no fsync per commit; decision recorded in the spec).
- The coordinator writes through one connection, in group-committed batches, and reads
  through a second one on a worker thread (`AsyncStore`: why commits run on the trio
  thread, and how WAL checkpoints are kept off it).
- A job's request is stored while it may need to run again and cleared when it ends, so
  prompts do not outlive their jobs.
- SQL stays portable (Postgres is the scale-out path, DESIGN.md §3 "Coordinator store").

Larger than ~300 lines because the schema, the records and their queries belong together;
the group-commit writer is in `coordinator.store_writer`.
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from coordinator.receipts import ReceiptRecord
from coordinator.store_writer import AsyncStore

__all__ = ["MIGRATIONS", "AsyncStore", "JobRecord", "PayoutRecord", "PeerRecord", "Store",
           "TokenRecord", "hash_token"]

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
    # 2: the job lifecycle API (results, timings, re-queue), per-token limits, known peers.
    """
    ALTER TABLE tokens ADD COLUMN rpm INTEGER;
    ALTER TABLE tokens ADD COLUMN rph INTEGER;
    ALTER TABLE jobs ADD COLUMN source TEXT NOT NULL DEFAULT 'openai';
    ALTER TABLE jobs ADD COLUMN request TEXT;
    ALTER TABLE jobs ADD COLUMN deadline REAL;
    ALTER TABLE jobs ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE jobs ADD COLUMN started_at REAL;
    ALTER TABLE jobs ADD COLUMN completed_at REAL;
    ALTER TABLE jobs ADD COLUMN result_text TEXT;
    ALTER TABLE jobs ADD COLUMN finish_reason TEXT;
    ALTER TABLE jobs ADD COLUMN ttft_ms REAL;
    ALTER TABLE jobs ADD COLUMN latency_ms REAL;
    ALTER TABLE jobs ADD COLUMN tokens_per_s REAL;
    ALTER TABLE jobs ADD COLUMN weights_hash TEXT;
    ALTER TABLE jobs ADD COLUMN receipt_id TEXT;
    CREATE INDEX jobs_status ON jobs (status);
    CREATE TABLE peers (
        pubkey TEXT PRIMARY KEY,
        peer_id TEXT NOT NULL,
        event TEXT NOT NULL,
        last_seen REAL NOT NULL
    );
    """,
    # 3: Compute Payment Receipts, countersigned or rejected (amounts as decimal text).
    """
    CREATE TABLE receipts (
        id TEXT PRIMARY KEY,
        job_id TEXT NOT NULL,
        node_pubkey TEXT NOT NULL,
        status TEXT NOT NULL,
        reason TEXT NOT NULL,
        model TEXT NOT NULL,
        input_tokens INTEGER NOT NULL,
        output_tokens INTEGER NOT NULL,
        value TEXT NOT NULL,
        platform_fee TEXT NOT NULL,
        node_amount TEXT NOT NULL,
        currency TEXT NOT NULL,
        chain TEXT NOT NULL,
        completed_at INTEGER NOT NULL,
        envelope TEXT NOT NULL,
        created_at REAL NOT NULL
    );
    CREATE INDEX receipts_job ON receipts (job_id);
    CREATE INDEX receipts_node_status ON receipts (node_pubkey, status);
    """,
    # 4: the ledger's payouts; a job's prompt hash, to check a receipt a node sends later.
    """
    CREATE TABLE payouts (
        id TEXT PRIMARY KEY,
        node_pubkey TEXT NOT NULL,
        chain TEXT NOT NULL,
        address TEXT NOT NULL,
        amount TEXT NOT NULL,
        status TEXT NOT NULL,
        reference TEXT NOT NULL,
        created_at REAL NOT NULL
    );
    CREATE INDEX payouts_node ON payouts (node_pubkey, created_at);
    ALTER TABLE jobs ADD COLUMN prompt_hash TEXT;
    """,
    # 5: the node registry (node key → delegating user key) and the owner-command queue
    # (coordinator/registry.py).
    """
    CREATE TABLE node_registry (
        node_pubkey TEXT PRIMARY KEY,
        user_pubkey TEXT NOT NULL,
        delegation TEXT NOT NULL,
        rotations TEXT NOT NULL,
        registered_at REAL NOT NULL
    );
    CREATE INDEX node_registry_user ON node_registry (user_pubkey);
    CREATE TABLE node_commands (
        id TEXT PRIMARY KEY,
        node_pubkey TEXT NOT NULL,
        user_pubkey TEXT NOT NULL,
        action TEXT NOT NULL,
        model TEXT NOT NULL,
        command TEXT NOT NULL,
        status TEXT NOT NULL,
        code TEXT NOT NULL,
        message TEXT NOT NULL,
        created_at REAL NOT NULL,
        acked_at REAL
    );
    CREATE INDEX node_commands_node_status ON node_commands (node_pubkey, status, created_at);
    """,
    # 6: a node's receipts by status and time (the daily quota of unwitnessed receipts
    # counts them); it also serves every lookup the two-column index served.
    """
    DROP INDEX receipts_node_status;
    CREATE INDEX receipts_node_status_time ON receipts (node_pubkey, status, created_at);
    """,
    # 7: which node key each payout drew on. A node that rotated its key claims what its
    # retired keys earned too; a payout may then draw on several keys, and a key's balance
    # is its earnings minus the parts drawn on it (so a key in two chains pays once).
    """
    CREATE TABLE payout_parts (
        payout_id TEXT NOT NULL,
        node_pubkey TEXT NOT NULL,
        chain TEXT NOT NULL,
        amount TEXT NOT NULL,
        PRIMARY KEY (payout_id, node_pubkey)
    );
    CREATE INDEX payout_parts_node ON payout_parts (node_pubkey, chain);
    INSERT INTO payout_parts (payout_id, node_pubkey, chain, amount)
        SELECT id, node_pubkey, chain, amount FROM payouts;
    """,
    # 8: node keys rotated away, from the chains nodes registered (coordinator/registry.py):
    # such a key signs no node request any more, and is retired to one successor only.
    """
    CREATE TABLE retired_keys (
        pubkey TEXT PRIMARY KEY,
        successor TEXT NOT NULL,
        rotated_at INTEGER NOT NULL,
        registered_at REAL NOT NULL
    );
    """,
)

_JOB_COLUMNS: Final = (
    "id, token_id, model, status, node_pubkey, prompt_tokens, completion_tokens, error_code,"
    " error_message, source, created_at, updated_at, started_at, completed_at, result_text,"
    " finish_reason, ttft_ms, latency_ms, tokens_per_s, attempts, deadline, weights_hash,"
    " receipt_id, request"
)
UNFINISHED: Final = ("pending", "processing")


def hash_token(token: str) -> str:
    """The stored form of a bearer token."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class TokenRecord:
    """A minted token, without its secret; ``rpm``/``rph`` None means the default limit."""

    id: str
    name: str
    created_at: float
    rpm: int | None = None
    rph: int | None = None


@dataclass(frozen=True, slots=True)
class JobRecord:
    """One job as the store knows it. Times are Unix seconds; ``request`` is JSON."""

    id: str
    token_id: str
    model: str
    status: str
    node_pubkey: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    error_code: str | None
    error_message: str | None = None
    source: str = "openai"
    created_at: float = 0.0
    updated_at: float = 0.0
    started_at: float | None = None
    completed_at: float | None = None
    result_text: str | None = None
    finish_reason: str | None = None
    ttft_ms: float | None = None
    latency_ms: float | None = None
    tokens_per_s: float | None = None
    attempts: int = 0
    deadline: float | None = None
    weights_hash: str | None = None
    receipt_id: str | None = None
    request: str | None = None


@dataclass(frozen=True, slots=True)
class PayoutRecord:
    """One payout: where it went, how much, and how settlement went."""

    id: str
    node_pubkey: str
    chain: str
    address: str
    amount: str  # canonical decimal text, USDC
    status: str  # "pending" | "settled" | "failed"
    reference: str  # the settlement's reference (a tx hash, or ledger:<id>)
    created_at: float


@dataclass(frozen=True, slots=True)
class PeerRecord:
    """A node's last verified announcement (the signed event, JSON) and when it arrived."""

    pubkey: str
    peer_id: str
    event: str
    last_seen: float


class Store:
    """Synchronous SQLite access; use `AsyncStore` from trio code."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
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

    def open_again(self) -> Store:
        """A second connection to the same database (for reads or checkpoints)."""
        return Store(self.path)

    def transaction(self) -> sqlite3.Connection:
        """The connection, for `AsyncStore`'s group commit (``BEGIN``/``COMMIT`` around a batch)."""
        return self._db

    # --- tokens -------------------------------------------------------------------------

    def create_token(
        self, name: str, *, rpm: int | None = None, rph: int | None = None
    ) -> tuple[str, TokenRecord]:
        """Mint a token; return (the secret, shown once, and its record)."""
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        record = TokenRecord(id="tok_" + secrets.token_hex(8), name=name,
                             created_at=time.time(), rpm=rpm, rph=rph)
        self._db.execute(
            "INSERT INTO tokens (id, name, token_hash, created_at, rpm, rph)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (record.id, name, hash_token(token), record.created_at, rpm, rph),
        )
        return token, record

    def check_token(self, token: str) -> TokenRecord | None:
        """The record of a valid, unrevoked token, else None."""
        row = self._db.execute(
            "SELECT id, name, created_at, rpm, rph FROM tokens"
            " WHERE token_hash = ? AND revoked_at IS NULL",
            (hash_token(token),),
        ).fetchone()
        return TokenRecord(*row) if row else None

    def set_token_limits(self, token_id: str, *, rpm: int | None, rph: int | None) -> bool:
        """Change a live token's limits (None: the default); False when no such token."""
        cur = self._db.execute(
            "UPDATE tokens SET rpm = ?, rph = ? WHERE id = ? AND revoked_at IS NULL",
            (rpm, rph, token_id),
        )
        return cur.rowcount == 1

    def list_tokens(self) -> list[tuple[TokenRecord, bool]]:
        """Every token with whether it is revoked, oldest first."""
        rows = self._db.execute(
            "SELECT id, name, created_at, rpm, rph, revoked_at FROM tokens ORDER BY created_at"
        ).fetchall()
        return [(TokenRecord(*row[:5]), row[5] is not None) for row in rows]

    def revoke_token(self, token_id: str) -> bool:
        """Revoke a token by id; False when no such live token exists."""
        cur = self._db.execute(
            "UPDATE tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
            (time.time(), token_id),
        )
        return cur.rowcount == 1

    # --- jobs ---------------------------------------------------------------------------

    def create_job(
        self,
        job_id: str,
        token_id: str,
        model: str,
        *,
        source: str = "openai",
        request: str | None = None,
        deadline: float | None = None,
        created_at: float | None = None,
    ) -> None:
        """Record a new pending job."""
        now = time.time() if created_at is None else created_at
        self._db.execute(
            "INSERT INTO jobs (id, token_id, model, status, created_at, updated_at, source,"
            " request, deadline) VALUES (?, ?, ?, 'pending', ?, ?, ?, ?, ?)",
            (job_id, token_id, model, now, now, source, request, deadline),
        )

    def start_job(self, job_id: str, node_pubkey: str, *, weights_hash: str | None = None) -> None:
        """Mark a job as processing on ``node_pubkey``."""
        now = time.time()
        self._db.execute(
            "UPDATE jobs SET status = 'processing', node_pubkey = ?, weights_hash = ?,"
            " started_at = ?, updated_at = ? WHERE id = ?",
            (node_pubkey, weights_hash, now, now, job_id),
        )

    def requeue_job(self, job_id: str) -> None:
        """Put a job back to pending (its node was lost before the first token)."""
        self._db.execute(
            "UPDATE jobs SET status = 'pending', node_pubkey = NULL, started_at = NULL,"
            " attempts = attempts + 1, updated_at = ? WHERE id = ?",
            (time.time(), job_id),
        )

    def finish_job(
        self,
        job_id: str,
        prompt_tokens: int,
        completion_tokens: int,
        *,
        text: str | None = None,
        finish_reason: str | None = None,
        ttft_ms: float | None = None,
        latency_ms: float | None = None,
        tokens_per_s: float | None = None,
        receipt_id: str | None = None,
        prompt_hash: str | None = None,
    ) -> None:
        """Mark a job completed with its result and usage; forget its request (its hash
        stays, to check a receipt sent later)."""
        now = time.time()
        self._db.execute(
            "UPDATE jobs SET status = 'completed', prompt_tokens = ?, completion_tokens = ?,"
            " result_text = ?, finish_reason = ?, ttft_ms = ?, latency_ms = ?, tokens_per_s = ?,"
            " receipt_id = ?, prompt_hash = ?, request = NULL, completed_at = ?, updated_at = ?"
            " WHERE id = ?",
            (prompt_tokens, completion_tokens, text, finish_reason, ttft_ms, latency_ms,
             tokens_per_s, receipt_id, prompt_hash, now, now, job_id),
        )

    def set_job_receipt(self, job_id: str, receipt_id: str) -> None:
        """Name the countersigned receipt of a completed job (one a node sent later)."""
        self._db.execute("UPDATE jobs SET receipt_id = ? WHERE id = ? AND receipt_id IS NULL",
                         (receipt_id, job_id))

    def job_prompt_hash(self, job_id: str) -> str | None:
        """The stored prompt hash of a completed job."""
        row = self._db.execute("SELECT prompt_hash FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return row[0] if row else None

    def fail_job(
        self, job_id: str, code: str, message: str, *, latency_ms: float | None = None
    ) -> None:
        """Mark a job failed with an error code; forget its request."""
        now = time.time()
        self._db.execute(
            "UPDATE jobs SET status = 'failed', error_code = ?, error_message = ?,"
            " latency_ms = ?, request = NULL, completed_at = ?, updated_at = ? WHERE id = ?",
            (code, message, latency_ms, now, now, job_id),
        )

    def get_job(self, job_id: str) -> JobRecord | None:
        """One job by id."""
        row = self._db.execute(
            f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,)
        ).fetchone()
        return JobRecord(*row) if row else None

    def list_jobs(
        self,
        token_id: str,
        *,
        limit: int = 20,
        status: str | None = None,
        since: float | None = None,
    ) -> list[JobRecord]:
        """A token's jobs, newest first."""
        sql = f"SELECT {_JOB_COLUMNS} FROM jobs WHERE token_id = ?"
        args: list[object] = [token_id]
        if status is not None:
            sql += " AND status = ?"
            args.append(status)
        if since is not None:
            sql += " AND created_at >= ?"
            args.append(since)
        sql += " ORDER BY created_at DESC, id DESC LIMIT ?"
        args.append(limit)
        return [JobRecord(*row) for row in self._db.execute(sql, args).fetchall()]

    def unfinished_jobs(self) -> list[JobRecord]:
        """Jobs still pending or processing (after a restart: the ones to sweep)."""
        rows = self._db.execute(
            f"SELECT {_JOB_COLUMNS} FROM jobs WHERE status IN (?, ?) ORDER BY created_at",
            UNFINISHED,
        ).fetchall()
        return [JobRecord(*row) for row in rows]

    def job_times_since(self, since: float) -> list[tuple[str, float]]:
        """(token id, created_at) of every job created at or after ``since``, oldest first."""
        return self._db.execute(
            "SELECT token_id, created_at FROM jobs WHERE created_at >= ? ORDER BY created_at",
            (since,),
        ).fetchall()

    # --- receipts ---------------------------------------------------------------------------

    def save_receipt(self, record: ReceiptRecord) -> None:
        """Keep a receipt (a node re-sending the same receipt changes nothing)."""
        self._db.execute(
            "INSERT INTO receipts (id, job_id, node_pubkey, status, reason, model, input_tokens,"
            " output_tokens, value, platform_fee, node_amount, currency, chain, completed_at,"
            " envelope, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (id) DO NOTHING",
            (record.id, record.job_id, record.node_pubkey, record.status, record.reason,
             record.model, record.input_tokens, record.output_tokens, record.value,
             record.platform_fee, record.node_amount, record.currency, record.chain,
             record.completed_at, record.envelope, record.created_at),
        )

    def get_receipt(self, rid: str) -> ReceiptRecord | None:
        """One receipt by id."""
        row = self._db.execute(
            "SELECT id, job_id, node_pubkey, status, reason, model, input_tokens, output_tokens,"
            " value, platform_fee, node_amount, currency, chain, completed_at, envelope,"
            " created_at FROM receipts WHERE id = ?", (rid,)
        ).fetchone()
        return ReceiptRecord(*row) if row else None

    def unwitnessed_since(self, node_pubkey: str, since: float) -> tuple[int, float | None]:
        """(how many, created_at of the oldest) of the node's unwitnessed receipts stored at
        or after ``since``."""
        count, oldest = self._db.execute(
            "SELECT COUNT(*), MIN(created_at) FROM receipts WHERE node_pubkey = ?"
            " AND status = 'unwitnessed' AND created_at >= ?", (node_pubkey, since)).fetchone()
        return int(count), oldest

    def receipt_for_job(self, job_id: str) -> ReceiptRecord | None:
        """The countersigned receipt of a job, if any."""
        row = self._db.execute(
            "SELECT id FROM receipts WHERE job_id = ? AND status = 'countersigned'", (job_id,)
        ).fetchone()
        return self.get_receipt(row[0]) if row else None

    # --- ledger -------------------------------------------------------------------------

    def ledger_entries(self, node_pubkeys: Sequence[str]) -> tuple[
            list[tuple[str, str, str]], list[tuple[str, str, str]]]:
        """(key, chain, amount) of the keys' countersigned receipts and of the payout parts
        drawn on them that did not fail: the two sides of their balances."""
        if not node_pubkeys:
            return [], []
        marks = ", ".join("?" for _ in node_pubkeys)
        earned = self._db.execute(
            "SELECT node_pubkey, chain, node_amount FROM receipts"
            f" WHERE node_pubkey IN ({marks}) AND status = 'countersigned'",
            tuple(node_pubkeys)).fetchall()
        paid = self._db.execute(
            "SELECT part.node_pubkey, part.chain, part.amount FROM payout_parts part"
            " JOIN payouts p ON p.id = part.payout_id"
            f" WHERE part.node_pubkey IN ({marks}) AND p.status <> 'failed'",
            tuple(node_pubkeys)).fetchall()
        return earned, paid

    def save_payout(self, payout: PayoutRecord, parts: Sequence[tuple[str, str]]) -> None:
        """Record a payout (pending until its settlement reports) and the amount it draws on
        each node key, (key, amount)."""
        self._db.execute(
            "INSERT INTO payouts (id, node_pubkey, chain, address, amount, status, reference,"
            " created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (payout.id, payout.node_pubkey, payout.chain, payout.address, payout.amount,
             payout.status, payout.reference, payout.created_at))
        self._db.executemany(
            "INSERT INTO payout_parts (payout_id, node_pubkey, chain, amount)"
            " VALUES (?, ?, ?, ?)",
            [(payout.id, key, payout.chain, amount) for key, amount in parts])

    def set_payout_status(self, payout_id: str, status: str, reference: str) -> None:
        """Settle or fail a pending payout."""
        self._db.execute("UPDATE payouts SET status = ?, reference = ? WHERE id = ?",
                         (status, reference, payout_id))

    def list_payouts(self, node_pubkeys: Sequence[str]) -> list[PayoutRecord]:
        """The payouts claimed by any of ``node_pubkeys``, newest first."""
        if not node_pubkeys:
            return []
        marks = ", ".join("?" for _ in node_pubkeys)
        rows = self._db.execute(
            "SELECT id, node_pubkey, chain, address, amount, status, reference, created_at"
            f" FROM payouts WHERE node_pubkey IN ({marks}) ORDER BY created_at DESC",
            tuple(node_pubkeys)).fetchall()
        return [PayoutRecord(*row) for row in rows]

    # --- peers --------------------------------------------------------------------------

    def save_peer(self, record: PeerRecord) -> None:
        """Remember a node's latest verified announcement."""
        self._db.execute(
            "INSERT INTO peers (pubkey, peer_id, event, last_seen) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (pubkey) DO UPDATE SET peer_id = excluded.peer_id,"
            " event = excluded.event, last_seen = excluded.last_seen",
            (record.pubkey, record.peer_id, record.event, record.last_seen),
        )

    def get_peer(self, pubkey: str) -> PeerRecord | None:
        """One node's last announcement, if it ever announced."""
        row = self._db.execute(
            "SELECT pubkey, peer_id, event, last_seen FROM peers WHERE pubkey = ?", (pubkey,)
        ).fetchone()
        return PeerRecord(*row) if row else None

    def load_peers(self) -> list[PeerRecord]:
        """Every node ever announced, most recently seen first."""
        rows = self._db.execute(
            "SELECT pubkey, peer_id, event, last_seen FROM peers ORDER BY last_seen DESC"
        ).fetchall()
        return [PeerRecord(*row) for row in rows]
