"""What `mtld status` shows: the store plus the tails of the run logs.

Only the last few kilobytes of a run log are read (backwards), so this stays
fast when a log is gigabytes long.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from mtld.logs import iso, last_event
from mtld.pidfile import running_pid
from mtld.settings import Settings
from mtld.schedule import Window, inside, next_opening, open_window
from mtld.store import Job, Schedule, Store

RECENT_FINISHED = 10
PROGRESS_FIELDS = ("step", "total", "epoch", "loss", "samples_per_s", "tokens_per_s", "micro_batch", "eta_s")


def job_view(job: Job) -> dict[str, Any]:
    """The stable JSON form of a job (documented in the README)."""
    return {
        "id": job.id,
        "name": job.name,
        "state": job.state,
        "priority": job.priority,
        "batch_size": job.batch_size,
        "submitted_at": iso(job.submitted_at),
        "not_before": iso(job.not_before) if job.not_before else None,
        "updated_at": iso(job.updated_at),
        "finished_at": iso(job.finished_at) if job.finished_at else None,
        "next_attempt_at": iso(job.next_attempt_at) if job.next_attempt_at else None,
        "attempts": job.attempts,
        "cancel_requested": job.cancel_requested,
        "last_error": job.last_error,
        "run_dir": job.run_dir,
        "job_file": job.job_file,
    }


def schedule_view(schedule: Schedule) -> dict[str, Any]:
    return {
        "id": schedule.id, "name": schedule.name, "cron": schedule.cron, "priority": schedule.priority,
        "batch_size": schedule.batch_size, "next_fire_at": iso(schedule.next_fire_at),
        "last_fired_at": iso(schedule.last_fired_at) if schedule.last_fired_at else None,
        "fired": schedule.fired, "job_file": schedule.job_file, "created_at": iso(schedule.created_at),
    }


def windows_view(settings: Settings, now: datetime) -> dict[str, Any]:
    windows = settings.schedule.parsed()
    opened = open_window(windows, now)
    following = next_opening(windows, now)
    return {
        "windows": settings.schedule.windows,
        "inside": inside(windows, now),
        "closes_at": opened[1].isoformat() if opened else None,
        "next_opens_at": following.isoformat() if following else None,
        "at_window_end": settings.schedule.at_window_end,
    }


def expected_start(job: Job, windows: list[Window], now: datetime) -> str | None:
    """The earliest a queued job can start: its not_before, its retry time and the run windows."""
    earliest = max([now.timestamp(), job.not_before or 0.0, job.next_attempt_at or 0.0])
    at = datetime.fromtimestamp(earliest).astimezone()
    if not inside(windows, at):
        at = next_opening(windows, at) or at
    return iso(at.timestamp())


def run_progress(run_dir: Path) -> dict[str, Any] | None:
    """The latest step.progress of a run, plus the memory level if it has been sampled."""
    log = run_dir / "run.jsonl"
    event = last_event(log, {"step.progress"}, scan_limit=2000)
    if event is None:
        return None
    progress = {k: event.get(k) for k in PROGRESS_FIELDS}
    progress["at"] = event.get("ts")
    sample = last_event(log, {"memory.sample"}, scan_limit=2000)
    progress["memory_level"] = sample.get("pressure") if sample else None
    return progress


def collect(settings: Settings, store: Store, now: datetime | None = None) -> dict[str, Any]:
    now = (now or datetime.now()).astimezone()
    jobs = store.list_jobs()
    running = [j for j in jobs if j.state == "running"]
    queued = sorted((j for j in jobs if j.state == "queued"), key=lambda j: (-j.priority, j.submitted_at, j.id))
    finished = sorted((j for j in jobs if j.state not in ("running", "queued")), key=lambda j: -j.updated_at)
    pid = running_pid(settings.pid_file)
    windows = settings.schedule.parsed()
    active = []
    for job in running:
        run = store.latest_run(job.id)
        view = job_view(job)
        view["run"] = {"id": run.id, "attempt": run.attempt, "pid": run.pid, "micro_batch": run.micro_batch} if run else None
        view["progress"] = run_progress(Path(job.run_dir))
        active.append(view)
    return {
        "daemon": {"running": pid is not None, "pid": pid, "paused": store.get_flag("paused") == "1"},
        "counts": store.counts(),
        "running": active,
        "queued": [{**job_view(j), "expected_start": expected_start(j, windows, now)} for j in queued],
        "finished": [job_view(j) for j in finished[:RECENT_FINISHED]],
        "schedule": windows_view(settings, now),
        "schedules": [schedule_view(s) for s in store.list_schedules()],
    }
