"""What users do to jobs and the queue: submit, cancel, retry, restart, change, wait, unschedule, pause, resume.
The CLI and the tests call these.

Each operation changes the store, then writes its event to the daemon log, then
wakes the daemon when it has something to act on. `submit` also counts the
job's training rows into mtld.estimate.rowcounts' cache, so `mtld status` need not.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time as time_module
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, time, timedelta
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from mtld import MICRO_BATCH_SIZES
from mtld.config.models import model_outside_job_folder
from mtld.config.jobspec import JobSpec, load_job, spec_from_dict, spec_to_json, stored_spec
from mtld.config.sections import within_calendar
from mtld.logs.events import get_logger, iso
from mtld.executor import ClusterUnreachable
from mtld.executor.registry import plugin_for
from mtld.platform import launchd, privacy
from mtld.platform.pidfile import running_pid
from mtld.estimate.rowcounts import remember_rows
from mtld.config.calendar import ScheduleError, check_cron, next_firing
from mtld.config.settings import Settings
from mtld.disk import full_text
from mtld.store import TERMINAL, InvalidTransition, Job, Schedule, Store, UnknownJob, unavailable


class BadOption(ValueError):
    """A command-line value that cannot be used: one line, `--option: message` (exit status 2)."""

    def __init__(self, option: str, message: str):
        self.option, self.message = option, message
        super().__init__(f"{option}: {message}")


class StoreUnavailable(Exception):
    """The store could not take the change now (busy past its timeout, or its disk is full): one line, nothing
    changed."""


def parse_priority(text: str) -> int:
    """An integer as written in ASCII digits: int() would also take "１０", "1_0" and " 10 "."""
    if not re.fullmatch(r"[+-]?[0-9]+", text):
        raise BadOption("--priority", f"Input should be a valid integer, not {text!r}")
    return int(text)


def parse_not_before(text: str, *, now: datetime) -> datetime:
    """`2026-11-28T01:30` (local unless it has an offset), `01:30` (its next occurrence) or `now`. The range
    (mtld.config.sections.within_calendar) is the job file's, checked with it."""
    now = now.astimezone()
    if text == "now":
        return now
    if re.fullmatch(r"[0-9]{1,2}:[0-9]{2}", text):
        try:
            at = time.fromisoformat(text.zfill(5))
        except ValueError:
            raise BadOption("--not-before", f"not a time of day: {text!r}") from None
        candidate = now.replace(hour=at.hour, minute=at.minute, second=0, microsecond=0)
        return candidate if candidate > now else candidate + timedelta(days=1)
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise BadOption("--not-before", f"not a time: {text!r} (use 2026-11-28T01:30 or 01:30)") from None
    try:
        within_calendar(when)  # before astimezone(), which a time at the calendar's edge overflows
    except ValueError as e:
        raise BadOption("--not-before", f"{e}, not {text!r}") from None
    return when.astimezone() if when.tzinfo is None else when


def parse_batch_size(text: str) -> str:
    if text == "auto" or text in map(str, MICRO_BATCH_SIZES):  # "８" is a digit to str.isdigit()
        return text
    raise BadOption("--batch-size", f"must be auto, 2, 4 or 8, not {text!r}")


def parse_every(text: str) -> str:
    try:
        return check_cron(text)
    except ScheduleError as e:
        raise BadOption("--every", str(e)) from None


def parse_options(*, now: datetime, priority: str | None = None, not_before: str | None = None,
                  batch_size: str | None = None, every: str | None = None) -> dict[str, Any]:
    """The command line's text options, parsed; None: not given (an empty value is given, and refused)."""
    return {
        "priority": None if priority is None else parse_priority(priority),
        "not_before": None if not_before is None else parse_not_before(not_before, now=now),
        "batch_size": None if batch_size is None else parse_batch_size(batch_size),
        "every": None if every is None else parse_every(every),
    }


# Where each command-line option lands in the job spec.
OPTION_KEYS = {"--priority": ("schedule", "priority"), "--not-before": ("schedule", "not_before"),
               "--every": ("schedule", "cron"), "--batch-size": ("train", "batch_size")}


