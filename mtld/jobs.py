"""What users do to jobs and the queue: submit, cancel, retry, unschedule, pause, resume.
The CLI and the tests call these.

Each operation changes the store, then writes its event to the daemon log, then
wakes the daemon when it has something to act on. `submit` also counts the
job's training rows into mtld.rowcounts' cache, so `mtld status` need not.
"""

from __future__ import annotations

import os
import re
import signal
from datetime import datetime, time, timedelta, timezone
from pathlib import Path

from mtld import MICRO_BATCH_SIZES
from mtld.jobspec import JobSpec, load_job, model_outside_job_folder, spec_to_json
from mtld.logs import get_logger, iso
from mtld.pidfile import running_pid
from mtld.rowcounts import remember_rows
from mtld.schedule import ScheduleError, cron_trigger, next_firing
from mtld.settings import Settings
from mtld.store import Job, Schedule, Store


class BadOption(ValueError):
    """A command-line value that cannot be used (reported like a job file problem)."""


def parse_not_before(text: str, *, now: datetime) -> datetime:
    """`2026-11-28T01:30` (local unless it has an offset) or `01:30` (its next occurrence)."""
    now = now.astimezone()
    if re.fullmatch(r"\d{1,2}:\d{2}", text):
        try:
            at = time.fromisoformat(text.zfill(5))
        except ValueError:
            raise BadOption(f"not a time of day: {text!r}") from None
        candidate = now.replace(hour=at.hour, minute=at.minute, second=0, microsecond=0)
        return candidate if candidate > now else candidate + timedelta(days=1)
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise BadOption(f"not a time: {text!r} (use 2026-11-28T01:30 or 01:30)") from None
    return when.astimezone() if when.tzinfo is None else when


def parse_batch_size(text: str) -> str:
    if text == "auto" or (text.isdigit() and int(text) in MICRO_BATCH_SIZES):
        return text
    raise BadOption(f"batch size must be auto, 2, 4 or 8, not {text!r}")


def with_overrides(spec: JobSpec, *, priority: int | None, not_before: datetime | None, batch_size: str | None,
                   every: str | None = None) -> JobSpec:
    """The spec as it will run: command-line options win over the job file."""
    schedule = spec.schedule.model_copy(update={
        k: v for k, v in (("priority", priority), ("not_before", not_before), ("cron", every)) if v is not None
    })
    train = spec.train
    if batch_size is not None:
        train = train.model_copy(update={"batch_size": batch_size if batch_size == "auto" else int(batch_size)})
    return spec.model_copy(update={"schedule": schedule, "train": train})


def parse_every(text: str) -> str:
    try:
        cron_trigger(text, timezone.utc)
    except ScheduleError as e:
        raise BadOption(str(e)) from None
    return text


def submit(
    settings: Settings,
    store: Store,
    job_file: Path,
    *,
    now: datetime,
    priority: int | None = None,
    not_before: datetime | None = None,
    batch_size: str | None = None,
    every: str | None = None,
) -> Job | Schedule:
    """Validate the job file and queue it, or store it as a schedule when it recurs.
    Raises JobFileError; nothing is queued then."""
    spec = with_overrides(load_job(job_file), priority=priority, not_before=not_before, batch_size=batch_size,
                          every=every)
    if spec.schedule.cron:
        return add_schedule(settings, store, spec, job_file, now=now)
    start_after = spec.schedule.not_before
    if start_after is not None and start_after.tzinfo is None:
        start_after = start_after.astimezone()  # a TOML local date-time means local time
    job = store.submit(
        name=spec.name,
        spec_json=spec_to_json(spec),
        job_file=str(job_file.resolve()),
        priority=spec.schedule.priority,
        not_before=start_after.timestamp() if start_after else None,
        batch_size=str(spec.train.batch_size),
        run_root=str(spec.output or settings.runs_dir),
        now=now.timestamp(),
    )
    get_logger(job_id=job.id).info(
        "job.submitted",
        name=job.name,
        priority=job.priority,
        not_before=iso(job.not_before) if job.not_before else None,
        batch_size=job.batch_size,
        tasks=[t.name for t in spec.tasks],
        job_file=job.job_file,
    )
    if model_outside_job_folder(spec.model, job.job_file):  # accepted; `mtld show` says so too
        get_logger(job_id=job.id).warning("job.model_outside", model=spec.model, job_file=job.job_file)
    wake_daemon(settings)
    remember_rows(settings, spec)  # after the wake-up: the daemon need not wait for the count
    return job


def add_schedule(settings: Settings, store: Store, spec: JobSpec, job_file: Path, *, now: datetime) -> Schedule:
    local_now = now.astimezone()
    first = next_firing(spec.schedule.cron, local_now)
    schedule = store.add_schedule(
        name=spec.name, cron=spec.schedule.cron, spec_json=spec_to_json(spec), job_file=str(job_file.resolve()),
        run_root=str(spec.output or settings.runs_dir), priority=spec.schedule.priority,
        batch_size=str(spec.train.batch_size), next_fire_at=first.timestamp(), now=now.timestamp(),
    )
    get_logger(schedule_id=schedule.id).info("schedule.added", name=schedule.name, cron=schedule.cron,
                                             next_fire_at=iso(schedule.next_fire_at))
    wake_daemon(settings)
    remember_rows(settings, spec)
    return schedule


def unschedule(settings: Settings, store: Store, schedule_id: int) -> Schedule:
    """Remove a recurring job (the jobs it already queued stay). Raises StoreError when there is none.
    The daemon is not woken: it reads the schedules at each tick and finds this one gone."""
    removed = store.remove_schedule(schedule_id)
    get_logger(schedule_id=schedule_id).info("schedule.removed", name=removed.name)
    return removed


def fired_job_name(name: str, at: datetime) -> str:
    """Each firing's job (and so its run folder) is dated: reviews-20261128-0100."""
    return f"{name}-{at.astimezone():%Y%m%d-%H%M}"


def cancel(settings: Settings, store: Store, job_id: int, *, now: datetime) -> Job:
    """Cancel a queued job now; ask the daemon to stop a running one (it checkpoints first)."""
    job = store.cancel(job_id, now=now.timestamp())
    log = get_logger(job_id=job.id)
    if job.state == "cancelled":
        log.info("job.cancelled", reason="user")
    else:
        log.info("job.cancel_requested", state=job.state)
        wake_daemon(settings)
    return job


def retry(settings: Settings, store: Store, job_id: int, *, now: datetime) -> Job:
    """Queue a failed or cancelled job again; it resumes from its last checkpoint."""
    job = store.retry(job_id, now=now.timestamp())
    get_logger(job_id=job.id).info("job.retried")
    wake_daemon(settings)
    return job


def pause(settings: Settings, store: Store, *, now: bool = False) -> None:
    """Stop taking new jobs; `now`: also checkpoint the running job and put it back in the queue."""
    store.set_flag("paused", "1")
    if now:
        store.set_flag("pause_now", "1")
    get_logger().info("daemon.paused", now=now)
    wake_daemon(settings)


def resume(settings: Settings, store: Store) -> None:
    """Take new jobs again after `pause`."""
    store.set_flag("paused", None)
    store.set_flag("pause_now", None)
    get_logger().info("daemon.resumed")
    wake_daemon(settings)


def wake_daemon(settings: Settings) -> bool:
    """Poke the daemon (SIGUSR1) so it looks at the queue now instead of at its next tick."""
    pid = running_pid(settings.pid_file)
    if pid is None:
        return False
    try:
        os.kill(pid, signal.SIGUSR1)
    except ProcessLookupError:
        return False
    return True
