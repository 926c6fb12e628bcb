"""`mtld agent install|uninstall|status`: run `mtld daemon` under the user's service manager.

Planning is pure: `plan_install` / `plan_uninstall` turn settings and the
facts of this machine (platform, interpreter, uid, home, environment) into an
`AgentPlan` of files to write or remove and commands to run. `describe` prints
a plan (`--dry-run`); `apply` carries it out through a Runner. So everything
but the service manager's own behaviour is checked on any machine.
"""

from __future__ import annotations

import math
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping

from mtld.config.settings import FORCED_STOP_GRACE_S, Settings, platform_dirs
from mtld.disk import private_dir, write_atomic
from mtld.platform import launchd, privacy, systemd
from mtld.platform.runner import Result, Runner, SubprocessRunner

__all__ = [
    "AgentError", "AgentPlan", "Command", "WaitUntilGone", "Runner", "SubprocessRunner", "Result",
    "plan_install", "plan_uninstall", "agent_status", "apply", "describe", "stop_grace_s",
]

# Settings the agent must share with the shell that installed it, so both see the same state.
CARRIED_ENV = ("MTLD_HOME", "MTLD_CONFIG")

EXAMPLE_HOME = Path("/Users/you")  # the placeholder user of launchd/io.mtld.daemon.plist
EXAMPLE_PYTHON = "/Users/you/.venv/bin/python"


class AgentError(Exception):
    """The agent cannot be installed, removed or queried; the message says what failed."""


@dataclass(frozen=True)
class Command:
    argv: list[str]
    check: bool = True  # False: a failure is expected and ignored (bootout of an agent not loaded)
    before_files: bool = False  # run before files are written or removed (stop the old agent first)
    retries: int = 0  # extra tries after a failure, `retry_delay_s` apart
    retry_delay_s: float = 0.0


@dataclass(frozen=True)
class WaitUntilGone:
    """Run `argv` until it fails (the service is no longer known), at most `timeout_s` seconds.

    `launchctl bootout` returns once launchd accepted the request, not once the
    job exited (it shows `state = SIGTERMed` meanwhile, and a `bootstrap` of the
    same label fails with "5: Input/output error" until it is gone).
    """

    argv: list[str]
    timeout_s: float
    interval_s: float = 0.5
    before_files: bool = True


@dataclass
class AgentPlan:
    files: dict[Path, bytes] = field(default_factory=dict)
    remove: list[Path] = field(default_factory=list)
    commands: list[Command | WaitUntilGone] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    dirs: list[Path] = field(default_factory=list)  # created first; launchd does not create log folders


STOP_MARGIN_S = 10  # for recording the exit in the store and the log after the child is gone
WAIT_MARGIN_S = 10  # beyond the service manager's own SIGKILL, before we give up waiting for it


def stop_grace_s(settings: Settings) -> int:
    """Seconds the service manager waits after SIGTERM before SIGKILL: longer than the daemon's
    worst-case stop (wait for the child's checkpoint, SIGKILL it and wait again, record) plus a margin."""
    return math.ceil(settings.daemon.stop_timeout_s + FORCED_STOP_GRACE_S) + STOP_MARGIN_S


# ------------------------------------------------------------------ planning


def plan_install(
    settings: Settings,
    *,
    platform: str = sys.platform,
    python: str | None = None,
    uid: int | None = None,
    home: Path | None = None,
    env: Mapping[str, str] | None = None,
    config: Path | None = None,
    data_paths: Iterable[tuple[str, Path]] = (),
) -> AgentPlan:
    """What installing (or reinstalling) the agent writes and runs; None means this process's value.

    `config` is a config file named with --config; it is carried as MTLD_CONFIG.
    `data_paths` are (what, path) the daemon will read (queued jobs' data): on
    macOS, those that privacy protection hides from agents get a warning.
    """
    manager = _manager(platform)
    python = _interpreter(python)
    uid, home, env = _where(uid, home, env)
    program = [python, "-m", "mtld", "daemon"]
    service_env = _service_env(python, platform, env, config)
    grace = stop_grace_s(settings)
    if manager == "launchd":
        state_dir, log_dir = _places(settings, platform, home, env)
        plist = launchd.plist_path(home)
        state = Path(service_env["MTLD_HOME"]) if service_env.get("MTLD_HOME") else state_dir  # what the agent uses
        warnings = privacy.agent_warnings([("MTLD_HOME", state), *data_paths], home=home, python=python)
        return AgentPlan(
            dirs=[log_dir],
            files={plist: launchd.render_plist(program, service_env, log_dir, grace)},
            # No `kickstart -k` after bootstrap: KeepAlive implies RunAtLoad (launchd.plist(5),
            # SuccessfulExit), so bootstrap starts the daemon, and -k would kill it (launchctl(1)).
            commands=[
                *_launchd_stop(uid, grace),
                # launchd may still be releasing the label ("Bootstrap failed: 5").
                Command(launchd.bootstrap_argv(uid, plist), retries=3, retry_delay_s=2.0),
            ],
            notes=[
                *warnings,
                f"mtld daemon starts at login and again after a crash; its output goes to {log_dir}.",
                "Remove it with `mtld agent uninstall`.",
            ],
        )
    unit = systemd.unit_path(home, env)
    return AgentPlan(
        files={unit: systemd.render_unit(program, service_env, grace).encode()},
        commands=[
            Command(systemd.systemctl("daemon-reload")),
            Command(systemd.systemctl("enable", systemd.UNIT)),
            Command(systemd.systemctl("restart", systemd.UNIT)),  # starts it, or picks up a changed unit
        ],
        notes=[
            "systemd stops user services when you log out and starts them only when you log in. To keep "
            "mtld training while you are logged out, and to start it at boot, run once: loginctl enable-linger",
            f"Its output goes to the journal: journalctl --user -u {systemd.UNIT}",
            "Remove it with `mtld agent uninstall`.",
        ],
    )