def with_overrides(spec: JobSpec, *, priority: int | None, not_before: datetime | None, batch_size: str | None,
                   every: str | None = None) -> JobSpec:
    """The spec as it will run: command-line options win over the job file, and the result goes through
    the job file's own validation (BadOption names the option that broke it)."""
    given = {"--priority": priority, "--not-before": not_before, "--every": every,
             "--batch-size": batch_size if batch_size in (None, "auto") else int(batch_size)}
    data = spec.model_dump()
    for option, value in given.items():
        if value is not None:
            section, key = OPTION_KEYS[option]
            data[section][key] = value
    try:
        return JobSpec.model_validate(data)
    except ValidationError as e:
        error = e.errors()[0]
        option = next((o for o, where in OPTION_KEYS.items() if tuple(error["loc"][:2]) == where),
                      ".".join(map(str, error["loc"])))
        raise BadOption(option, error["msg"].removeprefix("Value error, ")) from None


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
    warn: Callable[[str], None] | None = None,
    platform: str = sys.platform,
    home: Path | None = None,
) -> Job | Schedule:
    """Validate the job file and queue it, or store it as a schedule when it recurs.
    Raises JobFileError, BadOption or StoreUnavailable; nothing is queued then, and a failure after the job
    was written takes it back out (`Store.withdraw`). A hub id is stored as its snapshot folder.

    On macOS with the agent installed, what privacy protection would hide from it (the job's model, data
    and output; the agent's Python and config) is one `warn` line each (default: stderr) and logged; the
    job is queued all the same. `platform` and `home` are this machine's unless a test says otherwise."""
    spec = with_overrides(load_job(job_file), priority=priority, not_before=not_before, batch_size=batch_size,
                          every=every)
    lines = agent_privacy_warnings(spec, platform=platform, home=Path.home() if home is None else home)
    for line in lines:
        (warn or _to_stderr)(line)
    if spec.schedule.cron:
        schedule = add_schedule(settings, store, spec, job_file, now=now)
        _log_privacy(lines, get_logger(schedule_id=schedule.id))
        return schedule
    job = _queue(settings, store, spec, str(job_file.resolve()), now=now, reason="submitted")
    with _or_withdrawn(store, job):
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
        _log_privacy(lines, get_logger(job_id=job.id))
        wake_daemon(settings)
        remember_rows(settings, spec)  # after the wake-up: the daemon need not wait for the count
    return job


@contextmanager
def _or_withdrawn(store: Store, job: Job) -> Iterator[None]:
    """A failure after the job was written (nobody was told its id) takes it back out of the queue, unless a
    daemon already started it (`Store.withdraw` removes only a job that never ran)."""
    try:
        yield
    except BaseException as e:
        try:
            if store.withdraw(job.id):  # its job.submitted may be in the log already: say it went again
                get_logger(job_id=job.id).warning("job.withdrawn", error=f"{type(e).__name__}: {e}")
        except Exception:  # the store is out too: the original error is the one to report
            pass
        raise


@contextmanager
def _writing(settings: Settings, store: Store, what: str) -> Iterator[None]:
    """A store write; a store that cannot take it now (busy past its timeout, or a full disk) is one line
    saying so (StoreUnavailable), and `what` (e.g. "nothing was queued")."""
    started = time_module.monotonic()
    try:
        yield
    except Exception as e:
        why = unavailable(e, store.path)
        if why is None:
            raise
        if why == "full":
            raise StoreUnavailable(f"{store.path}: {full_text(store.path)}: {what}; free some space and try "
                                   "again") from None
        pid = running_pid(settings.pid_file)
        holder = f" (the daemon, pid {pid}, has it open)" if pid else ""
        waited = time_module.monotonic() - started
        raise StoreUnavailable(f"{store.path}: the job store is busy: another process held its write lock for "
                               f"{waited:.0f} s{holder}; {what}; try again") from None


def agent_privacy_warnings(spec: JobSpec, *, platform: str, home: Path,
                           resolve: Callable[[str], str] = os.path.realpath) -> list[str]:
    """What macOS privacy protection would hide from the installed LaunchAgent: this job's model, data and
    output, and the agent's own Python, state and config (as its plist names them). None elsewhere, or
    without an agent (a daemon started in a Terminal has the Terminal's grants)."""
    if platform != "darwin":
        return []
    agent = launchd.read_installed(home)
    if agent is None:
        return []
    program, env = agent.get("ProgramArguments") or [""], agent.get("EnvironmentVariables") or {}
    python = privacy.interpreter(str(program[0]), resolve=resolve)
    paths = [*privacy.interpreter_paths(python), *privacy.environment_paths(env), *privacy.job_paths("the job's", spec)]
    return privacy.warnings(paths, home=home, grant=python.grant, resolve=resolve)


