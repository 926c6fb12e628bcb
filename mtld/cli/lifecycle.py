"""Commands on one job's life after submit: wait for it, restart it, change it while it waits."""

from __future__ import annotations

import sys
from datetime import datetime, timezone
from typing import Annotated, Optional

import typer

from mtld.cli import render
from mtld.queue import jobs
from mtld.cli.common import Context, JobId, JsonFlag, app, check_ids, emit_json, fail, out
from mtld.config.jobspec import JobFileError
from mtld.platform.pidfile import running_pid
from mtld.queue.status import job_view
from mtld.store import TERMINAL, InvalidTransition, Job, UnknownJob

Priority = Annotated[Optional[str], typer.Option(metavar="INTEGER", help="Higher runs first (-1000 to 1000).")]
NotBefore = Annotated[Optional[str], typer.Option(help="Do not start before: 2026-11-28T01:30, 01:30 or now.")]
BatchSize = Annotated[Optional[str], typer.Option(help="auto, 2, 4 or 8 (pins the micro-batch).")]


@app.command()
def wait(
    ctx: typer.Context,
    job_ids: Annotated[list[int], typer.Argument(metavar="ID...", callback=check_ids, help="Job ids.")],
    interval: Annotated[float, typer.Option(help="Seconds between looks at the queue.", min=0.1, max=3600)] = 1.0,
    as_json: JsonFlag = False,
) -> None:
    """Wait until every job has ended: exit status 0 when all succeeded, else 1 (2: an unknown id).

    A line on stderr each time a job's state changes. Any process may wait: it reads the store.
    """
    c: Context = ctx.obj

    def progress(current: list[Job | None]) -> None:
        parts = [f"{job_id} {job.state if job else 'removed'}" for job_id, job in zip(job_ids, current)]
        waiting = any(job is not None and job.state not in TERMINAL for job in current)
        note = "  (no daemon is running: start one with `mtld daemon`)" if waiting and not daemon_up() else ""
        sys.stderr.write(f"mtld wait: {', '.join(parts)}{note}\n")
        sys.stderr.flush()

    def daemon_up() -> bool:
        return running_pid(c.settings.pid_file) is not None

    try:
        ended = jobs.wait(c.store, job_ids, on_change=progress, poll_s=interval)
    except UnknownJob as e:
        fail(str(e), code=2)
    if as_json:
        emit_json([job_view(job) if job else {"id": job_id, "state": None} for job_id, job in zip(job_ids, ended)])
    else:
        for job_id, job in zip(job_ids, ended):
            detail = "removed" if job is None else job.state + (f": {job.last_error}" if job.last_error else "")
            out.print(f"job {job_id}: {detail}", markup=False)
    raise typer.Exit(jobs.wait_status(ended))


@app.command()
def restart(
    ctx: typer.Context,
    job_id: JobId,
    priority: Priority = None,
    not_before: NotBefore = None,
    batch_size: BatchSize = None,
    as_json: JsonFlag = False,
) -> None:
    """Queue a new job from a finished job's stored spec (prints the new id); the old job stays as it is."""
    c: Context = ctx.obj
    now = datetime.now(timezone.utc)
    try:
        parsed = jobs.parse_options(now=now, priority=priority, not_before=not_before, batch_size=batch_size)
        job = jobs.restart(c.settings, c.store, job_id, now=now, priority=parsed["priority"],
                           not_before=parsed["not_before"], batch_size=parsed["batch_size"])
    except (JobFileError, jobs.BadOption, jobs.StoreUnavailable) as e:
        fail(str(e), code=2)
    except (UnknownJob, InvalidTransition) as e:
        fail(str(e))
    emit_json(job_view(job)) if as_json else out.print(job.id)


@app.command("set")
def set_job(
    ctx: typer.Context,
    job_id: JobId,
    priority: Priority = None,
    not_before: NotBefore = None,
    batch_size: BatchSize = None,
    as_json: JsonFlag = False,
) -> None:
    """Change a queued job's priority, not-before time or batch size (checked like the job file's own)."""
    c: Context = ctx.obj
    if priority is None and not_before is None and batch_size is None:
        fail("mtld set: nothing to change (give --priority, --not-before or --batch-size)", code=2)
    now = datetime.now(timezone.utc)
    try:
        parsed = jobs.parse_options(now=now, priority=priority, not_before=not_before, batch_size=batch_size)
        job = jobs.change(c.settings, c.store, job_id, now=now, priority=parsed["priority"],
                          not_before=parsed["not_before"], batch_size=parsed["batch_size"])
    except (JobFileError, jobs.BadOption, jobs.StoreUnavailable) as e:
        fail(str(e), code=2)
    except (UnknownJob, InvalidTransition) as e:
        fail(str(e))
    if as_json:
        emit_json(job_view(job))
    else:
        out.print(f"job {job.id}: priority {job.priority}, batch size {job.batch_size}, "
                  f"not before {render.local(job.not_before) or '-'}", markup=False)
