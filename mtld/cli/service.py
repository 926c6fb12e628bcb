"""Commands on the daemon and its service: daemon, pause, resume, agent, doctor."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from mtld.cli import render
from mtld.queue import jobs
from mtld.cli.common import Context, JsonFlag, app, emit_json, fail, out
from mtld.logs.events import configure, get_logger

# ------------------------------------------------------------------ the daemon


@app.command()
def daemon(
    ctx: typer.Context,
    exit_when_idle: Annotated[bool, typer.Option("--exit-when-idle", help="Stop when nothing is queued or running.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No event lines on stderr (the log file has them all).")] = False,
) -> None:
    """Run the queue in the foreground (launchd and systemd run it like this)."""
    from mtld.daemon.loop import serve
    from mtld.platform.pidfile import AlreadyRunning

    c: Context = ctx.obj
    configure(c.settings.daemon_log, level=c.settings.log_level, console=None if quiet else sys.stderr)
    c.store.close()  # opened first so that a store which cannot be used is one line, not a crash report
    try:
        code = serve(c.settings, exit_when_idle=exit_when_idle, console=None if quiet else sys.stderr)
    except AlreadyRunning as e:
        # Exit 0: launchd's KeepAlive {SuccessfulExit: false} (launchd.plist(5)) and systemd's
        # Restart=on-failure (systemd.service(5)) start a daemon again only after a failure;
        # a non-zero exit here would respawn it every ThrottleInterval while the first one runs.
        get_logger().warning("daemon.already_running", pid=e.pid, message=f"{e}; this one exits 0 so that "
                             "launchd or systemd does not start it again")
        sys.stderr.write(f"{e}: not starting a second one\n")
        raise typer.Exit(0)
    raise typer.Exit(code)


@app.command()
def pause(
    ctx: typer.Context,
    now: Annotated[bool, typer.Option("--now", help="Also checkpoint and requeue the running job.")] = False,
) -> None:
    """Stop taking new jobs (the running one finishes, unless --now)."""
    c: Context = ctx.obj
    jobs.pause(c.settings, c.store, now=now)
    out.print("paused" + (": the running job checkpoints and goes back to the queue" if now else ""))


@app.command()
def resume(ctx: typer.Context) -> None:
    """Take new jobs again after `mtld pause`."""
    c: Context = ctx.obj
    jobs.resume(c.settings, c.store)
    out.print("resumed")


agent_app = typer.Typer(help="Run the daemon under launchd (macOS) or a systemd user unit (Linux).", no_args_is_help=True)
app.add_typer(agent_app, name="agent")
DryRun = Annotated[bool, typer.Option("--dry-run", help="Print what would be written and run; change nothing.")]


def _agent_change(ctx: typer.Context, install: bool, dry_run: bool) -> None:
    from mtld.executor.registry import plugin_for
    from mtld.platform import agent

    c: Context = ctx.obj
    config = c.config.resolve() if c.config else None
    plan = (agent.plan_install(c.settings, config=config, data_paths=_queued_paths(c),
                               setting_files=plugin_for(c.settings).setting_files()) if install
            else agent.plan_uninstall(c.settings))
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


def _queued_paths(c: Context) -> list:
    """(what, path) of every queued job's model, data and output, for the macOS privacy warning; none if
    the store cannot be read."""
    from mtld.config.jobspec import spec_from_json
    from mtld.platform.privacy import job_paths

    try:
        queued = c.store.list_jobs(["queued"])
        specs = [(job.id, spec_from_json(job.spec_json)) for job in queued]
    except Exception:  # a warning must never stop an install
        return []
    return [found for job_id, spec in specs for found in job_paths(f"job {job_id}", spec)]


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
    else:
        render.agent_status(out, info)


@app.command()
def doctor(
    ctx: typer.Context,
    as_json: JsonFlag = False,
    selftest: Annotated[bool, typer.Option("--selftest", help="Run every check this machine allows (on throwaway "
                                           "state) and write a report to attach to a bug report.")] = False,
    quick: Annotated[bool, typer.Option("--quick", help="With --selftest: the short checks only (under a minute).")] = False,
    out_file: Annotated[Optional[Path], typer.Option("--out", help="With --selftest: the report's file "
                                                     "(default: selftest/mtld-selftest-DATE.json in the state folder).")] = None,
    record_trace: Annotated[Optional[Path], typer.Option(
        "--record-trace", help="Record memory readings to FILE (JSON lines, one a second) instead.",
        metavar="FILE")] = None,
    seconds: Annotated[float, typer.Option("--seconds", min=1, help="How long --record-trace records.")] = 60.0,
    pid: Annotated[Optional[int], typer.Option("--pid", help="Whose footprint --record-trace records "
                                                             "(default: the daemon's running run).")] = None,
) -> None:
    """What mtld sees on this machine: device, memory probe and budget (and which signal decides), folders,
    the agent. With --selftest: every check this machine allows, as a report. With --record-trace: a memory
    trace of this machine, for `probe = "replay"` and the tests."""
    from mtld.doctor.diagnose import diagnose, problems, record

    c: Context = ctx.obj
    if (quick or out_file) and not selftest:
        fail("--quick and --out go with --selftest", code=2)
    if selftest and record_trace is not None:
        fail("--selftest and --record-trace: one at a time", code=2)
    if selftest:
        from mtld.cli.selftest import run

        raise typer.Exit(run(c.settings, quick=quick, out_file=out_file, as_json=as_json))
    if record_trace is not None:
        try:
            record(c.settings, record_trace, seconds=seconds, pid=pid, say=lambda line: out.print(line, markup=False))
        except (OSError, ValueError) as e:
            fail(f"--record-trace: {e}", code=2)
        return
    info = diagnose(c.settings)
    if as_json:
        emit_json(info)
    else:
        render.doctor(out, info)
    found = problems(info)
    if found:  # one line each, on stderr
        sys.stderr.write("".join(f"mtld doctor: {problem}\n" for problem in found))
        raise typer.Exit(1)
