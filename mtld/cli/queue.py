"""Commands on the queue: submit, status, show, schedules, unschedule, cancel, retry, logs."""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from mtld.cli import render
from mtld.queue import jobs
from mtld.cli.common import Context, JobId, JsonFlag, app, emit_json, fail, get_job, out
from mtld.config.jobspec import JobFileError, spec_from_json
from mtld.config.models import model_outside_job_folder
from mtld.logs.events import follow_files, format_event, read_events, snapshot, tail_events
from mtld.queue.status import job_view, schedule_view
from mtld.store import STATES, TERMINAL, InvalidTransition, Job, StoreError, UnknownJob

# ------------------------------------------------------------------ jobs


@app.command()
def submit(
    ctx: typer.Context,
    job_file: Annotated[Path, typer.Argument(help="The job file (TOML).")],
    priority: Annotated[Optional[str], typer.Option(metavar="INTEGER", help="Higher runs first (default: the file's, else 0).")] = None,
    not_before: Annotated[Optional[str], typer.Option(help="Do not start before: 2026-11-28T01:30 or 01:30.")] = None,
    batch_size: Annotated[Optional[str], typer.Option(help="auto, 2, 4 or 8 (pins the micro-batch).")] = None,
    every: Annotated[Optional[str], typer.Option(help="Recur: a cron expression, e.g. '0 1 * * *' (01:00 every night).")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Validate a job file and queue it (prints the job id), or store it as a schedule with --every."""
    c: Context = ctx.obj
    now = datetime.now(timezone.utc)
    try:
        parsed = jobs.parse_options(now=now, priority=priority, not_before=not_before, batch_size=batch_size,
                                    every=every)
        made = jobs.submit(c.settings, c.store, job_file, now=now, **parsed)
    except (JobFileError, jobs.BadOption, jobs.StoreUnavailable) as e:
        fail(str(e), code=2)
    if isinstance(made, Job):
        emit_json(job_view(made)) if as_json else out.print(made.id)
    elif as_json:
        emit_json(schedule_view(made))
    else:
        out.print(f"schedule {made.id}: {made.cron}, next at {render.local(made.next_fire_at)}", markup=False)


@app.command()
def status(
    ctx: typer.Context,
    every: Annotated[bool, typer.Option("--all", help="Every finished job, not only the 10 latest.")] = False,
    states: Annotated[Optional[list[str]], typer.Option("--state", help=f"Only jobs in this state (repeatable): {', '.join(STATES)}.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """The daemon, the running job with its progress, the queue, the latest finished jobs."""
    from mtld.queue.status import collect

    c: Context = ctx.obj
    for state in states or []:
        if state not in STATES:
            fail(f"--state: must be one of {', '.join(STATES)}, not {state!r}", code=2)
    info = collect(c.settings, c.store, states=states, every_finished=every)
    if as_json:
        emit_json(info)
    else:
        render.status(out, info)


@app.command()
def show(ctx: typer.Context, job_id: JobId, as_json: JsonFlag = False) -> None:
    """One job: its spec, runs and state history."""
    c: Context = ctx.obj
    job = get_job(c, job_id)
    runs = [r.to_dict() for r in c.store.runs_for(job_id)]
    history = [t.to_dict() for t in c.store.transitions_for(job_id)]
    try:
        spec = json.loads(spec_from_json(job.spec_json).model_dump_json())
    except ValueError:  # stored by an mtld that let through what this one refuses: shown as stored
        spec = json.loads(job.spec_json)
    model = spec.get("model") if isinstance(spec, dict) else None
    outside = model_outside_job_folder(model, job.job_file) if isinstance(model, str) else False
    view = {**job_view(job), "model_outside_job_folder": outside}
    if as_json:
        emit_json({**view, "spec": spec, "runs": runs, "transitions": history})
    else:
        render.show(out, view, spec, runs, history)


@app.command()
def schedules(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """Recurring jobs, with their next firing."""
    c: Context = ctx.obj
    views = [schedule_view(s) for s in c.store.list_schedules()]
    if as_json:
        emit_json(views)
    else:
        render.schedules(out, views)


@app.command()
def unschedule(ctx: typer.Context, schedule_id: int) -> None:
    """Remove a recurring job (jobs it already queued stay)."""
    c: Context = ctx.obj
    try:
        removed = jobs.unschedule(c.settings, c.store, schedule_id)
    except StoreError as e:
        fail(str(e))
    out.print(f"schedule {schedule_id} ({removed.name}) removed")


@app.command()
def cancel(ctx: typer.Context, job_id: JobId) -> None:
    """Cancel a job. A running job checkpoints first, then ends cancelled."""
    c: Context = ctx.obj
    try:
        job = jobs.cancel(c.settings, c.store, job_id, now=datetime.now(timezone.utc))
    except (UnknownJob, InvalidTransition) as e:
        fail(str(e))
    out.print(f"job {job.id}: {'cancelled' if job.state == 'cancelled' else 'cancel requested (it stops at its next checkpoint)'}")


@app.command()
def retry(ctx: typer.Context, job_id: JobId) -> None:
    """Queue a failed or cancelled job again (it resumes from its last checkpoint)."""
    c: Context = ctx.obj
    try:
        job = jobs.retry(c.settings, c.store, job_id, now=datetime.now(timezone.utc))
    except (UnknownJob, InvalidTransition) as e:
        fail(str(e))
    out.print(f"job {job.id}: queued")


@app.command()
def logs(
    ctx: typer.Context,
    job_id: JobId,
    follow: Annotated[bool, typer.Option("-f", "--follow", help="Keep printing until the job ends.")] = False,
    lines: Annotated[Optional[int], typer.Option("--lines", "-n", min=1, help="Only the last N events.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """A job's events from the daemon log and its run log, oldest first."""
    c: Context = ctx.obj
    job = get_job(c, job_id)
    paths = [c.settings.daemon_log, Path(job.run_dir) / "run.jsonl"]
    ends = {path: snapshot(path) for path in paths}  # read up to here, follow from here: no line falls between
    events = read_events(paths[0], match={"job_id": job_id}, since=job.submitted_at - 1, end=ends[paths[0]])
    events += tail_events(paths[1], lines, end=ends[paths[1]]) if lines else read_events(paths[1], end=ends[paths[1]])
    events.sort(key=lambda e: e.get("ts", ""))
    for event in events[-lines:] if lines else events:
        _print_event(event, as_json)
    if not follow:
        return

    def job_over() -> bool:
        return get_job(c, job_id).state in TERMINAL

    for path, event in follow_files(paths, stop=job_over, start=ends):
        if path == paths[1] or event.get("job_id") == job_id:
            _print_event(event, as_json)


def _print_event(event: dict[str, Any], as_json: bool) -> None:
    if as_json:
        sys.stdout.write(json.dumps(event, ensure_ascii=False) + "\n")
    else:
        out.print(format_event(event), markup=False)
    sys.stdout.flush()
