"""The SQLite store: the single source of truth for jobs, runs and their history.

Only this package writes SQL (the schema: `schema`; the rows: `records`; the connection, WAL and the
short write transactions that let the CLI and the daemon share the file: `database`).

A job moves only along these edges (`ALLOWED_MOVES`):

    (submit)  -> queued
    queued    -> running                       start_run: an attempt begins
    queued    -> cancelled                     cancel before it ever ran
    queued    -> failed                        the daemon could not start it (the reason is its last_error)
    running   -> succeeded | failed | cancelled    the attempt ended
    running   -> queued                        interrupted, lost, or backing off
    failed    -> queued                        retry
    cancelled -> queued                        retry

`succeeded` is final. Each move is checked and made inside one transaction and
recorded in `transitions` with its reason. A running job is cancelled in two
steps: `cancel` sets `cancel_requested`; the daemon stops the child and then
moves the job to `cancelled` (with no daemon to do it, `cancel_unwatched` does).

Times are REAL unix epoch seconds passed in by the caller as `now`; nothing
here reads the clock, so tests and the daemon decide what "now" is. The module
imports only the standard library (and mtld's sizes constant and stdlib-only mtld.disk): the CLI opens it on
every command.
"""


from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from mtld.store.database import Database, unavailable
from mtld.store.records import (
    InvalidTransition, Job, Run, Schedule, SchemaTooNew, StoreDamaged, StoreError, Transition, UnknownJob, UnknownRun,
    column_list, job_from_row, json_safe, run_from_row,
)
from mtld.store.schema import (
    ALLOWED_MOVES, BATCH_SIZES, CANCELLED, FAILED, MAX_ID, QUEUED, RUNNING, SAFE_NAME, STATES, SUCCEEDED, TERMINAL,
)

__all__ = [
    "ALLOWED_MOVES", "BATCH_SIZES", "CANCELLED", "FAILED", "QUEUED", "RUNNING", "STATES", "SUCCEEDED", "TERMINAL",
    "InvalidTransition", "Job", "Run", "Schedule", "SchemaTooNew", "Store", "StoreDamaged", "StoreError", "Transition",
    "UnknownJob", "UnknownRun", "unavailable",
]


