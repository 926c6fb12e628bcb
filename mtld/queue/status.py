"""What `mtld status` shows: the store plus the tails of the run logs.

Only the last few kilobytes of a run log are read (backwards), so this stays
fast when a log is gigabytes long. A read: it writes nothing. Row counts for the
queue's forecast come from mtld.estimate.rowcounts' cache (filled by `mtld submit`);
what the cache misses is counted for this call only.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from mtld.disk import free_bytes
from mtld.decide.family import pinned_size, planned_size
from mtld.estimate.history import earlier_runs, family_history, family_records, job_family, probe_dir
from mtld.executor import PROBLEM_FLAG, ExecutorPlugin
from mtld.executor.registry import kind as executor_kind
from mtld.executor.registry import plugin_for
from mtld.config.jobspec import spec_from_json
from mtld.logs.events import iso, last_event
from mtld.platform.pidfile import running_pid
from mtld.estimate.rowcounts import ExampleCounts, cache_file, queued_estimate
from mtld.decide.schedule import finish_time, first_open, inside, keep_awake, next_opening, open_window
from mtld.platform.power import on_battery
from mtld.report.nightly import latest_page
from mtld.config.settings import Settings
from mtld.store import Job, Run, Schedule, Store

RECENT_FINISHED = 10
PROGRESS_FIELDS = ("step", "total", "epoch", "loss", "samples_per_s", "tokens_per_s", "micro_batch", "eta_s")


def job_view(job: Job) -> dict[str, Any]:
    """The stable JSON form of a job (documented in docs/usage.md, "JSON output")."""
    return {
        "id": job.id,
        "name": job.name,
        "state": job.state,
        "priority": job.priority,
        "batch_size": job.batch_size,
        "submitted_at": iso(job.submitted_at),
        "not_before": time_or_none(job.not_before),
        "updated_at": iso(job.updated_at),
        "finished_at": time_or_none(job.finished_at),
        "next_attempt_at": time_or_none(job.next_attempt_at),
        "attempts": job.attempts,
        "cancel_requested": job.cancel_requested,
        "last_error": job.last_error,
        "hold": job.hold,
        "removed_at": iso(job.removed_at) if job.removed_at else None,
        "run_dir": job.run_dir,
        "job_file": job.job_file,
    }


def time_or_none(epoch: float | None) -> str | None:
    """ISO time, or None when unset or beyond what a date can hold (a stored time must not break `status`)."""
    try:
        return iso(epoch) if epoch else None
    except (OverflowError, ValueError, OSError):
        return None


def schedule_view(schedule: Schedule) -> dict[str, Any]:
    return {
        "id": schedule.id, "name": schedule.name, "cron": schedule.cron, "priority": schedule.priority,
        "batch_size": schedule.batch_size, "next_fire_at": iso(schedule.next_fire_at),
        "last_fired_at": iso(schedule.last_fired_at) if schedule.last_fired_at else None,
        "fired": schedule.fired, "job_file": schedule.job_file, "created_at": iso(schedule.created_at),
    }


def windows_view(settings: Settings, now: datetime, *, waiting: bool = False) -> dict[str, Any]:
    """The run windows now. `waiting`: a queued job is due and waits for the next opening (then the daemon
    keeps the machine awake for it when it opens soon, on mains power: `kept_awake`)."""
    windows = settings.schedule.parsed()
    opened = open_window(windows, now)
    following = next_opening(windows, now)
    awake = (waiting and following is not None and settings.daemon.prevent_sleep
             and keep_awake(following.timestamp(), now.timestamp(), ahead_s=settings.power.stay_awake_before_window_s,
                            on_mains=on_battery() is not True))
    return {
        "windows": settings.schedule.windows,
        "inside": inside(windows, now),
        "closes_at": opened[1].isoformat() if opened else None,
        "next_opens_at": following.isoformat() if following else None,
        "at_window_end": settings.schedule.at_window_end,
        "kept_awake": bool(awake),
    }


LATEST = 32_503_680_000.0  # 3000-01-01: later times (a long backoff doubled many times) are "some day"


def earliest(job: Job) -> float:
    """When the daemon may first pick the job: its not_before and its retry time."""
    return min(max(job.not_before or 0.0, job.next_attempt_at or 0.0), LATEST)


def forecast(settings: Settings, store: Store, queued: list[Job], running_left_s: list[float | None],
             now: datetime, durations: QueuedDurations | None = None, *, slots: int = 1) -> dict[int, dict[str, Any]]:
    """Expected start, finish and duration of each queued job, by replaying the daemon's choice
    (the highest-priority job that is due, as one of the executor's `slots` frees, inside the run windows) with each job's expected duration from its family's history
    (`running_left_s`: what each running job has left). Unknown from the first unknown duration on;
    nothing is expected while the daemon is paused, nor for a job on hold."""
    windows = settings.schedule.parsed()
    durations = durations or QueuedDurations(settings, store)
    out: dict[int, dict[str, Any]] = {}
    paused = store.get_flag("paused") == "1"
    start = now.timestamp()
    lanes: list[float | None] = [None if paused or left is None else start + left for left in running_left_s]
    lanes += [None if paused else start] * max(0, slots - len(lanes))
    pending = [j for j in queued if j.hold is None]  # a held job starts only when released
    out.update({j.id: {"expected_start": None, "expected_finish": None, "expected_s": rounded(durations.of(j))}
                for j in queued if j.hold is not None})
    while pending:
        known = [t for t in lanes if t is not None]  # a slot whose end is unknown frees at no known time
        if not known:
            out.update({j.id: {"expected_start": None, "expected_finish": None, "expected_s": rounded(durations.of(j))}
                        for j in pending})
            break
        lane = lanes.index(min(known))
        at = first_open(windows, datetime.fromtimestamp(lanes[lane]).astimezone())
        ready = [j for j in pending if earliest(j) <= at.timestamp()]
        if not ready:
            lanes[lane] = min(earliest(j) for j in pending)
            continue
        job = ready[0]
        pending.remove(job)
        seconds = durations.of(job)
        finish = None if seconds is None else finish_time(windows, at, seconds, settings.schedule.at_window_end)
        out[job.id] = {"expected_start": iso(at.timestamp()), "expected_finish": iso(finish.timestamp()) if finish else None,
                       "expected_s": rounded(seconds)}
        lanes[lane] = finish.timestamp() if finish else None
    return out


def rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 1)


class QueuedDurations:
    """A queued job's expected seconds (mtld.estimate.rowcounts.queued_estimate) at the size it would start at.
    Row counts the cache misses are kept in memory, never saved: `mtld status` is a read."""

    def __init__(self, settings: Settings, store: Store, device: str | None = None) -> None:
        self.settings, self.store = settings, store
        self.device = device or plugin_for(settings).device  # where the executor's runs train
        self.counts = ExampleCounts(cache_file(settings))
        self.seconds: dict[int, float | None] = {}
        self.families: dict[str, tuple[list[Any], list[Any]]] = {}  # (policy history, timing records), read once

    def of(self, job: Job) -> float | None:
        if job.id not in self.seconds:
            self.seconds[job.id] = self._estimate(job)
        return self.seconds[job.id]

    def _estimate(self, job: Job) -> float | None:
        try:
            spec = spec_from_json(job.spec_json)
        except ValueError:
            return None
        fam = job_family(spec, self.device)
        if fam not in self.families:
            self.families[fam] = (family_history(self.store, fam),
                                  family_records(self.store, fam, probe_dir(self.settings)))
        history, records = self.families[fam]
        size, _ = planned_size(self.settings, history, pinned=pinned_size(job.batch_size),
                               effective_batch=spec.train.effective_batch_size, earlier=earlier_runs(self.store, job))
        progress = run_progress(Path(job.run_dir)) if job.attempts else None
        done = progress["step"] / progress["total"] if progress and progress.get("total") else 0.0
        return queued_estimate(spec, records, size, done_fraction=done, counts=self.counts)


def running_left(store: Store, job: Job, progress: dict[str, Any] | None, now: datetime,
                 durations: QueuedDurations) -> float | None:
    """Seconds the running job has left: its last ETA less the time since, else the rough estimate
    of the whole job less the time it has run; None when neither is known."""
    if progress and progress.get("eta_s") is not None and progress.get("at"):
        age = now.timestamp() - datetime.fromisoformat(progress["at"]).timestamp()
        return max(progress["eta_s"] - age, 0.0)
    run = store.latest_run(job.id)
    whole = durations.of(job)
    if whole is None or run is None:
        return None
    return max(whole - (now.timestamp() - run.started_at), 0.0)


def run_progress(run_dir: Path) -> dict[str, Any] | None:
    """The latest step.progress of a run, plus the memory level if it has been sampled."""
    log = run_dir / "run.jsonl"
    try:
        event = last_event(log, {"step.progress"}, scan_limit=2000)
        sample = last_event(log, {"memory.sample"}, scan_limit=2000) if event else None
    except OSError:  # a run folder that cannot be read has no progress to show
        return None
    if event is None:
        return None
    progress = {k: event.get(k) for k in PROGRESS_FIELDS}
    progress["at"] = event.get("ts")
    progress["memory_level"] = sample.get("pressure") if sample else None
    return progress


def collect(settings: Settings, store: Store, now: datetime | None = None, *, states: list[str] | None = None,
            every_finished: bool = False) -> dict[str, Any]:
    """What `mtld status` shows. `states`: only jobs in these states, all of them; `every_finished`: every
    finished job, not only the RECENT_FINISHED latest."""
    now = (now or datetime.now()).astimezone()
    jobs = store.list_jobs()
    running = [j for j in jobs if j.state == "running"]
    queued = sorted((j for j in jobs if j.state == "queued"), key=lambda j: (-j.priority, j.submitted_at, j.id))
    waiting = not running and any(j.hold is None and earliest(j) <= now.timestamp() for j in queued)  # for a window
    finished = sorted((j for j in jobs if j.state not in ("running", "queued") and j.removed_at is None),
                      key=lambda j: -j.updated_at)
    pid = running_pid(settings.pid_file)
    executor = plugin_for(settings)
    active, left, durations = [], [], QueuedDurations(settings, store, executor.device)
    for job in running:
        run = store.latest_run(job.id)
        view = job_view(job)
        view["run"] = run_view(run) if run else None
        view["progress"] = run_progress(Path(job.run_dir))
        active.append(view)
        left.append(running_left(store, job, view["progress"], now, durations))
    expected = forecast(settings, store, queued, left, now, durations, slots=executor.slots)
    if states:
        active = [view for view in active if view["state"] in states]
        queued = [j for j in queued if j.state in states]
        finished = [j for j in finished if j.state in states]
    shown = finished if states or every_finished else finished[:RECENT_FINISHED]
    return {
        "daemon": {"running": pid is not None, "pid": pid, "paused": store.get_flag("paused") == "1"},
        # problem: why the executor takes no runs now (a cluster that refuses the token), as the daemon found it
        "executor": {**executor.describe(), "problem": store.get_flag(PROBLEM_FLAG)},
        "counts": store.counts(),
        "states": states or None,
        "running": active,
        "queued": [{**job_view(j), **expected[j.id]} for j in queued],
        "finished": [job_view(j) for j in shown],
        "finished_hidden": len(finished) - len(shown),
        "schedule": windows_view(settings, now, waiting=waiting),
        "schedules": [schedule_view(s) for s in store.list_schedules()],
        "disk": disk_view(executor, store),
        "night_page": str(page) if (page := latest_page(settings)) else None,  # mtld report's last night page
    }


def run_view(run: Run) -> dict[str, Any]:
    """A running attempt: where it runs (the pid here), and what its executor adds (a cluster's job id, node)."""
    view: dict[str, Any] = {"id": run.id, "attempt": run.attempt, "pid": run.pid, "micro_batch": run.micro_batch,
                            "executor": run.executor, "waiting": run.waiting}  # waiting: not started on a cluster yet
    plugin = executor_kind(run.executor)
    return {**view, **plugin.describe_run(run)} if plugin is not None else view


def disk_view(executor: ExecutorPlugin, store: Store) -> dict[str, Any]:
    """The space mtld's run folders take (each run measured its folder when it ended: no folder is
    walked here) and what is free where new runs go."""
    folders, used = store.runs_disk_usage()
    return {"runs_bytes": used, "run_folders": folders, "runs_dir": str(executor.runs_dir),
            "free_bytes": free_bytes(executor.runs_dir)}