def _to_stderr(line: str) -> None:
    sys.stderr.write(f"mtld: {line}\n")


def _log_privacy(lines: list[str], log: Any) -> None:
    if lines:
        log.warning("job.privacy_warning", warnings=[line for line in lines if line.startswith("warning:")],
                    advice=lines[-1])


def _start_after(spec: JobSpec) -> float | None:
    start_after = spec.schedule.not_before
    if start_after is not None and start_after.tzinfo is None:
        start_after = start_after.astimezone()  # a TOML local date-time means local time
    return start_after.timestamp() if start_after else None


def _queue(settings: Settings, store: Store, spec: JobSpec, job_file: str, *, now: datetime, reason: str) -> Job:
    with _writing(settings, store, "nothing was queued"):
        return store.submit(
            name=spec.name,
            spec_json=spec_to_json(spec),
            job_file=job_file,
            priority=spec.schedule.priority,
            not_before=_start_after(spec),
            batch_size=str(spec.train.batch_size),
            run_root=str(spec.output or plugin_for(settings).runs_dir),
            now=now.timestamp(),
            reason=reason,
        )


def add_schedule(settings: Settings, store: Store, spec: JobSpec, job_file: Path, *, now: datetime) -> Schedule:
    local_now = now.astimezone()
    first = next_firing(spec.schedule.cron, local_now)
    with _writing(settings, store, "no schedule was added"):
        schedule = store.add_schedule(
            name=spec.name, cron=spec.schedule.cron, spec_json=spec_to_json(spec), job_file=str(job_file.resolve()),
            run_root=str(spec.output or plugin_for(settings).runs_dir), priority=spec.schedule.priority,
            batch_size=str(spec.train.batch_size), next_fire_at=first.timestamp(), now=now.timestamp(),
        )
    try:
        get_logger(schedule_id=schedule.id).info("schedule.added", name=schedule.name, cron=schedule.cron,
                                                 next_fire_at=iso(schedule.next_fire_at))
        wake_daemon(settings)
        remember_rows(settings, spec)
    except BaseException:  # nobody was told its id: take it back out
        try:
            store.remove_schedule(schedule.id)
        except Exception:
            pass
        raise
    return schedule


def unschedule(settings: Settings, store: Store, schedule_id: int) -> Schedule:
    """Remove a recurring job (the jobs it already queued stay). Raises StoreError when there is none.
    The daemon is not woken: it reads the schedules at each tick and finds this one gone."""
    removed = store.remove_schedule(schedule_id)
    get_logger(schedule_id=schedule_id).info("schedule.removed", name=removed.name)
    return removed


def cancel(settings: Settings, store: Store, job_id: int, *, now: datetime) -> Job:
    """Cancel a queued job now; ask the daemon to stop a running one (it checkpoints first). With no
    daemon, nobody would ever act on the request: stop the run's child if it is still alive, and cancel here."""
    job = store.cancel(job_id, now=now.timestamp())
    log = get_logger(job_id=job.id)
    if job.state == "cancelled":
        log.info("job.cancelled", reason="user")
    elif running_pid(settings.pid_file) is None:
        try:
            stopped = _stop_unwatched_child(settings, store, job)
        except ClusterUnreachable as e:  # its run may still train there: the request stays for the next daemon
            log.warning("job.cancel_requested", state=job.state, error=str(e))
            return job  # the next daemon stops the run once the cluster answers
        job = store.cancel_unwatched(job_id, now=now.timestamp())
        log.info("job.cancelled", reason="user; no daemon was running", child="stopped" if stopped else "gone")
    else:
        log.info("job.cancel_requested", state=job.state)
        wake_daemon(settings)
    return job


