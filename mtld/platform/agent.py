"""`mtld agent install|uninstall|status`: run `mtld daemon` under the user's service manager.

Planning is pure: `plan_install` / `plan_uninstall` turn settings and the
facts of this machine (platform, interpreter, uid, home, environment) into an
`AgentPlan` of files to write or remove and commands to run. `describe` prints
a plan (`--dry-run`); `apply` carries it out through a Runner. So everything
but the service manager's own behaviour is checked on any machine.

launchd agents and systemd units read no shell start-up file: what the daemon
and its runs need from the user's shell (the Hugging Face cache and token, a
proxy, a CA bundle) is carried into the agent's environment at install. The
token itself is never written into the agent's file (`--dry-run` prints it,
`launchctl print` lists its environment, and systemd.exec(5) says a unit's
Environment= is "not suitable for passing secrets"): it goes to a user-only file
in the state folder, and the agent gets HF_TOKEN_PATH, which huggingface_hub
reads the token from.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
import time
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Callable, Iterable, Mapping

from mtld.config.settings import STOP_MARGIN_S, Settings, exit_timeout_s, platform_dirs
from mtld.disk import private_dir, write_atomic
from mtld.platform import launchd, privacy, systemd
from mtld.platform.runner import Result, Runner, SubprocessRunner
from mtld.runs.child import module_argv

__all__ = [
    "AgentError", "AgentPlan", "Command", "WaitUntilGone", "Runner", "SubprocessRunner", "Result",
    "plan_install", "plan_uninstall", "agent_status", "apply", "describe", "stop_grace_s", "STOP_MARGIN_S",
]

# Settings the agent must share with the shell that installed it, so both see the same state.
CARRIED_ENV = ("MTLD_HOME", "MTLD_CONFIG")
# What runs need from the user's shell, carried when set: the Hugging Face cache (and where its token file
# is), the CA bundle (paths, made absolute), the proxy (as given). HF_TOKEN goes to TOKEN_FILE instead.
USER_PATHS = ("HF_HOME", "HF_HUB_CACHE", "HF_TOKEN_PATH", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE")
USER_VALUES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy")
TOKEN = "HF_TOKEN"
TOKEN_FILE = "hf-token"  # in the state folder, 0600; the agent gets HF_TOKEN_PATH pointing at it

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
    # (exit status, stderr) -> one clear line for a failure no retry can cure, else None
    explain: Callable[[int, str], str | None] | None = None


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
    private: set[Path] = field(default_factory=set)  # written 0600 (others 0644)
    secrets: list[str] = field(default_factory=list)  # never printed by `describe`


WAIT_MARGIN_S = 10  # beyond the service manager's own SIGKILL, before we give up waiting for it


def stop_grace_s(settings: Settings) -> int:
    """Seconds the service manager waits after SIGTERM before SIGKILL: longer than the daemon's
    worst-case stop (wait for the child's checkpoint, SIGKILL it and wait again, record) plus a margin;
    at most EXIT_TIMEOUT_CAP_S (the settings refuse a longer daemon.stop_timeout_s)."""
    return exit_timeout_s(settings.daemon.stop_timeout_s)


# ------------------------------------------------------------------ planning


def plan_install(
    settings: Settings,
    *,
    platform: str = sys.platform,
    python: str | None = None,
    prefix: str | None = None,
    uid: int | None = None,
    home: Path | None = None,
    env: Mapping[str, str] | None = None,
    config: Path | None = None,
    data_paths: Iterable[tuple[str, Path]] = (),
    setting_files: Mapping[str, Path] | None = None,
    resolve: Callable[[str], str] = os.path.realpath,
) -> AgentPlan:
    """What installing (or reinstalling) the agent writes and runs; None means this process's value.

    `prefix` is the interpreter's sys.prefix (this one's when `python` is None, else the folder above its
    bin/). `config` is a config file named with --config; it is carried as MTLD_CONFIG. `data_paths` are
    (what, path) the daemon's runs will read or write (queued jobs' models, data and outputs): on macOS,
    those privacy protection hides from agents get a warning, as do the interpreter, the state and the
    config. `setting_files`: files the settings name that the daemon reads (the executor's: a cluster's
    token file), by dotted setting; one set in this shell's environment (MTLD_EXECUTOR__KIND__NAME) is
    carried into the agent's as an absolute path, as one set in the config file already is. `resolve`
    follows symlinks (tests give recorded ones).
    """
    manager = _manager(platform)
    prefix = sys.prefix if python is None and prefix is None else prefix
    python = _interpreter(python)
    uid, home, env = _where(uid, home, env)
    program = module_argv(python, "mtld", "daemon")  # -P: never the code of the folder it starts in
    state_dir, log_dir = _places(settings, platform, home, env)
    state = Path(os.path.abspath(os.path.expanduser(env["MTLD_HOME"]))) if env.get("MTLD_HOME") else state_dir
    token_file = state / TOKEN_FILE  # where the agent will look: its own state folder
    service_env = _service_env(python, platform, env, config, token_file)
    files = {key: str(path) for key, path in (setting_files or {}).items()}
    for key, path in files.items():
        if env.get(variable := setting_variable(key)):  # else it comes from the config file, which the agent reads
            service_env[variable] = os.path.abspath(os.path.expanduser(path))
    grace = stop_grace_s(settings)
    agent_file = launchd.plist_path(home) if manager == "launchd" else systemd.unit_path(home, env)
    plan = AgentPlan(notes=_carried_notes(env, service_env, token_file))
    if token := env.get(TOKEN, "").strip():
        plan.files[token_file] = (token + "\n").encode()
        plan.private.add(token_file)
        plan.secrets.append(token)
    passwords = [password for key in USER_VALUES if (password := _password(service_env.get(key, "")))]
    if passwords:  # a proxy URL with a password: the agent's file is the user's alone
        plan.private.add(agent_file)
        plan.secrets += passwords
    if manager == "launchd":
        python_facts = privacy.interpreter(python, prefix, resolve=resolve)
        read = [*privacy.interpreter_paths(python_facts), ("MTLD_HOME", str(state)),
                *privacy.environment_paths({k: v for k, v in service_env.items() if k != "MTLD_HOME"}),
                *files.items(),
                *([("the config file", str(settings.config_file))] if settings.config_file else []), *data_paths]
        plan.files[agent_file] = launchd.render_plist(program, service_env, log_dir, grace)
        plan.dirs = [log_dir]
        # No `kickstart -k` after bootstrap: KeepAlive implies RunAtLoad (launchd.plist(5),
        # SuccessfulExit), so bootstrap starts the daemon, and -k would kill it (launchctl(1)).
        plan.commands = [
            *_launchd_stop(uid, grace),
            Command(launchd.enable_argv(uid), explain=launchd.explain_failure),
            # launchd may still be releasing the label ("Bootstrap failed: 5").
            Command(launchd.bootstrap_argv(uid, agent_file), retries=3, retry_delay_s=2.0,
                    explain=launchd.explain_failure),
        ]
        plan.notes = [
            *privacy.warnings(read, home=home, grant=python_facts.grant, resolve=resolve),
            *plan.notes,
            f"mtld daemon starts at login and again after a crash; its output goes to {log_dir}.",
            "Remove it with `mtld agent uninstall`.",
        ]
        return plan
    plan.files[agent_file] = systemd.render_unit(program, service_env, grace).encode()
    plan.commands = [
        Command(systemd.systemctl("daemon-reload")),
        Command(systemd.systemctl("enable", systemd.UNIT)),
        Command(systemd.systemctl("restart", systemd.UNIT)),  # starts it, or picks up a changed unit
    ]
    plan.notes += [
        "systemd stops user services when you log out and starts them only when you log in. To keep "
        "mtld training while you are logged out, and to start it at boot, run once: loginctl enable-linger",
        f"Its output goes to the journal: journalctl --user -u {systemd.UNIT}",
        "Remove it with `mtld agent uninstall`.",
    ]
    return plan


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
    """Is the agent's file there, is it loaded, is the daemon running (and its pid); on macOS also whether
    launchd has it disabled, and `advice` when it will not start at login."""
    manager = _manager(platform)
    uid, home, env = _where(uid, home, env)
    disabled = None
    if manager == "launchd":
        path, name = launchd.plist_path(home), launchd.LABEL
        result = runner.run(launchd.print_argv(uid))
        facts = launchd.parse_print(result.returncode, result.stdout)
        quiet = {0, 113}  # 113: launchctl's "Could not find service"
        listed = runner.run(launchd.print_disabled_argv(uid))
        disabled = bool(launchd.parse_disabled(listed.stdout)) if listed.returncode == 0 else None
    else:
        path, name = systemd.unit_path(home, env), systemd.UNIT
        result = runner.run(systemd.show_argv())
        facts = systemd.parse_show(result.returncode, result.stdout)
        quiet = {0}
    explained = launchd.explain_failure(result.returncode, result.stderr) if manager == "launchd" else None
    error = None if result.returncode in quiet else (explained or result.stderr.strip()
                                                     or f"exit status {result.returncode}")
    installed = path.is_file()
    return {"manager": manager, "name": name, "file": str(path), "installed": installed, **facts,
            "disabled": disabled, "error": error, "advice": _status_advice(installed, facts["loaded"], disabled)}


def _status_advice(installed: bool, loaded: bool, disabled: bool | None) -> str | None:
    if disabled:
        return ("launchd has the agent disabled: switched off under System Settings > General > Login Items > "
                "Allow in the Background, or by `launchctl disable`; it does not start at login. "
                "`mtld agent install` enables it again (switch it on in Login Items if it was switched off there)")
    if installed and not loaded:
        return "installed but not loaded (it starts at the next login): `mtld agent install` loads it now"
    if loaded and not installed:
        return "loaded, but its file is gone: `mtld agent install` writes it again, `mtld agent uninstall` unloads it"
    return None


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


def _service_env(python: str, platform: str, env: Mapping[str, str], config: Path | None,
                 token_file: Path) -> dict[str, str]:
    """PATH for the tools the daemon runs (caffeinate, systemd-inhibit, notify-send…), unbuffered
    output, the MTLD_* locations of the installing shell and its Hugging Face, CA bundle and proxy
    settings (paths made absolute), and HF_TOKEN_PATH for the token file when HF_TOKEN is set."""
    dirs = [os.path.dirname(python)]
    if platform == "darwin":
        dirs.append("/opt/homebrew/bin")
    dirs += ["/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin", "/sbin"]
    out = {"PATH": ":".join(dict.fromkeys(dirs)), "PYTHONUNBUFFERED": "1"}
    for key in (*CARRIED_ENV, *USER_PATHS):
        if env.get(key):
            out[key] = os.path.abspath(os.path.expanduser(env[key]))
    for key in USER_VALUES:
        if env.get(key):
            out[key] = env[key]
    if config is not None:
        out["MTLD_CONFIG"] = os.path.abspath(config)
    if env.get(TOKEN, "").strip():  # huggingface_hub: HF_TOKEN wins over the token file; it is in this file now
        out["HF_TOKEN_PATH"] = str(token_file)
    return out


def setting_variable(dotted: str) -> str:
    """The environment variable of a dotted setting (daemon.max_lost → MTLD_DAEMON__MAX_LOST)."""
    return "MTLD_" + dotted.upper().replace(".", "__")


def _carried_notes(env: Mapping[str, str], service_env: Mapping[str, str], token_file: Path) -> list[str]:
    carried = [key for key in (*USER_PATHS, *USER_VALUES) if key in service_env]
    carried += sorted(key for key in service_env if key.startswith("MTLD_") and key not in CARRIED_ENV)
    notes = [f"Carried from this shell into the agent's environment: {', '.join(carried)}."] if carried else []
    if env.get(TOKEN, "").strip():
        notes.append(f"HF_TOKEN is not written into the agent's file: it goes to {token_file} (readable by you "
                     "only), and the agent gets HF_TOKEN_PATH.")
    return notes


def _password(value: str) -> str | None:
    """The password of a proxy URL such as http://user:secret@proxy:8080, else None."""
    match = re.search(r"(?:^|://)[^/@\s:]+:([^/@\s]+)@", value)
    return match.group(1) if match else None


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
        # launchctl(1): a LaunchAgent's plist must be owned by the user loading it and not group- or
        # world-writable (launchd's launchctl.c, path_goodness_check), so 0644 and 0600 both load.
        write_atomic(path, content, mode=0o600 if path in plan.private else 0o644)
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
        if command.explain and (why := command.explain(result.returncode, result.stderr or result.stdout)):
            raise AgentError(why)
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
        text = content.decode()
        for secret in plan.secrets:
            text = text.replace(secret, "<hidden>").replace(escape(secret, quote=False), "<hidden>")
        mode = " (0600: yours only)" if path in plan.private else ""
        lines += [f"write {path}{mode}:", *("    " + line for line in text.splitlines())]
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
