"""Commands that train or read a model in the foreground: train, predict, estimate, report."""

from __future__ import annotations

import os
import sys
from datetime import datetime
from pathlib import Path
from typing import Annotated, Optional

import typer

from mtld.cli import render
from mtld.queue import jobs
from mtld.cli.common import Context, JsonFlag, app, emit_json, fail, get_job, out
from mtld.config.jobspec import JobFileError, load_job
from mtld.runs import exitcodes

# ------------------------------------------------------------------ training in the foreground


@app.command()
def train(
    ctx: typer.Context,
    job_file: Annotated[Path, typer.Argument(help="The job file (TOML).")],
    out_dir: Annotated[Optional[Path], typer.Option("--out", help="Run folder (default: runs/NAME-TIME next to the job file's output). Reusing one resumes it.")] = None,
    batch_size: Annotated[Optional[str], typer.Option(help="Micro-batch 2, 4 or 8 (default: the job's, else the configured start size).")] = None,
    device: Annotated[Optional[str], typer.Option(help="auto, cpu, cuda or mps (default: the configured one).")] = None,
) -> None:
    """Run a job now, in the foreground, without the queue: the same code the daemon runs, at the size it
    would start at (the family's history, the memory now)."""
    from mtld.decide.family import pinned_size, start_size
    from mtld.estimate.history import family_figures, family_history, job_family, probe_dir
    from mtld.memory import make_probe
    from mtld.platform.machine import guess_device
    from mtld.runs.files import launch_for
    from mtld.runs.rundir import RunDir, RunDirRefused
    from mtld.train import run_attempt

    c: Context = ctx.obj
    try:
        spec = jobs.with_overrides(load_job(job_file), priority=None, not_before=None,
                                   batch_size=None if batch_size is None else jobs.parse_batch_size(batch_size))
    except JobFileError as e:
        fail(str(e), code=2)
    except jobs.BadOption as e:
        fail(str(e), code=2)
    if device not in (None, "auto", "cpu", "cuda", "mps"):
        fail(f"{job_file}: --device - must be auto, cpu, cuda or mps, not {device!r}", code=2)
    device = device or c.settings.train.device
    fam = job_family(spec, guess_device(device))
    try:
        reading = make_probe(c.settings.memory).read()
    except Exception:  # an unreadable level never holds a run (as in the daemon)
        reading = None
    start = start_size(c.settings, family_history(c.store, fam), pinned=pinned_size(spec.train.batch_size),
                       effective_batch=spec.train.effective_batch_size, reading=reading)
    if start.micro_batch is None:
        fail(f"mtld train: not starting now: {start.reason} (the daemon would wait too)", code=exitcodes.INTERRUPTED)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = RunDir(out_dir or (spec.output or Path.cwd() / "runs") / f"{spec.name}-{stamp}")
    os.umask(0o077)  # as in the daemon's child: whatever the run creates is user-only
    try:  # only a folder `mtld train` made for this job, or an empty one: nothing placed there by others is loaded
        run_dir.claim({"job_id": None, "name": spec.name}, adopt_empty=True)
    except RunDirRefused as e:
        fail(f"{job_file}: --out - {e}", code=2)
    if run_dir.job_file.exists() and run_dir.read_job() != spec:
        fail(f"{run_dir.path}: holds a run of another job spec; choose another --out", code=2)
    sys.stderr.write(f"micro-batch {start.micro_batch}: {start.reason}\n")
    history = family_figures(c.store, fam, probe_dir(c.settings))
    run_dir.write_job(spec)
    run_dir.write_launch(launch_for(c.settings, micro_batch=start.micro_batch, device=device, history=history,
                                    generation=run_dir.next_generation()))  # an earlier `mtld train` there stops
    code = run_attempt(run_dir.path, console=sys.stderr)
    result = run_dir.read_result()
    sys.stderr.write(f"{result.outcome if result else 'failed'}: {run_dir.path}\n")
    raise typer.Exit(code)


