"""What happened overnight, as records: the jobs that ran in a window, their runs, scores and errors.

`collect_night` reads the store (jobs, runs, transitions), each run folder's
`metrics.json` and log, and the daemon's log (memory pressure at each start);
mtld.report.page turns the result into the night's page. The default window
(`busy_stretch`) is the last stretch in which the queue was busy: from where it
went from empty to busy to where it was empty again.

Torch-free and matplotlib-free: the daemon's process may import it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from mtld.config.settings import Settings
from mtld.decide.schedule import next_opening, open_window
from mtld.logs.events import parse_ts, read_events
from mtld.report.run import Scores, read_log, read_scores
from mtld.store import Job, Run, Store, Transition

ACTIVE = ("queued", "running")
LEVELS = ("normal", "warn", "critical")


@dataclass
class JobNight:
    """One job as the night's page shows it."""

    job: Job
    runs: list[Run]  # its attempts in the window, oldest first
    estimate_s: float | None = None  # run.estimate of its first attempt in the window (made as it started)
    scores: Scores = field(default_factory=Scores)
    run_dir: Path | None = None
    has_model: bool = False
    has_best: bool = False
    fix: str | None = None  # the one command that fixes or retries a failed or held job

    @property
    def duration_s(self) -> float | None:
        spans = [r.ended_at - r.started_at for r in self.runs if r.ended_at is not None]
        return sum(spans) if spans else None

    @property
    def needs_attention(self) -> bool:
        return self.job.state in ("failed", "cancelled") or self.job.hold is not None


@dataclass
class Night:
    since: float
    until: float
    jobs: list[JobNight]
    windows: list[tuple[float, float]]  # the run windows' open spans inside [since, until]
    pressure: list[tuple[float, str]]  # (time, level) where a run or the daemon read it
    default_window: bool = False  # since the queue last went from empty to busy


def busy_stretch(transitions: list[list[Transition]], held: set[int], now: float) -> tuple[float, float] | None:
    """The last stretch of time in which some job was queued or running (from its moves): (when the queue
    last went from empty to busy, when it was empty again, or `now` while it is busy). A job on hold counts
    as waiting for a person, not as work, from its last move on. None when no job was ever queued."""
    spans = []
    for moves in transitions:
        opened: float | None = None
        for move in moves:
            if move.to_state in ACTIVE and opened is None:
                opened = move.at
            elif move.to_state not in ACTIVE and opened is not None:
                spans.append((opened, move.at))
                opened = None
        if opened is not None:
            end = moves[-1].at if moves and moves[-1].job_id in held else now
            spans.append((opened, max(end, opened)))
    if not spans:
        return None
    spans.sort()
    start, end = spans[0]
    for s, e in spans[1:]:  # merged in order: a stretch that starts after the last one ended is a new one
        if s > end:
            start = s
        end = max(end, e)
    return start, end


def last_stretch(store: Store, now: float) -> tuple[float, float] | None:
    """The default window of the night's page (busy_stretch over the store's jobs)."""
    jobs = store.list_jobs()
    held = {j.id for j in jobs if j.hold is not None}
    return busy_stretch([store.transitions_for(j.id) for j in jobs], held, now)


def collect_night(settings: Settings, store: Store, since: float, until: float) -> Night:
    jobs = []
    for job in store.list_jobs():
        runs = [r for r in store.runs_for(job.id) if r.started_at <= until and (r.ended_at or until) >= since]
        touched = any(since <= t.at <= until for t in store.transitions_for(job.id)) if not runs else True
        if touched or (job.hold is not None and job.state == "queued"):
            jobs.append(job_night(job, runs))
    jobs.sort(key=lambda j: (j.runs[0].started_at if j.runs else j.job.updated_at, j.job.id))
    return Night(since, until, jobs, run_windows(settings, since, until), pressure(settings, jobs, since, until))


def job_night(job: Job, runs: list[Run]) -> JobNight:
    view = JobNight(job, runs, fix=fix_command(job, runs[-1] if runs else None))
    if not job.run_dir:
        return view
    folder = Path(job.run_dir)
    view.run_dir = folder
    view.has_model, view.has_best = (folder / "model").is_dir(), (folder / "best").is_dir()
    view.scores = read_scores(folder / "metrics.json")
    if runs:
        first = runs[0].started_at
        for e in read_log(folder / "run.jsonl"):
            if e.get("event") == "run.estimate" and e["_t"] >= first and e.get("predicted_s") is not None:
                view.estimate_s = float(e["predicted_s"])
                break
    return view


def fix_command(job: Job, last: Run | None) -> str | None:
    """The command a person runs next for a job that failed, was cancelled or waits on hold: retry it (after
    the fix its error names), or restart it at the smallest size when memory ran out at every size."""
    if job.state == "queued" and job.hold is not None:
        return f"mtld retry {job.id}"
    if job.state == "cancelled":
        return f"mtld retry {job.id}"
    if job.state != "failed":
        return None
    if last is not None and last.outcome in ("out_of_memory", "killed"):
        return f"mtld restart {job.id} --batch-size 2"
    return f"mtld retry {job.id}"


def run_windows(settings: Settings, since: float, until: float) -> list[tuple[float, float]]:
    """The spans inside [since, until] in which a run window was open (none: no windows are set)."""
    windows = settings.schedule.parsed()
    if not windows:
        return []
    spans: list[tuple[float, float]] = []
    t = datetime.fromtimestamp(since).astimezone()
    for _ in range(1000):  # a window a minute for a whole night at most
        if t.timestamp() >= until:
            break
        opened = open_window(windows, t)
        if opened is not None:
            spans.append((max(opened[0].timestamp(), since), min(opened[1].timestamp(), until)))
            t = opened[1]
            continue
        following = next_opening(windows, t)
        if following is None:
            break
        t = following
    return spans


def pressure(settings: Settings, jobs: list[JobNight], since: float, until: float) -> list[tuple[float, str]]:
    """The memory pressure level where it was read: each run's samples (run.jsonl `memory.sample`) and the
    daemon's reading before each start (`policy.decided`, `run.deferred` for memory)."""
    points: list[tuple[float, str]] = []

    def add(event: dict[str, Any], level: Any) -> None:
        try:
            at = event["_t"] if "_t" in event else parse_ts(event["ts"])
        except (KeyError, ValueError, TypeError, AttributeError):
            return
        if level in LEVELS and since <= at <= until:
            points.append((at, level))

    for view in jobs:
        if view.run_dir is not None and view.runs:
            for e in read_log(view.run_dir / "run.jsonl"):
                if e.get("event") == "memory.sample":
                    add(e, e.get("pressure"))
    try:
        daemon = read_events(settings.daemon_log, since=since)
    except OSError:
        daemon = []
    for e in daemon:
        if e.get("event") == "policy.decided":
            add(e, e.get("pressure"))
        elif e.get("event") == "run.deferred" and e.get("reason") == "memory_critical":
            add(e, "critical")
    return sorted(points)
