"""The store's schema: the job states, the allowed moves and the migrations (SQL, only here).

Schema version N is MIGRATIONS[:N] applied in order; only ever append.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator

from mtld import MICRO_BATCH_SIZES  # a constant: mtld/__init__ imports nothing

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "queued", "running", "succeeded", "failed", "cancelled"
STATES = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED)
TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELLED})
ALLOWED_MOVES: dict[str, frozenset[str]] = {
    QUEUED: frozenset({RUNNING, CANCELLED, FAILED}),  # failed: the daemon could not start it as stored
    RUNNING: frozenset({SUCCEEDED, FAILED, CANCELLED, QUEUED}),
    SUCCEEDED: frozenset(),
    FAILED: frozenset({QUEUED}),
    CANCELLED: frozenset({QUEUED}),
}
BATCH_SIZES = ("auto", *map(str, MICRO_BATCH_SIZES))
BATCH_SIZES_SQL = ", ".join(f"'{s}'" for s in BATCH_SIZES)
BUSY_TIMEOUT_S = 30.0
MAX_ID = 2**63 - 1  # SQLite's INTEGER: a larger id names no row (and would not even bind)
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # same rule as the job file: the name is a folder name

# Schema version N is MIGRATIONS[:N] applied in order. Only ever append.
MIGRATIONS: list[str] = [
    f"""
    CREATE TABLE jobs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,  -- AUTOINCREMENT: an id is never reused
        name TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
        priority INTEGER NOT NULL DEFAULT 0,
        not_before REAL,
        submitted_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        finished_at REAL,
        batch_size TEXT NOT NULL CHECK (batch_size IN ({BATCH_SIZES_SQL})),
        spec_json TEXT NOT NULL,
        job_file TEXT NOT NULL,
        run_dir TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL,
        cancel_requested INTEGER NOT NULL DEFAULT 0,
        last_error TEXT
    );
    CREATE INDEX jobs_by_state ON jobs (state, priority DESC, submitted_at, id);
    CREATE TABLE runs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        job_id INTEGER NOT NULL REFERENCES jobs (id),
        attempt INTEGER NOT NULL,
        started_at REAL NOT NULL,
        ended_at REAL,
        pid INTEGER,
        micro_batch INTEGER NOT NULL,
        micro_batch_end INTEGER,
        family TEXT,
        outcome TEXT,
        exit_code INTEGER,
        signal INTEGER,
        figures TEXT NOT NULL DEFAULT '{{}}',
        UNIQUE (job_id, attempt)
    );
    CREATE INDEX runs_active ON runs (ended_at) WHERE ended_at IS NULL;
    CREATE TABLE transitions (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        job_id INTEGER NOT NULL REFERENCES jobs (id),
        from_state TEXT,
        to_state TEXT NOT NULL,
        at REAL NOT NULL,
        reason TEXT NOT NULL
    );
    CREATE INDEX transitions_by_job ON transitions (job_id, id);
    CREATE TABLE flags (name TEXT PRIMARY KEY, value TEXT NOT NULL);
    """,
    # 2: why each run started at its micro-batch (shown by `mtld show`), and the
    # batch-size history read per family (model, max length, device).
    """
    ALTER TABLE runs ADD COLUMN start_reason TEXT;
    CREATE INDEX runs_by_family ON runs (family, id) WHERE ended_at IS NOT NULL;
    """,
    # 3: recurring jobs. Each firing submits a fresh job from the stored spec.
    f"""
    CREATE TABLE schedules (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL,
        cron TEXT NOT NULL,
        spec_json TEXT NOT NULL,
        job_file TEXT NOT NULL,
        priority INTEGER NOT NULL DEFAULT 0,
        batch_size TEXT NOT NULL CHECK (batch_size IN ({BATCH_SIZES_SQL})),
        run_root TEXT NOT NULL,
        created_at REAL NOT NULL,
        next_fire_at REAL NOT NULL,
        last_fired_at REAL,
        fired INTEGER NOT NULL DEFAULT 0
    );
    """,
    # 4: a queued job on hold waits for a condition or a person, not the clock: the daemon never
    # starts it; `mtld retry` (or the daemon, once the condition is gone) releases it.
    """
    ALTER TABLE jobs ADD COLUMN hold TEXT;
    """,
    # 5: `mtld clean` / `mtld remove` delete a finished job's run folder and mark the job removed; its
    # runs stay (they are its family's batch-size and timing history).
    """
    ALTER TABLE jobs ADD COLUMN removed_at REAL;
    """,
    # 6: which executor runs each attempt and its handle there (a pid, a Ray submission id), so a restarted
    # daemon finds it again; and the node it runs on, when not this machine.
    """
    ALTER TABLE runs ADD COLUMN executor TEXT;
    ALTER TABLE runs ADD COLUMN ref TEXT;
    ALTER TABLE runs ADD COLUMN node TEXT;
    """,
    # 7: `mtld clean` claims a finished job before it touches its folder, so that `mtld retry` (which would
    # resume from the checkpoints being deleted) is refused meanwhile; cleared (or turned into removed_at) after.
    """
    ALTER TABLE jobs ADD COLUMN cleaning_at REAL;
    """,
    # 8: why a run ended, as the daemon decided it (with the executor's own words: a cluster's message), and
    # what a run on a cluster waits for before it starts (its resources; null once it runs).
    """
    ALTER TABLE runs ADD COLUMN reason TEXT;
    ALTER TABLE runs ADD COLUMN waiting TEXT;
    """,
]


def statements(script: str) -> Iterator[str]:
    """Split a migration into statements: `executescript` would COMMIT our transaction."""
    buffer = ""
    for piece in script.split(";"):
        buffer += piece + ";"
        if sqlite3.complete_statement(buffer):  # a `;` inside a string, comment or trigger is not an end
            if buffer.strip(" \t\n;"):
                yield buffer.strip()
            buffer = ""