def _stop_unwatched_child(settings: Settings, store: Store, job: Job) -> bool:
    """Stop the job's open run if it still runs (SIGTERM here, Ray's stop on a cluster: it checkpoints and
    exits): True if it did. ClusterUnreachable when its cluster does not answer (it may still train there)."""
    from mtld.executor.registry import make_executor

    for run in store.runs_for(job.id):
        if run.ended_at is None:
            handle = make_executor(settings, run.executor).adopt(run, Path(job.run_dir))
            if handle is not None and handle.poll() is None:
                handle.signal(signal.SIGTERM)
                return True
    return False


def retry(settings: Settings, store: Store, job_id: int, *, now: datetime) -> Job:
    """Queue a failed or cancelled job again; it resumes from its last checkpoint."""
    job = store.retry(job_id, now=now.timestamp())
    get_logger(job_id=job.id).info("job.retried")
    wake_daemon(settings)
    return job


def restart(settings: Settings, store: Store, job_id: int, *, now: datetime, priority: int | None = None,
            not_before: datetime | None = None, batch_size: str | None = None) -> Job:
    """A new job from a finished job's stored spec, checked again like a job file (its data and model
    must still be there). Raises UnknownJob, InvalidTransition, JobFileError, BadOption."""
    old = store.get(job_id)
    if old is None:
        raise UnknownJob(job_id)
    if old.state not in TERMINAL:
        raise InvalidTransition(f"job {job_id} is {old.state}; only a finished job can be restarted")
    raw = json.loads(old.spec_json)
    raw.get("schedule", {}).pop("cron", None)  # a fired job's spec names its schedule's cron: a restart runs once
    spec = spec_from_dict(raw, base_dir=Path(old.job_file).parent, shown_as=f"job {job_id}", stored=True)
    spec = with_overrides(spec, priority=priority, not_before=not_before, batch_size=batch_size)
    job = _queue(settings, store, spec, old.job_file, now=now, reason=f"restarted from job {job_id}")
    with _or_withdrawn(store, job):
        get_logger(job_id=job.id).info("job.restarted", name=job.name, from_job=job_id, priority=job.priority,
                                       batch_size=job.batch_size)
        wake_daemon(settings)
    return job


def change(settings: Settings, store: Store, job_id: int, *, now: datetime, priority: int | None = None,
           not_before: datetime | None = None, batch_size: str | None = None) -> Job:
    """Change a queued job's priority, not-before time or batch size, through the job file's validation.
    Raises UnknownJob, InvalidTransition (not queued), BadOption, JobFileError (a stored spec no longer valid)."""
    job = store.get(job_id)
    if job is None:
        raise UnknownJob(job_id)
    spec = with_overrides(stored_spec(job.spec_json, shown_as=f"job {job_id}"), priority=priority, not_before=not_before,
                          batch_size=batch_size)
    with _writing(settings, store, "nothing was changed"):
        changed = store.change_queued(job_id, spec_json=spec_to_json(spec), priority=spec.schedule.priority,
                                      not_before=_start_after(spec), batch_size=str(spec.train.batch_size),
                                      now=now.timestamp())
    get_logger(job_id=job_id).info("job.changed", priority=changed.priority, batch_size=changed.batch_size,
                                   not_before=iso(changed.not_before) if changed.not_before else None)
    wake_daemon(settings)
    return changed


def wait(store: Store, job_ids: list[int], *, on_change: Callable[[list[Job | None]], None], poll_s: float = 1.0,
         sleep: Callable[[float], None] = time_module.sleep) -> list[Job | None]:
    """Block until every job has ended (None: removed meanwhile); `on_change` hears each new set of states.
    Reads the store only, so any process may wait, not just the daemon's parent. Raises UnknownJob first."""
    for job_id in job_ids:
        if store.get(job_id) is None:
            raise UnknownJob(job_id)
    seen = None
    while True:
        current = [store.get(job_id) for job_id in job_ids]
        states = [job.state if job else None for job in current]
        if states != seen:
            on_change(current)
            seen = states
        if all(state in TERMINAL or state is None for state in states):
            return current
        sleep(poll_s)


def wait_status(ended: list[Job | None]) -> int:
    """`mtld wait`'s exit status: 0 when every job succeeded, else 1."""
    return 0 if all(job is not None and job.state == "succeeded" for job in ended) else 1


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