class Store:
    """One connection to the state file. Safe to share between the threads of one process."""

    def __init__(self, path: Path | str):
        self.db = Database(Path(path))
        self.path = self.db.path

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _job(self, job_id: int) -> Job:
        if not 0 < job_id <= MAX_ID:
            raise UnknownJob(job_id)
        rows = self.db.rows(f"SELECT {column_list(Job)} FROM jobs WHERE id = ?", (job_id,))
        if not rows:
            raise UnknownJob(job_id)
        return job_from_row(rows[0])

    def _run(self, run_id: int) -> Run:
        if not 0 < run_id <= MAX_ID:
            raise UnknownRun(run_id)
        rows = self.db.rows(f"SELECT {column_list(Run)} FROM runs WHERE id = ?", (run_id,))
        if not rows:
            raise UnknownRun(run_id)
        return run_from_row(rows[0])

    def _move(self, db: sqlite3.Connection, job: Job, to_state: str, *, verb: str, reason: str, now: float,
              **columns: Any) -> Job:
        """The one place a job changes state: check the edge, make the move, record it.

        Every move clears `cancel_requested` (it only means something while running) and
        sets `finished_at` exactly when the job lands in a terminal state."""
        if to_state not in ALLOWED_MOVES[job.state]:
            raise InvalidTransition(f"job {job.id} is {job.state}; cannot {verb}")
        columns |= {"state": to_state, "updated_at": now, "cancel_requested": 0,
                    "finished_at": now if to_state in TERMINAL else None}
        if to_state != QUEUED:
            columns["hold"] = None  # a hold belongs to a waiting job only
        assignments = ", ".join(f"{name} = ?" for name in columns)  # names come from this module only
        changed = db.execute(f"UPDATE jobs SET {assignments} WHERE id = ? AND state = ?",
                             (*columns.values(), job.id, job.state)).rowcount
        if changed != 1:  # cannot happen under BEGIN IMMEDIATE; kept so a broken lock fails loudly
            raise InvalidTransition(f"job {job.id} changed state while being moved to {to_state}")
        db.execute("INSERT INTO transitions (job_id, from_state, to_state, at, reason) VALUES (?, ?, ?, ?, ?)",
                   (job.id, job.state, to_state, now, reason))
        return self._job(job.id)

    # -- jobs -------------------------------------------------------------------------------

    def submit(self, *, name: str, spec_json: str, job_file: str, run_root: str | os.PathLike[str], now: float,
               priority: int = 0, not_before: float | None = None, batch_size: str | int = "auto",
               reason: str = "submitted") -> Job:
        """Queue a job. The spec text is copied: editing the job file later changes nothing."""
        if not SAFE_NAME.fullmatch(name):
            raise ValueError(f"job name {name!r} is not a safe folder name")
        if str(batch_size) not in BATCH_SIZES:
            raise ValueError(f"batch_size must be one of {', '.join(BATCH_SIZES)}, not {batch_size!r}")
        with self.db.write() as db:
            return self._insert_job(db, name=name, spec_json=spec_json, job_file=str(job_file), priority=priority,
                                    not_before=not_before, batch_size=str(batch_size), run_root=str(run_root),
                                    now=now, reason=reason)

    def _insert_job(self, db: sqlite3.Connection, *, name: str, spec_json: str, job_file: str, priority: int,
                    not_before: float | None, batch_size: str, run_root: str, now: float, reason: str) -> Job:
        job_id = db.execute(
            "INSERT INTO jobs (name, state, priority, not_before, submitted_at, updated_at, batch_size,"
            " spec_json, job_file, run_dir) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, '')",
            (name, QUEUED, priority, not_before, now, now, batch_size, spec_json, job_file),
        ).lastrowid
        db.execute("UPDATE jobs SET run_dir = ? WHERE id = ?", (f"{run_root}/{job_id}-{name}", job_id))
        db.execute("INSERT INTO transitions (job_id, from_state, to_state, at, reason) VALUES (?, NULL, ?, ?, ?)",
                   (job_id, QUEUED, now, reason))
        return self._job(job_id)

    def withdraw(self, job_id: int) -> bool:
        """Take a job back out that was just submitted and never started (its submit failed after the write):
        the job and its one transition go, as if never queued. False when it already ran, or is not there."""
        with self.db.write() as db:
            started = db.execute("SELECT 1 FROM runs WHERE job_id = ? LIMIT 1", (job_id,)).fetchone()
            if started is not None:
                return False
            db.execute("DELETE FROM transitions WHERE job_id = ? AND EXISTS (SELECT 1 FROM jobs WHERE id = ? AND "
                       "state = ?)", (job_id, job_id, QUEUED))
            return db.execute("DELETE FROM jobs WHERE id = ? AND state = ?", (job_id, QUEUED)).rowcount == 1

    def get(self, job_id: int) -> Job | None:
        try:
            return self._job(job_id)
        except UnknownJob:
            return None

    def list_jobs(self, states: Iterable[str] | None = None) -> list[Job]:
        if states is None:
            return [job_from_row(r) for r in self.db.rows(f"SELECT {column_list(Job)} FROM jobs ORDER BY id")]
        wanted = list(states)
        if unknown := set(wanted) - set(STATES):
            raise ValueError(f"unknown state(s): {', '.join(sorted(unknown))}")
        marks = ", ".join("?" * len(wanted))
        rows = self.db.rows(f"SELECT {column_list(Job)} FROM jobs WHERE state IN ({marks}) ORDER BY id", wanted)
        return [job_from_row(r) for r in rows]

    def counts(self) -> dict[str, int]:
        """Jobs per state; every state is present, zero included."""
        found = dict(self.db.rows("SELECT state, COUNT(*) FROM jobs WHERE removed_at IS NULL GROUP BY state"))
        return {state: found.get(state, 0) for state in STATES}

    def next_eligible(self, *, now: float) -> Job | None:
        """The queued job to run next: due now, highest priority, then oldest, then lowest id."""
        rows = self.db.rows(
            f"SELECT {column_list(Job)} FROM jobs WHERE state = ?"
            " AND hold IS NULL"
            " AND (not_before IS NULL OR not_before <= ?) AND (next_attempt_at IS NULL OR next_attempt_at <= ?)"
            " ORDER BY priority DESC, submitted_at, id LIMIT 1",
            (QUEUED, now, now),
        )
        return job_from_row(rows[0]) if rows else None

    def transition(self, job_id: int, to_state: str, *, reason: str, now: float,
                   last_error: str | None = None, next_attempt_at: float | None = None,
                   hold: str | None = None) -> Job:
        """Move a job along an allowed edge. `last_error`, `next_attempt_at` and `hold` are set to
        exactly what is given (None clears them): a requeue passes its backoff or its hold, and why."""
        if to_state not in STATES:
            raise ValueError(f"unknown state {to_state!r}")
        if to_state == RUNNING:
            raise ValueError("a job starts running only through start_run, which also records the run")
        if hold is not None and to_state != QUEUED:
            raise ValueError("only a queued job can be on hold")
        with self.db.write() as db:
            return self._move(db, self._job(job_id), to_state, verb=f"move to {to_state}", reason=reason, now=now,
                              last_error=last_error, next_attempt_at=next_attempt_at, hold=hold)

    def set_hold(self, job_id: int, hold: str | None, *, now: float) -> Job:
        """Put a queued job on hold (`hold`: why) or release it (None); recorded as a transition."""
        with self.db.write() as db:
            job = self._job(job_id)
            if job.state != QUEUED:
                raise InvalidTransition(f"job {job_id} is {job.state}; only a queued job can be "
                                        f"{'held' if hold else 'released'}")
            if job.hold == hold:
                return job
            db.execute("UPDATE jobs SET hold = ?, updated_at = ? WHERE id = ?", (hold, now, job_id))
            db.execute("INSERT INTO transitions (job_id, from_state, to_state, at, reason) VALUES (?, ?, ?, ?, ?)",
                       (job_id, QUEUED, QUEUED, now, f"held: {hold}" if hold else "released"))
            return self._job(job_id)

    def change_queued(self, job_id: int, *, spec_json: str, priority: int, not_before: float | None,
                      batch_size: str, now: float) -> Job:
        """A queued job's new priority, not-before time and batch size (and the spec that says so), recorded
        as a transition that names what changed. InvalidTransition unless the job is queued."""
        if str(batch_size) not in BATCH_SIZES:
            raise ValueError(f"batch_size must be one of {', '.join(BATCH_SIZES)}, not {batch_size!r}")
        with self.db.write() as db:
            job = self._job(job_id)
            if job.state != QUEUED:
                raise InvalidTransition(f"job {job_id} is {job.state}; only a queued job can be changed")
            changes = [f"{name} {old} -> {new}" for name, old, new in (
                ("priority", job.priority, priority), ("not_before", job.not_before, not_before),
                ("batch_size", job.batch_size, batch_size)) if old != new]
            db.execute("UPDATE jobs SET spec_json = ?, priority = ?, not_before = ?, batch_size = ?, updated_at = ?"
                       " WHERE id = ?", (spec_json, priority, not_before, batch_size, now, job_id))
            db.execute("INSERT INTO transitions (job_id, from_state, to_state, at, reason) VALUES (?, ?, ?, ?, ?)",
                       (job_id, QUEUED, QUEUED, now, "changed: " + (", ".join(changes) or "nothing")))
            return self._job(job_id)

    def cancel_unwatched(self, job_id: int, *, now: float) -> Job:
        """Cancel a running job that no daemon watches: close its open runs (outcome cancelled) and move it
        to cancelled, in one transaction. A job not running is cancelled as `cancel` would."""
        with self.db.write() as db:
            job = self._job(job_id)
            if job.state != RUNNING:
                return self._move(db, job, CANCELLED, verb="cancel", reason="cancelled before it ran", now=now)
            db.execute("UPDATE runs SET ended_at = ?, outcome = 'cancelled' WHERE job_id = ? AND ended_at IS NULL",
                       (now, job_id))
            return self._move(db, job, CANCELLED, verb="cancel", reason="cancelled with no daemon running", now=now)

    def cancel(self, job_id: int, *, now: float) -> Job:
        """Cancel a queued job now; for a running one, only ask (the daemon stops the child)."""
        with self.db.write() as db:
            job = self._job(job_id)
            if job.state == RUNNING:
                db.execute("UPDATE jobs SET cancel_requested = 1, updated_at = ? WHERE id = ?", (now, job_id))
                return self._job(job_id)
            return self._move(db, job, CANCELLED, verb="cancel", reason="cancelled before it ran", now=now)

    def retry(self, job_id: int, *, now: float) -> Job:
        """Queue a failed or cancelled job again, as if fresh: attempts, error and backoff reset.
        A queued job on hold is released instead."""
        job = self._job(job_id)
        if job.state == QUEUED and job.hold is not None:
            return self.set_hold(job_id, None, now=now)
        with self.db.write() as db:
            job = self._job(job_id)
            if job.state not in (FAILED, CANCELLED):
                raise InvalidTransition(f"job {job_id} is {job.state}; cannot retry")
            if job.removed_at is not None:
                raise InvalidTransition(f"job {job_id} was removed with its run folder; submit it again instead")
            if job.cleaning_at is not None:
                raise InvalidTransition(f"job {job_id} is being cleaned (mtld clean is deleting its checkpoints); "
                                        "retry it once that is done")
            return self._move(db, job, QUEUED, verb="retry", reason="retry", now=now,
                              attempts=0, last_error=None, next_attempt_at=None)

    # -- runs -------------------------------------------------------------------------------

    def start_run(self, job_id: int, *, micro_batch: int, family: str | None = None, reason: str | None = None,
                  now: float, executor: str = "local") -> Run:
        """Move a queued job to running and record the attempt, atomically: a job never runs twice."""
        with self.db.write() as db:
            job = self._job(job_id)
            attempt = db.execute("SELECT COALESCE(MAX(attempt), 0) + 1 FROM runs WHERE job_id = ?",
                                 (job_id,)).fetchone()[0]
            self._move(db, job, RUNNING, verb="start", reason=f"attempt {attempt} started", now=now,
                       attempts=job.attempts + 1)
            run_id = db.execute(
                "INSERT INTO runs (job_id, attempt, started_at, micro_batch, family, start_reason, executor)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (job_id, attempt, now, micro_batch, family, reason, executor),
            ).lastrowid
            return self._run(run_id)

    def set_run_handle(self, run_id: int, *, executor: str, ref: str, pid: int | None = None) -> None:
        """Where the attempt runs: what a restarted daemon needs to find it again."""
        with self.db.write() as db:
            if db.execute("UPDATE runs SET executor = ?, ref = ?, pid = ? WHERE id = ?",
                          (executor, ref, pid, run_id)).rowcount != 1:
                raise UnknownRun(run_id)

    def set_run_node(self, run_id: int, node: str) -> None:
        with self.db.write() as db:
            db.execute("UPDATE runs SET node = ? WHERE id = ?", (node, run_id))

    def set_run_waiting(self, run_id: int, waiting: str | None) -> None:
        """What a run on a cluster waits for before it starts (None: it runs)."""
        with self.db.write() as db:
            db.execute("UPDATE runs SET waiting = ? WHERE id = ?", (waiting, run_id))

    def finish_run(self, run_id: int, *, outcome: str, now: float, exit_code: int | None = None,
                   signal: int | None = None, micro_batch_end: int | None = None,
                   figures: dict[str, Any] | None = None, family: str | None = None,
                   reason: str | None = None) -> Run:
        """Close a run, once, with why it ended (`reason`). The job's state is moved separately, with `transition`.

        Figures are stored as strict JSON (NaN becomes null); None keeps `{}`. A value JSON
        cannot hold raises TypeError before anything is written. `family`: the family its figures
        belong to, when it is not the one it started under (it trained in another precision)."""
        figures_json = None if figures is None else json.dumps(json_safe(figures), allow_nan=False, sort_keys=True)
        with self.db.write() as db:
            run = self._run(run_id)
            if run.ended_at is not None:
                raise InvalidTransition(f"run {run_id} already finished ({run.outcome})")
            db.execute(
                "UPDATE runs SET ended_at = ?, outcome = ?, exit_code = ?, signal = ?, micro_batch_end = ?,"
                " figures = COALESCE(?, figures), family = COALESCE(?, family), reason = ?, waiting = NULL"
                " WHERE id = ?",
                (now, outcome, exit_code, signal, micro_batch_end, figures_json, family, reason, run_id),
            )
            return self._run(run_id)

    def runs_for(self, job_id: int) -> list[Run]:
        rows = self.db.rows(f"SELECT {column_list(Run)} FROM runs WHERE job_id = ? ORDER BY id", (job_id,))
        return [run_from_row(r) for r in rows]

    def latest_run(self, job_id: int) -> Run | None:
        rows = self.db.rows(f"SELECT {column_list(Run)} FROM runs WHERE job_id = ? ORDER BY id DESC LIMIT 1", (job_id,))
        return run_from_row(rows[0]) if rows else None

    def family_runs(self, family: str, limit: int = 20) -> list[Run]:
        """The family's most recent finished runs, oldest first: its batch-size history."""
        rows = self.db.rows(f"SELECT {column_list(Run)} FROM runs WHERE family = ? AND ended_at IS NOT NULL"
                          " ORDER BY id DESC LIMIT ?", (family, limit))
        return [run_from_row(r) for r in reversed(rows)]

    def active_runs(self) -> list[Run]:
        """Runs not yet finished: at daemon start, each is either still alive or lost."""
        return [run_from_row(r) for r in self.db.rows(f"SELECT {column_list(Run)} FROM runs WHERE ended_at IS NULL ORDER BY id")]

    def transitions_for(self, job_id: int) -> list[Transition]:
        rows = self.db.rows(f"SELECT {column_list(Transition)} FROM transitions WHERE job_id = ? ORDER BY id", (job_id,))
        return [Transition(**dict(r)) for r in rows]

    # -- schedules --------------------------------------------------------------------------

    def add_schedule(self, *, name: str, cron: str, spec_json: str, job_file: str, run_root: str,
                     next_fire_at: float, now: float, priority: int = 0, batch_size: str = "auto") -> Schedule:
        with self.db.write() as db:
            schedule_id = db.execute(
                "INSERT INTO schedules (name, cron, spec_json, job_file, priority, batch_size, run_root, created_at,"
                " next_fire_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (name, cron, spec_json, job_file, priority, str(batch_size), str(run_root), now, next_fire_at),
            ).lastrowid
        return self.get_schedule(schedule_id)

    def get_schedule(self, schedule_id: int) -> Schedule | None:
        if not 0 < schedule_id <= MAX_ID:
            return None
        rows = self.db.rows(f"SELECT {column_list(Schedule)} FROM schedules WHERE id = ?", (schedule_id,))
        return Schedule(**dict(rows[0])) if rows else None

    def list_schedules(self) -> list[Schedule]:
        return [Schedule(**dict(r)) for r in self.db.rows(f"SELECT {column_list(Schedule)} FROM schedules ORDER BY id")]

    def remove_schedule(self, schedule_id: int) -> Schedule:
        with self.db.write() as db:
            schedule = self.get_schedule(schedule_id)
            if schedule is None:
                raise StoreError(f"no schedule {schedule_id}")
            db.execute("DELETE FROM schedules WHERE id = ?", (schedule_id,))
            return schedule

    def fire_schedule(self, schedule_id: int, *, due_at: float, next_fire_at: float, name: str, now: float) -> Job | None:
        """Submit the schedule's job and move its next firing, in one transaction.

        `due_at` is the firing the caller saw: if another daemon tick already
        moved it, nothing happens (None), so a firing never submits twice.
        """
        with self.db.write() as db:
            moved = db.execute(
                "UPDATE schedules SET next_fire_at = ?, last_fired_at = ?, fired = fired + 1"
                " WHERE id = ? AND next_fire_at = ?", (next_fire_at, now, schedule_id, due_at),
            ).rowcount
            if not moved:
                return None
            schedule = self.get_schedule(schedule_id)
            return self._insert_job(db, name=name, spec_json=schedule.spec_json, job_file=schedule.job_file,
                                    priority=schedule.priority, not_before=None, batch_size=schedule.batch_size,
                                    run_root=schedule.run_root, now=now, reason=f"fired by schedule {schedule_id}")

    # -- flags ------------------------------------------------------------------------------

    def get_flag(self, name: str, default: str | None = None) -> str | None:
        rows = self.db.rows("SELECT value FROM flags WHERE name = ?", (name,))
        return rows[0][0] if rows else default

    def set_flag(self, name: str, value: str | None) -> None:
        """Set a flag; None removes it."""
        with self.db.write() as db:
            if value is None:
                db.execute("DELETE FROM flags WHERE name = ?", (name,))
            else:
                db.execute("INSERT INTO flags (name, value) VALUES (?, ?)"
                           " ON CONFLICT (name) DO UPDATE SET value = excluded.value", (name, value))

    # -- cleaning up: finished jobs whose run folders were removed, and the space runs take ---------
    # A removed job keeps its row and its runs (the family's history): marked with `removed_at`, left out of
    # `mtld status`, never retried.

    def claim_cleaning(self, job_id: int, *, now: float) -> Job:
        """Claim a finished job for `mtld clean`, in one transaction with the check that it is finished and not
        removed: until `done_cleaning`, `retry` refuses it (it would resume from checkpoints being deleted).
        Claiming a job already claimed is allowed: a clean that died half-way is finished by the next one."""
        with self.db.write() as db:
            job = self._job(job_id)
            if job.state not in TERMINAL:
                raise InvalidTransition(f"job {job_id} is {job.state}; only a finished job can be cleaned "
                                        "(cancel it first)")
            if job.removed_at is not None:
                raise InvalidTransition(f"job {job_id} was removed already")
            db.execute("UPDATE jobs SET cleaning_at = ? WHERE id = ?", (now, job_id))
            return self._job(job_id)

    def done_cleaning(self, job_id: int, *, removed: bool, reason: str, now: float) -> Job:
        """End a clean's claim: the job is marked removed (its run folder is gone; recorded as a transition),
        or, when its models were kept, it may be retried again (from the start: its checkpoints are gone)."""
        with self.db.write() as db:
            job = self._job(job_id)
            if removed and job.removed_at is None:
                db.execute("UPDATE jobs SET removed_at = ?, updated_at = ? WHERE id = ?", (now, now, job_id))
                db.execute("INSERT INTO transitions (job_id, from_state, to_state, at, reason) VALUES (?, ?, ?, ?, ?)",
                           (job_id, job.state, job.state, now, reason))
            db.execute("UPDATE jobs SET cleaning_at = NULL WHERE id = ?", (job_id,))
            return self._job(job_id)

    def set_run_figure(self, run_id: int, name: str, value: Any) -> None:
        """Change one of a finished run's figures (`mtld clean --keep-models` updates `disk_bytes`)."""
        with self.db.write() as db:
            db.execute("UPDATE runs SET figures = json_set(figures, ?, json(?)) WHERE id = ?",
                       (f"$.{name}", json.dumps(value), run_id))

    def runs_disk_usage(self: Any) -> tuple[int, int]:
        """(run folders, bytes): each job not removed, by its latest finished run's `disk_bytes`
        (measured by the run when it ended); one query, no folder is walked."""
        rows = self.db.rows(
            "SELECT COUNT(*), COALESCE(SUM(json_extract(r.figures, '$.disk_bytes')), 0) FROM runs r"
            " JOIN jobs j ON j.id = r.job_id WHERE j.removed_at IS NULL"
            " AND json_extract(r.figures, '$.disk_bytes') IS NOT NULL"
            " AND r.id = (SELECT MAX(id) FROM runs WHERE job_id = j.id AND ended_at IS NOT NULL)")
        return int(rows[0][0]), int(rows[0][1])