@app.command()
def predict(
    run_dir: Annotated[Path, typer.Argument(help="A run folder (its best model), or a model folder.")],
    input_file: Annotated[Path, typer.Argument(help="JSON lines with the fields the tasks read.")],
    output: Annotated[Optional[Path], typer.Option("--out", "-o", help="Where to write (default: INPUT.predictions.jsonl).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or mps.")] = "auto",
) -> None:
    """Predict every task for each row of INPUT with a trained model."""
    from mtld.train.errors import BadInput
    from mtld.train.predict import predict as run_predict

    target = output or input_file.with_suffix(".predictions.jsonl")
    try:
        rows = run_predict(run_dir, input_file, target, device=device)
    except (BadInput, FileNotFoundError) as e:
        fail(str(e), code=2)
    out.print(f"{rows} rows -> {target}", markup=False)


@app.command()
def estimate(
    ctx: typer.Context,
    job_file: Annotated[Path, typer.Argument(help="The job file (TOML).")],
    probe: Annotated[bool, typer.Option("--probe", help="First time a few steps at each size in a child process.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """How long the job takes at micro-batch 2, 4 and 8, and whether each fits in memory now."""
    from mtld.estimate.job import estimate_job
    from mtld.executor.registry import plugin_for

    c: Context = ctx.obj
    try:
        spec = load_job(job_file)
    except JobFileError as e:
        fail(str(e), code=2)
    settings, store = c.settings, c.store  # opened (and any config error reported) before the probe message
    if probe:
        sys.stderr.write(f"probing {spec.name}: a few timed steps at micro-batch 2, 4 and 8 in a child process "
                         "(on the demo model about 20 s)...\n")
    try:
        plan, rows, compiled = estimate_job(spec, settings, store, device=plugin_for(settings).device, probe=probe)
    except RuntimeError as e:  # the probe child failed
        fail(f"mtld estimate: {e}")
    if as_json:
        emit_json(render.estimate_json(plan, rows, compiled))
    else:
        out.print(render.estimate_table(plan, rows, compiled), markup=False)


@app.command()
def report(
    ctx: typer.Context,
    run: Annotated[Optional[str], typer.Argument(help="A job id or a run folder: that run's figure (PNG). Without it: "
                                                 "the night's page (HTML).")] = None,
    since: Annotated[Optional[str], typer.Option("--since", help="The night's page from this long ago (12h, 90m) or "
                                                 "this local time (2026-12-01T21:00); default: since the queue last "
                                                 "went from empty to busy.")] = None,
    output: Annotated[Optional[Path], typer.Option("--out", "-o", help="The file to write (default: RUN_DIR/report.png "
                                                   "for a run; STATE/reports/night-DATE-TIME.html for the night).")] = None,
) -> None:
    """Draw a run (scores, micro-batch and why it changed, loss, samples/s, memory, predicted against actual
    duration), or, without RUN, write the night's page: what ran, how it went, what needs you."""
    c: Context = ctx.obj
    if run is None:
        night_page(c, since, output)
        return
    if since is not None:
        fail("--since: the night's page covers every job; give it without a RUN", code=2)
    from mtld.report.figure import draw_report

    run_dir = Path(get_job(c, int(run)).run_dir) if run.isdigit() else Path(run)
    if not (run_dir / "run.jsonl").is_file():
        fail(f"{run_dir}: no run log (run.jsonl) there", code=2)
    out.print(str(draw_report(run_dir, output)), markup=False)


def night_page(c: Context, since: str | None, output: Path | None) -> None:
    from mtld.report.nightly import write_night

    now = datetime.now().astimezone()
    try:
        start = None if since is None else since_time(since, now)
    except ValueError as e:
        fail(f"--since: {e}", code=2)
    page, _ = write_night(c.settings, c.store, since=start, until=now.timestamp(), out=output)
    out.print(str(page), markup=False)


def since_time(text: str, now: datetime) -> float:
    """`--since`: a duration back from now (12h, 90m) or a time (ISO 8601; without a zone, local)."""
    from mtld.config.durations import parse_duration

    try:
        return now.timestamp() - parse_duration(text)
    except ValueError:
        pass
    try:
        at = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"not a duration (12h, 90m) nor a time (2026-12-01T21:00): {text!r}") from None
    at = at if at.tzinfo else at.astimezone()  # a time without a zone is this machine's local time
    if at > now:
        raise ValueError(f"{text!r} is in the future")
    return at.timestamp()