def plan_uninstall(
    settings: Settings,
    *,
    platform: str = sys.platform,
    uid: int | None = None,
    home: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> AgentPlan:
    """Stop the agent (it checkpoints a running job) and remove its file; state and logs stay."""
    manager = _manager(platform)
    uid, home, env = _where(uid, home, env)
    state, logs = _places(settings, platform, home, env)
    kept = f"Jobs and checkpoints stay in {state}, logs in {logs}."
    if manager == "launchd":
        return AgentPlan(
            commands=_launchd_stop(uid, stop_grace_s(settings)),
            remove=[launchd.plist_path(home)],
            notes=[kept],
        )
    return AgentPlan(
        commands=[
            Command(systemd.systemctl("disable", "--now", systemd.UNIT), check=False, before_files=True),
            Command(systemd.systemctl("daemon-reload")),
        ],
        remove=[systemd.unit_path(home, env)],
        notes=[kept],
    )


def _launchd_stop(uid: int, grace: int) -> list[Command | WaitUntilGone]:
    """bootout (fails harmlessly when not loaded), then wait until launchd has let the old daemon go:
    it gets SIGTERM, then SIGKILL after ExitTimeOut (`grace`), so this is bounded."""
    return [
        Command(launchd.bootout_argv(uid), check=False, before_files=True),
        WaitUntilGone(launchd.print_argv(uid), timeout_s=grace + WAIT_MARGIN_S),
    ]


def agent_status(
    runner: Runner,
    *,
    platform: str = sys.platform,
    uid: int | None = None,
    home: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> dict:
    """Is the agent's file there, is it loaded, is the daemon running (and its pid)."""
    manager = _manager(platform)
    uid, home, env = _where(uid, home, env)
    if manager == "launchd":
        path, name = launchd.plist_path(home), launchd.LABEL
        result = runner.run(launchd.print_argv(uid))
        facts = launchd.parse_print(result.returncode, result.stdout)
        quiet = {0, 113}  # 113: launchctl's "Could not find service"
    else:
        path, name = systemd.unit_path(home, env), systemd.UNIT
        result = runner.run(systemd.show_argv())
        facts = systemd.parse_show(result.returncode, result.stdout)
        quiet = {0}
    error = None if result.returncode in quiet else (result.stderr.strip() or f"exit status {result.returncode}")
    return {"manager": manager, "name": name, "file": str(path), "installed": path.is_file(), **facts,
            "error": error}


def _manager(platform: str) -> str:
    if platform == "darwin":
        return "launchd"
    if platform.startswith("linux"):
        return "systemd"
    raise AgentError(f"mtld agent supports macOS (launchd) and Linux (systemd), not {platform}")


def _where(uid, home, env) -> tuple[int, Path, Mapping[str, str]]:
    return (
        os.getuid() if uid is None else uid,
        Path.home() if home is None else home,
        os.environ if env is None else env,
    )


def _interpreter(python: str | None) -> str:
    python = sys.executable if python is None else python
    if not python:
        raise AgentError("cannot tell which Python runs mtld (sys.executable is empty)")
    # abspath, not resolve(): a virtualenv's python is a symlink, and following
    # it would start the base interpreter without the environment's packages.
    return os.path.abspath(python)


def _places(settings: Settings, platform: str, home: Path, env: Mapping[str, str]) -> tuple[Path, Path]:
    """(state, logs) as the agent will see them: settings.state_dir/log_dir, for `platform` and `home`."""
    if settings.home:
        return Path(os.path.abspath(settings.home)), Path(os.path.abspath(settings.home / "logs"))
    return platform_dirs(platform, {**env, "HOME": str(home)})


def _service_env(python: str, platform: str, env: Mapping[str, str], config: Path | None) -> dict[str, str]:
    """PATH for the tools the daemon runs (caffeinate, systemd-inhibit, notify-send…), unbuffered
    output, and the MTLD_* locations of the installing shell, made absolute."""
    dirs = [os.path.dirname(python)]
    if platform == "darwin":
        dirs.append("/opt/homebrew/bin")
    dirs += ["/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin", "/sbin"]
    out = {"PATH": ":".join(dict.fromkeys(dirs)), "PYTHONUNBUFFERED": "1"}
    for key in CARRIED_ENV:
        if env.get(key):
            out[key] = os.path.abspath(os.path.expanduser(env[key]))
    if config is not None:
        out["MTLD_CONFIG"] = os.path.abspath(config)
    return out


# ------------------------------------------------------------------ carrying out


def apply(plan: AgentPlan, runner: Runner, *, sleep: Callable[[float], None] = time.sleep,
          clock: Callable[[], float] = time.monotonic) -> None:
    """Create folders, run the stop commands, write and remove files, then run the rest.

    A failing command with check=True raises AgentError after its retries; the
    steps before it stay done (running install again is safe).
    """
    for folder in plan.dirs:
        private_dir(folder)  # the log folder: user-only, as mtld's logs are
    for command in plan.commands:
        if command.before_files:
            _run(command, runner, sleep, clock)
    for path, content in plan.files.items():
        write_atomic(path, content, mode=0o644)  # launchd refuses a plist that others may write
    for path in plan.remove:
        path.unlink(missing_ok=True)
    for command in plan.commands:
        if not command.before_files:
            _run(command, runner, sleep, clock)


def _run(command: Command | WaitUntilGone, runner: Runner, sleep: Callable[[float], None],
         clock: Callable[[], float]) -> None:
    if isinstance(command, WaitUntilGone):
        _wait_until_gone(command, runner, sleep, clock)
        return
    for attempt in range(command.retries + 1):
        if attempt:
            sleep(command.retry_delay_s)
        result = runner.run(command.argv)
        if result.returncode == 0 or not command.check:
            return
    detail = (result.stderr or result.stdout).strip() or "no output"
    raise AgentError(f"`{shlex.join(command.argv)}` failed (exit status {result.returncode}): {detail}")


def _wait_until_gone(wait: WaitUntilGone, runner: Runner, sleep: Callable[[float], None],
                     clock: Callable[[], float]) -> None:
    deadline = clock() + wait.timeout_s
    while True:
        result = runner.run(wait.argv)
        if result.returncode != 0:  # 113: "Could not find service": gone
            return
        if clock() >= deadline:
            state = launchd.parse_print(result.returncode, result.stdout).get("state") or "unknown"
            raise AgentError(f"the old agent is still there {wait.timeout_s:g} s after it was asked to stop "
                             f"(`{shlex.join(wait.argv)}`: state = {state}); nothing was changed, try again")
        sleep(wait.interval_s)


def describe(plan: AgentPlan) -> str:
    """The plan as `--dry-run` prints it, in the order `apply` would carry it out."""
    lines: list[str] = []
    lines += [f"mkdir -p -m 700 {shlex.quote(str(d))}" for d in plan.dirs]
    lines += [_shell_line(c) for c in plan.commands if c.before_files]
    for path, content in plan.files.items():
        lines += [f"write {path}:", *("    " + line for line in content.decode().splitlines())]
    lines += [f"rm -f {shlex.quote(str(p))}" for p in plan.remove]
    lines += [_shell_line(c) for c in plan.commands if not c.before_files]
    if plan.notes:
        lines += ["", *plan.notes]
    return "\n".join(lines) + "\n"


def _shell_line(command: Command | WaitUntilGone) -> str:
    if isinstance(command, WaitUntilGone):
        return (f"until ! {shlex.join(command.argv)} >/dev/null; do sleep {command.interval_s:g}; done"
                f"  # at most {command.timeout_s:g} s")
    return shlex.join(command.argv) + ("  # failure ignored" if not command.check else "")


def example_plist() -> bytes:
    """launchd/io.mtld.daemon.plist: default settings for the placeholder user /Users/you."""
    plan = plan_install(Settings.model_construct(), platform="darwin", python=EXAMPLE_PYTHON, uid=501,
                        home=EXAMPLE_HOME, env={})
    return plan.files[launchd.plist_path(EXAMPLE_HOME)]


if __name__ == "__main__":  # python -m mtld.platform.agent > launchd/io.mtld.daemon.plist
    sys.stdout.buffer.write(example_plist())
