"""The `mtld` command: parse, call a function, render a table or JSON. Nothing else."""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from mtld import __version__, jobs
from mtld.estimating import duration_text
from mtld.jobspec import JobFileError, load_job, spec_from_json
from mtld.logs import configure, follow_files, format_event, get_logger, read_events
from mtld.settings import Settings, SettingsError, load_settings
from mtld.status import job_view, schedule_view
from mtld.store import TERMINAL, InvalidTransition, Job, Store, StoreError, UnknownJob

app = typer.Typer(
    help="Train multi-task BERT-style encoders overnight, one job at a time.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console(highlight=False, soft_wrap=True)  # soft_wrap: long lines are never broken


class Context:
    """What every command needs: settings, and the store opened on first use."""

    def __init__(self, config: Path | None):
        self.config = config
        self._settings: Settings | None = None
        self._store: Store | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            try:
                self._settings = load_settings(self.config)
            except SettingsError as e:
                fail(str(e), code=2)
            configure(self._settings.daemon_log, level=self._settings.log_level)
        return self._settings

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = Store(self.settings.db_path)
        return self._store


def fail(message: str, code: int = 1) -> None:
    sys.stderr.write(message.rstrip("\n") + "\n")  # never wrapped: one problem, one line
    raise typer.Exit(code)


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")


def version_callback(value: bool) -> None:
    if value:
        out.print(f"mtld {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    ctx: typer.Context,
    config: Annotated[Optional[Path], typer.Option("--config", envvar="MTLD_CONFIG", help="Config file (TOML).")] = None,
    version: Annotated[bool, typer.Option("--version", callback=version_callback, is_eager=True)] = False,
) -> None:
    ctx.obj = Context(config)


JsonFlag = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


# ------------------------------------------------------------------ jobs


@app.command()
def submit(
    ctx: typer.Context,
    job_file: Annotated[Path, typer.Argument(help="The job file (TOML).")],
    priority: Annotated[Optional[int], typer.Option(help="Higher runs first (default: the file's, else 0).")] = None,
    not_before: Annotated[Optional[str], typer.Option(help="Do not start before: 2026-11-28T01:30 or 01:30.")] = None,
    batch_size: Annotated[Optional[str], typer.Option(help="auto, 2, 4 or 8 (pins the micro-batch).")] = None,
    every: Annotated[Optional[str], typer.Option(help="Recur: a cron expression, e.g. '0 1 * * *' (01:00 every night).")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Validate a job file and queue it (prints the job id), or store it as a schedule with --every."""
    c: Context = ctx.obj
    now = datetime.now(timezone.utc)
    options = {"--not-before": (not_before, lambda v: jobs.parse_not_before(v, now=now)),
               "--batch-size": (batch_size, jobs.parse_batch_size), "--every": (every, jobs.parse_every)}
    parsed = {}
    for option, (value, parse) in options.items():
        try:
            parsed[option] = parse(value) if value else None
        except jobs.BadOption as e:
            fail(f"{job_file}: {option} - {e}", code=2)
    try:
        made = jobs.submit(c.settings, c.store, job_file, now=now, priority=priority, not_before=parsed["--not-before"],
                           batch_size=parsed["--batch-size"], every=parsed["--every"])
    except JobFileError as e:
        fail(str(e), code=2)
    if isinstance(made, Job):
        emit_json(job_view(made)) if as_json else out.print(made.id)
    elif as_json:
        emit_json(schedule_view(made))
    else:
        out.print(f"schedule {made.id}: {made.cron}, next at {_local(made.next_fire_at)}")


@app.command()
def status(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """The daemon, the running job with its progress, the queue, the latest finished jobs."""
    from mtld.status import collect

    c: Context = ctx.obj
    info = collect(c.settings, c.store)
    if as_json:
        emit_json(info)
        return
    d = info["daemon"]
    state = "not running" if not d["running"] else f"running (pid {d['pid']})"
    out.print(f"[bold]daemon[/]  {state}{', paused: no new jobs start' if d['paused'] else ''}")
    for job in info["running"]:
        out.print(_running_line(job))
    w = info["schedule"]
    if w["windows"]:
        when = f"inside, until {_local_iso(w['closes_at'])}" if w["inside"] else f"outside; the next opens {_local_iso(w['next_opens_at'])}"
        out.print(f"[bold]windows[/] {', '.join(w['windows'])}: {when}")
    if info["queued"]:
        out.print("[bold]queued[/]")
        out.print(_jobs_table(info["queued"], ("id", "name", "priority", "batch_size", "expected_start", "expected_finish", "last_error")))
    if info["schedules"]:
        out.print("[bold]schedules[/]")
        out.print(_jobs_table(info["schedules"], ("id", "name", "cron", "next_fire_at", "fired")))
    if info["finished"]:
        out.print("[bold]finished[/]")
        out.print(_jobs_table(info["finished"], ("id", "name", "state", "finished_at", "attempts", "last_error")))
    if not (info["running"] or info["queued"] or info["finished"]):
        out.print("No jobs. Queue one with: mtld submit JOB.toml")


def _running_line(job: dict[str, Any]) -> str:
    p = job.get("progress") or {}
    head = f"[bold]running[/] {job['id']} {job['name']}"
    if not p.get("total"):
        return f"{head}  starting (micro-batch {(job.get('run') or {}).get('micro_batch', '?')})"
    done = p["step"] / p["total"]
    bar = "#" * round(done * 24) + "-" * (24 - round(done * 24))
    eta = duration_text(p.get("eta_s"))
    memory = f"  memory {p['memory_level']}" if p.get("memory_level") else ""
    return (f"{head}  \\[{bar}] {p['step']}/{p['total']} steps  micro-batch {p['micro_batch']}  "
            f"{p['samples_per_s']} samples/s  ETA {eta}{memory}")


def _jobs_table(views: list[dict[str, Any]], columns: tuple[str, ...]) -> Table:
    table = Table(box=None, pad_edge=False)
    for column in columns:
        table.add_column(column.upper().replace("_", " "), no_wrap=column != "last_error")
    for view in views:
        cells = []
        for column in columns:
            value = view.get(column)
            if value is None and column.startswith("expected_"):
                cells.append("?")  # depends on a duration no earlier run has measured
            elif column.endswith(("_at", "not_before", "_start", "_finish")):
                cells.append(_local_iso(value))
            else:
                cells.append("" if value is None else str(value))
        table.add_row(*cells)
    return table


def _local_iso(value: str | None) -> str:
    if not value:
        return ""
    return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone().strftime("%Y-%m-%d %H:%M")


@app.command()
def show(ctx: typer.Context, job_id: int, as_json: JsonFlag = False) -> None:
    """One job: its spec, runs and state history."""
    c: Context = ctx.obj
    job = _get(c, job_id)
    runs = [r.to_dict() for r in c.store.runs_for(job_id)]
    history = [t.to_dict() for t in c.store.transitions_for(job_id)]
    spec = json.loads(spec_from_json(job.spec_json).model_dump_json())
    view = job_view(job)
    if as_json:
        emit_json({**view, "spec": spec, "runs": runs, "transitions": history})
        return
    for key in ("id", "name", "state", "priority", "batch_size", "submitted_at", "not_before", "attempts", "run_dir", "job_file", "last_error"):
        if view.get(key) not in (None, ""):
            out.print(f"[bold]{key:>12}[/]  {view[key]}")
    out.print(f"[bold]{'tasks':>12}[/]  " + ", ".join(f"{t['name']} ({t['type']})" for t in spec["tasks"]))
    for r in runs:
        sizes = str(r["micro_batch"]) + (f"→{r['micro_batch_end']}" if r["micro_batch_end"] not in (None, r["micro_batch"]) else "")
        out.print(f"[bold]{'run ' + str(r['attempt']):>12}[/]  {r['outcome'] or 'running'}  micro-batch {sizes}", markup=True)
        if r.get("start_reason"):
            out.print(f"{'':>12}  why {r['micro_batch']}: {r['start_reason']}", markup=False)
    for t in history:
        out.print(f"{'':>12}  {_local(t['at'])}  {t['from_state'] or '-'} -> {t['to_state']}  ({t['reason']})")


@app.command()
def schedules(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """Recurring jobs, with their next firing."""
    c: Context = ctx.obj
    views = [schedule_view(s) for s in c.store.list_schedules()]
    if as_json:
        emit_json(views)
    elif not views:
        out.print("No schedules. Add one with: mtld submit JOB.toml --every '0 1 * * *'")
    else:
        out.print(_jobs_table(views, ("id", "name", "cron", "next_fire_at", "last_fired_at", "fired", "job_file")))


@app.command()
def unschedule(ctx: typer.Context, schedule_id: int) -> None:
    """Remove a recurring job (jobs it already queued stay)."""
    c: Context = ctx.obj
    try:
        removed = c.store.remove_schedule(schedule_id)
    except StoreError as e:
        fail(str(e))
    get_logger(schedule_id=schedule_id).info("schedule.removed", name=removed.name)
    out.print(f"schedule {schedule_id} ({removed.name}) removed")


@app.command()
def cancel(ctx: typer.Context, job_id: int) -> None:
    """Cancel a job. A running job checkpoints first, then ends cancelled."""
    c: Context = ctx.obj
    try:
        job = jobs.cancel(c.settings, c.store, job_id, now=datetime.now(timezone.utc))
    except (UnknownJob, InvalidTransition) as e:
        fail(str(e))
    out.print(f"job {job.id}: {'cancelled' if job.state == 'cancelled' else 'cancel requested (it stops at its next checkpoint)'}")


@app.command()
def retry(ctx: typer.Context, job_id: int) -> None:
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
    job_id: int,
    follow: Annotated[bool, typer.Option("-f", "--follow", help="Keep printing until the job ends.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """A job's events from the daemon log and its run log, oldest first."""
    c: Context = ctx.obj
    job = _get(c, job_id)
    paths = [c.settings.daemon_log, Path(job.run_dir) / "run.jsonl"]
    events = read_events(paths[0], match={"job_id": job_id}, since=job.submitted_at - 1)
    events += read_events(paths[1])
    events.sort(key=lambda e: e.get("ts", ""))
    for event in events:
        _print_event(event, as_json)
    if not follow:
        return

    def job_over() -> bool:
        return _get(c, job_id).state in TERMINAL

    for path, event in follow_files(paths, stop=job_over):
        if path == paths[1] or event.get("job_id") == job_id:
            _print_event(event, as_json)


def _print_event(event: dict[str, Any], as_json: bool) -> None:
    if as_json:
        sys.stdout.write(json.dumps(event, ensure_ascii=False) + "\n")
    else:
        out.print(format_event(event), markup=False)
    sys.stdout.flush()


# ------------------------------------------------------------------ training in the foreground


@app.command()
def train(
    ctx: typer.Context,
    job_file: Annotated[Path, typer.Argument(help="The job file (TOML).")],
    out_dir: Annotated[Optional[Path], typer.Option("--out", help="Run folder (default: runs/NAME-TIME next to the job file's output). Reusing one resumes it.")] = None,
    batch_size: Annotated[Optional[str], typer.Option(help="Micro-batch 2, 4 or 8 (default: the job's, else the configured start size).")] = None,
    device: Annotated[Optional[str], typer.Option(help="auto, cpu, cuda or mps (default: the configured one).")] = None,
) -> None:
    """Run a job now, in the foreground, without the queue: the same code the daemon runs."""
    from mtld.rundir import Launch, RunDir
    from mtld.train import run_attempt

    c: Context = ctx.obj
    try:
        spec = jobs.with_overrides(load_job(job_file), priority=None, not_before=None,
                                   batch_size=jobs.parse_batch_size(batch_size) if batch_size else None)
    except JobFileError as e:
        fail(str(e), code=2)
    except jobs.BadOption as e:
        fail(f"{job_file}: --batch-size - {e}", code=2)
    if device not in (None, "auto", "cpu", "cuda", "mps"):
        fail(f"{job_file}: --device - must be auto, cpu, cuda or mps, not {device!r}", code=2)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = RunDir(out_dir or (spec.output or Path.cwd() / "runs") / f"{spec.name}-{stamp}")
    if run_dir.job_file.exists() and run_dir.read_job() != spec:
        fail(f"{run_dir.path}: holds a run of another job spec; choose another --out", code=2)
    size = spec.train.batch_size if spec.train.batch_size != "auto" else c.settings.train.start_batch_size
    run_dir.write_job(spec)
    run_dir.write_launch(Launch(micro_batch=size, device=device or c.settings.train.device,
                                memory_fraction=c.settings.memory.budget_fraction,
                                progress_every_s=c.settings.train.progress_every_s,
                                memory=c.settings.memory.model_dump(mode="json"), threads=c.settings.train.threads))
    code = run_attempt(run_dir.path, console=sys.stderr)
    result = run_dir.read_result() or {}
    sys.stderr.write(f"{result.get('outcome', 'failed')}: {run_dir.path}\n")
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
    out.print(f"{rows} rows -> {target}")


@app.command()
def estimate(
    ctx: typer.Context,
    job_file: Annotated[Path, typer.Argument(help="The job file (TOML).")],
    probe: Annotated[bool, typer.Option("--probe", help="First time a few steps at each size in a child process.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """How long the job takes at micro-batch 2, 4 and 8, and whether each fits in memory now."""
    from mtld import estimating
    from mtld.family import family, resolve_device
    from mtld.memory import make_probe

    c: Context = ctx.obj
    try:
        spec = load_job(job_file)
    except JobFileError as e:
        fail(str(e), code=2)
    device = resolve_device(c.settings.train.device)
    fam = family(spec, device)
    reading = make_probe(c.settings.memory).read()
    chosen = estimating.chosen_size(c.store, fam, c.settings, pressure=reading.level.value,
                                    available_bytes=reading.available_bytes, batch_size=spec.train.batch_size)
    if probe:
        sys.stderr.write(f"probing {spec.name}: a few timed steps at micro-batch 2, 4 and 8 in a child process "
                         "(on the demo model about 20 s)...\n")
    try:
        plan, rows = estimating.estimate_job(spec, store=c.store, family=fam, probe_dir=c.settings.state_dir / "estimates",
                                             available_bytes=reading.available_bytes, chosen=chosen, probe=probe,
                                             device=device)
    except RuntimeError as e:  # the probe child failed
        fail(f"mtld estimate: {e}")
    if as_json:
        emit_json(estimating.as_json(plan, rows))
    else:
        out.print(estimating.render_table(plan, rows), markup=False)


@app.command()
def report(
    ctx: typer.Context,
    run: Annotated[str, typer.Argument(help="A job id or a run folder.")],
    output: Annotated[Optional[Path], typer.Option("--out", "-o", help="The PNG to write (default: RUN_DIR/report.png).")] = None,
) -> None:
    """Draw a run: loss, samples/s, micro-batch and memory over time, predicted against actual duration."""
    from mtld.report import draw_report

    c: Context = ctx.obj
    run_dir = Path(_get(c, int(run)).run_dir) if run.isdigit() else Path(run)
    if not (run_dir / "run.jsonl").is_file():
        fail(f"{run_dir}: no run log (run.jsonl) there", code=2)
    out.print(str(draw_report(run_dir, output)), markup=False)


# ------------------------------------------------------------------ the daemon


@app.command()
def daemon(
    ctx: typer.Context,
    exit_when_idle: Annotated[bool, typer.Option("--exit-when-idle", help="Stop when nothing is queued or running.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No event lines on stderr (the log file has them all).")] = False,
) -> None:
    """Run the queue in the foreground (launchd and systemd run it like this)."""
    from mtld.daemon import serve
    from mtld.pidfile import AlreadyRunning

    c: Context = ctx.obj
    configure(c.settings.daemon_log, level=c.settings.log_level, console=None if quiet else sys.stderr)
    try:
        code = serve(c.settings, exit_when_idle=exit_when_idle, console=None if quiet else sys.stderr)
    except AlreadyRunning as e:
        fail(str(e))
    raise typer.Exit(code)


@app.command()
def pause(
    ctx: typer.Context,
    now: Annotated[bool, typer.Option("--now", help="Also checkpoint and requeue the running job.")] = False,
) -> None:
    """Stop taking new jobs (the running one finishes, unless --now)."""
    c: Context = ctx.obj
    c.store.set_flag("paused", "1")
    if now:
        c.store.set_flag("pause_now", "1")
    get_logger().info("daemon.paused", now=now)
    jobs.wake_daemon(c.settings)
    out.print("paused" + (": the running job checkpoints and goes back to the queue" if now else ""))


@app.command()
def resume(ctx: typer.Context) -> None:
    """Take new jobs again after `mtld pause`."""
    c: Context = ctx.obj
    c.store.set_flag("paused", None)
    c.store.set_flag("pause_now", None)
    get_logger().info("daemon.resumed")
    jobs.wake_daemon(c.settings)
    out.print("resumed")


agent_app = typer.Typer(help="Run the daemon under launchd (macOS) or a systemd user unit (Linux).", no_args_is_help=True)
app.add_typer(agent_app, name="agent")
DryRun = Annotated[bool, typer.Option("--dry-run", help="Print what would be written and run; change nothing.")]


def _agent_change(ctx: typer.Context, install: bool, dry_run: bool) -> None:
    from mtld.platform import agent

    c: Context = ctx.obj
    config = c.config.resolve() if c.config else None
    plan = agent.plan_install(c.settings, config=config) if install else agent.plan_uninstall(c.settings)
    if dry_run:
        out.print(agent.describe(plan), markup=False, highlight=False)
        return
    try:
        agent.apply(plan, agent.SubprocessRunner())
    except agent.AgentError as e:
        fail(str(e))
    get_logger().info("agent.installed" if install else "agent.uninstalled", files=[str(p) for p in plan.files] or
                      [str(p) for p in plan.remove])
    for note in plan.notes:
        out.print(note, markup=False)
    out.print("installed: the daemon now starts at login and restarts if it fails" if install else "uninstalled")


@agent_app.command("install")
def agent_install(ctx: typer.Context, dry_run: DryRun = False) -> None:
    """Write the LaunchAgent / systemd unit and start the daemon under it."""
    _agent_change(ctx, True, dry_run)


@agent_app.command("uninstall")
def agent_uninstall(ctx: typer.Context, dry_run: DryRun = False) -> None:
    """Stop the daemon's agent and remove its file."""
    _agent_change(ctx, False, dry_run)


@agent_app.command("status")
def agent_status(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """Whether the agent is installed, loaded and running."""
    from mtld.platform import agent

    info = agent.agent_status(agent.SubprocessRunner())
    if as_json:
        emit_json(info)
        return
    for key, value in info.items():
        if value not in (None, ""):
            out.print(f"[bold]{key:>10}[/]  {value}")


@app.command()
def doctor(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """What mtld sees on this machine: device, memory probe and budget, folders, the agent."""
    from mtld.doctor import diagnose

    c: Context = ctx.obj
    info = diagnose(c.settings)
    if as_json:
        emit_json(info)
        return
    for section, fields in info.items():
        out.print(f"[bold]{section}[/]")
        for key, value in fields.items():
            shown = json.dumps(value, ensure_ascii=False) if isinstance(value, (dict, list)) else value
            out.print(f"  {key:<22} {shown}", markup=False)


# ------------------------------------------------------------------ helpers


def _get(c: Context, job_id: int) -> Job:
    job = c.store.get(job_id)
    if job is None:
        fail(f"no job {job_id}")
    return job


def _local(epoch: float | None) -> str:
    if epoch is None:
        return ""
    return datetime.fromtimestamp(epoch).astimezone().strftime("%Y-%m-%d %H:%M")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
