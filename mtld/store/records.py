"""The store's records (what a row reads as) and its errors. Standard library only."""

from __future__ import annotations

import json
import math
import sqlite3
from dataclasses import asdict, dataclass, fields
from typing import Any

class StoreError(Exception):
    """Base of the errors this module raises on purpose."""


class UnknownJob(StoreError, LookupError):
    def __init__(self, job_id: int):
        self.job_id = job_id
        super().__init__(f"no job {job_id}")


class UnknownRun(StoreError, LookupError):
    def __init__(self, run_id: int):
        self.run_id = run_id
        super().__init__(f"no run {run_id}")


class InvalidTransition(StoreError):
    """The job (or run) is not in a state that allows what was asked."""


class SchemaTooNew(StoreError):
    """The file was written by a newer mtld; refusing beats silently misreading it."""


class StoreDamaged(StoreError):
    """The file is not a usable job store (damaged pages, truncated, empty); the message is one line that says
    what to do."""


@dataclass(frozen=True)
class Job:
    id: int
    name: str
    state: str
    priority: int
    not_before: float | None
    submitted_at: float
    updated_at: float
    finished_at: float | None
    batch_size: str
    spec_json: str
    job_file: str
    run_dir: str
    attempts: int  # runs started since submit or the last retry (for giving up / backoff)
    next_attempt_at: float | None
    cancel_requested: bool
    last_error: str | None
    hold: str | None = None  # why a queued job waits for a condition or a person (never started while set)
    removed_at: float | None = None  # its run folder was removed (mtld clean / remove); hidden from status
    cleaning_at: float | None = None  # `mtld clean` claimed it and is deleting its folder: not retried meanwhile

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Run:
    id: int
    job_id: int
    attempt: int  # 1-based over the job's whole life; a retry does not restart it
    started_at: float
    ended_at: float | None
    pid: int | None
    micro_batch: int
    micro_batch_end: int | None
    family: str | None
    outcome: str | None
    exit_code: int | None
    signal: int | None
    figures: dict[str, Any]
    start_reason: str | None = None  # why it started at its micro-batch
    executor: str = "local"  # the kind that runs it (mtld.executor.registry); rows from before it was stored: local
    ref: str | None = None  # the executor's handle: the pid, or the Ray submission id
    node: str | None = None  # the node it runs on, for a run on a cluster
    reason: str | None = None  # why it ended (the executor's words kept: a cluster's message)
    waiting: str | None = None  # what a run on a cluster waits for before it starts; None once it runs

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Transition:
    id: int
    job_id: int
    from_state: str | None
    to_state: str
    at: float
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Schedule:
    id: int
    name: str
    cron: str
    spec_json: str
    job_file: str
    priority: int
    batch_size: str
    run_root: str
    created_at: float
    next_fire_at: float
    last_fired_at: float | None
    fired: int  # how many jobs it has submitted

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def column_list(cls: type) -> str:
    # Name columns explicitly: a later migration that adds a column must not break the dataclasses.
    return ", ".join(f.name for f in fields(cls))


def job_from_row(row: sqlite3.Row) -> Job:
    return Job(**{**dict(row), "cancel_requested": bool(row["cancel_requested"])})


def run_from_row(row: sqlite3.Row) -> Run:
    return Run(**{**dict(row), "figures": json.loads(row["figures"]), "executor": row["executor"] or "local"})


def json_safe(value: Any) -> Any:
    """NaN and infinity are not JSON (`jq` refuses them): such a figure is stored as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value
