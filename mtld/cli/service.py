"""Commands on the daemon and its service: daemon, pause, resume, agent, doctor."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from mtld import jobs, render
from mtld.cli import Context, JsonFlag, app, emit_json, fail, out
from mtld.logs import configure, get_logger

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
    else:
        render.agent_status(out, info)


@app.command()
def doctor(
    ctx: typer.Context,
    as_json: JsonFlag = False,
    record_trace: Annotated[Path | None, typer.Option(
        "--record-trace", help="Record memory readings to FILE (JSON lines, one a second) instead.",
        metavar="FILE")] = None,
    seconds: Annotated[float, typer.Option("--seconds", min=1, help="How long --record-trace records.")] = 60.0,
    pid: Annotated[int | None, typer.Option("--pid", help="Whose footprint --record-trace records "
                                                          "(default: the daemon's running run).")] = None,
) -> None:
    """What mtld sees on this machine: device, memory probe and budget (and which signal decides), folders,
    the agent. With --record-trace: a memory trace of this machine, for `probe = "replay"` and the tests."""
    from mtld.doctor import diagnose, record

    c: Context = ctx.obj
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
