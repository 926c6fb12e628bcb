"""macOS checks on running unattended: a throwaway LaunchAgent (never mtld's own) through enable,
bootstrap, `launchctl print` and bootout, what such an agent may read (run by the very Python mtld's
agent runs: ctx.shared["agent_python"], so privacy protection judges the same binary), sleep
prevention through caffeinate, the battery reading and a notification. Commands go through
ctx.runner; processes through ctx.shared["spawn"] (subprocess.Popen unless a test fakes it)."""

from __future__ import annotations

import os
import plistlib
import re
import signal
import subprocess
from typing import Any

from mtld.platform import launchd, power, privacy
from mtld.doctor.selftest.base import Context, Failed, Skipped, Spec, require

AGENT_SCRIPT = """\
# mtld's self-test agent, run by launchd with the Python mtld's agent runs: says which Python it is,
# whether mtld imports, which paths it can read; then waits, and on SIGTERM notes it and exits 0.
import os
import signal
import sys

OUT = os.environ["MTLD_SELFTEST_OUT"]


def stop(signum, frame):
    with open(OUT, "a") as f:
        f.write("SIGTERM\\n")
    sys.exit(0)


def can_read(path):
    try:
        os.stat(path)
    except FileNotFoundError:
        return "missing"
    except OSError:  # privacy protection answers EPERM, "Operation not permitted"
        return "denied"
    try:
        if os.path.isdir(path):
            os.listdir(path)
        else:
            with open(path, "rb") as f:
                f.read(1)
    except OSError:
        return "denied"
    return "ok"


signal.signal(signal.SIGTERM, stop)
lines = ["python\\t" + sys.executable + "\\t" + sys.prefix]
try:
    import mtld  # noqa: F401  (an editable install in ~/Documents fails here)
    lines.append("import\\tok")
except Exception as e:
    lines.append("import\\t" + type(e).__name__ + ": " + str(e).replace("\\n", " "))
lines += [can_read(path) + "\\t" + path for path in sys.argv[1:]]
with open(OUT + ".tmp", "w") as f:
    f.write("".join(line + "\\n" for line in lines))
os.replace(OUT + ".tmp", OUT)
while True:
    signal.pause()
"""


def _mac(ctx: Context) -> None:
    if ctx.platform != "darwin":
        raise Skipped("macOS only")


def _wait(ctx: Context, condition, timeout_s: float, interval_s: float = 0.25) -> float | None:
    """Seconds until condition() held, or None after timeout_s (ctx.clock and ctx.sleep: tests fake them)."""
    start = ctx.clock()
    while True:
        if condition():
            return round(ctx.clock() - start, 2)
        if ctx.clock() - start >= timeout_s:
            return None
        ctx.sleep(interval_s)


def _print(ctx: Context, target: str) -> tuple[int, str]:
    result = ctx.runner.run(["launchctl", "print", target])
    return result.returncode, result.stdout


def agent_python(ctx: Context) -> str:
    """The Python mtld's agent runs (the installed plist's, else this one's), as the CLI found it."""
    return str(ctx.shared.get("agent_python") or ctx.python)


def check_launchd_agent(ctx: Context) -> dict[str, Any]:
    """A throwaway agent run by mtld's Python: plutil -lint, enable, bootstrap of a 0600 plist, `launchctl
    print` read by mtld's parser, bootout, and how long until the same label can be bootstrapped again."""
    _mac(ctx)
    from mtld.platform.agent import stop_grace_s
    from mtld.config.settings import Settings

    uid, label = os.getuid(), f"io.mtld.selftest.{ctx.label_suffix}"
    domain, target = f"gui/{uid}", f"gui/{uid}/{label}"
    script, out = ctx.home / "agent.py", ctx.home / "agent.out"
    script.write_text(AGENT_SCRIPT)
    paths = [str(path) for _, path in ctx.shared.get("user_folders", [])]
    python = agent_python(ctx)
    grace = ctx.shared.get("exit_timeout_s") or stop_grace_s(Settings.model_construct())  # the user's, from the CLI
    keys = launchd.plist_dict([python, str(script), *paths], {"MTLD_SELFTEST_OUT": str(out)}, ctx.home, grace)
    plist = ctx.home / f"{label}.plist"
    plist.write_bytes(plistlib.dumps({**keys, "Label": label}))
    plist.chmod(0o600)  # as mtld's own when it carries a proxy password: launchctl(1) loads a user's 0600 plist
    lint = ctx.runner.run(["plutil", "-lint", str(plist)])
    require(lint.returncode == 0, f"plutil -lint rejects the plist: {(lint.stdout + lint.stderr).strip()}")
    figures: dict[str, Any] = {"label": label, "plist_exit_timeout_s": grace, "plist_mode": "0600", "python": python}
    enable = ctx.runner.run(["launchctl", "enable", target])
    require(enable.returncode == 0, launchd.explain_failure(enable.returncode, enable.stderr)
            or f"enable failed ({enable.returncode}): {enable.stderr.strip()}", **figures)
    loaded = False
    try:
        boot = ctx.runner.run(["launchctl", "bootstrap", domain, str(plist)])
        require(boot.returncode == 0, launchd.explain_failure(boot.returncode, boot.stderr)
                or f"bootstrap failed ({boot.returncode}): {boot.stderr.strip()}", **figures)
        loaded = True
        running = _wait(ctx, lambda: launchd.parse_print(*_print(ctx, target))["running"] and out.exists(), 10)
        code, text = _print(ctx, target)
        facts, details = launchd.parse_print(code, text), launchd.parse_print_details(text)
        figures.update(start_s=running, state=facts["state"], pid=facts["pid"], **details)
        if running is None:
            ctx.shared["agent_start_error"] = _did_not_start(ctx, python, facts["state"], details["last_exit_code"])
        require(running is not None, ctx.shared.get("agent_start_error", ""), **figures)
        require(details["exit_timeout_s"] == grace, f"launchd uses an exit timeout of {details['exit_timeout_s']} s, "
                f"not the plist's {grace} s: the daemon may be killed before its run has checkpointed", **figures)
        require(details["umask"] == 0o077, f"umask {details['umask']}, not 077", **figures)
        require(details["process_type"] == "interactive", f"process type {details['process_type']}", **figures)
        ctx.shared["agent_reads"] = out.read_text().splitlines()
        ctx.runner.run(["launchctl", "bootout", target])
        loaded = False
        figures["bootout_to_gone_s"] = _wait(ctx, lambda: _print(ctx, target)[0] != 0, grace + 10)
        figures["sigterm_trapped"] = out.exists() and "SIGTERM" in out.read_text()
        again = _wait(ctx, lambda: ctx.runner.run(["launchctl", "bootstrap", domain, str(plist)]).returncode == 0, 30)
        figures["bootout_to_bootstrap_again_s"] = again
        loaded = again is not None
        require(figures["bootout_to_gone_s"] is not None, "the agent was still loaded long after bootout", **figures)
        require(again is not None, "the label could not be bootstrapped again within 30 s of being gone", **figures)
        require(figures["sigterm_trapped"], "the agent did not get SIGTERM at bootout", **figures)
    finally:
        if loaded:
            ctx.runner.run(["launchctl", "bootout", target])
            _wait(ctx, lambda: _print(ctx, target)[0] != 0, grace + 10)
    return figures


def _did_not_start(ctx: Context, python: str, state: str | None, last_exit: str | None) -> str:
    """Why the throwaway agent never said what it reads: its Python did not start under launchd."""
    stderr = ctx.home / "daemon.stderr.log"  # the plist's StandardErrorPath (launchd.plist_dict)
    tail = stderr.read_text(errors="replace").strip().splitlines()[-1:] if stderr.exists() else []
    grant = privacy.interpreter(python).grant
    return (f"the agent's Python ({python}) did not start under launchd within 10 s (state {state}, last exit "
            f"code {last_exit}{': ' + tail[0] if tail else ''}). If its environment is in ~/Documents, ~/Desktop, "
            f"~/Downloads, iCloud Drive or on another volume, move it, or give {grant} Full Disk Access "
            f"({privacy.HOW_TO_GRANT})")


def check_agent_folders(ctx: Context) -> dict[str, Any]:
    """The throwaway agent, run by mtld's Python, could start, import mtld, and read MTLD_HOME, the config,
    the Hugging Face cache and the queued jobs' models and data (privacy protection hides ~/Documents,
    ~/Desktop, ~/Downloads, iCloud Drive and other volumes from agents unless allowed)."""
    _mac(ctx)
    if ctx.shared.get("agent_start_error"):
        raise Failed(ctx.shared["agent_start_error"], {"python": agent_python(ctx)})
    reads = ctx.shared.get("agent_reads")
    if reads is None:
        raise Skipped("the throwaway agent did not run (see macos.launchd_agent)")
    fields = [line.split("\t", 2) for line in reads if "\t" in line]
    status: dict[str, list[str]] = {"ok": [], "denied": [], "missing": []}
    for word, *rest in fields:
        if word in status:
            status[word].append(rest[0])
    python = next((rest for word, *rest in fields if word == "python"), [None, None])
    imported = next((rest[0] for word, *rest in fields if word == "import"), None)
    figures = {"python": python[0], "prefix": python[1], "import_mtld": imported, "readable": len(status["ok"]),
               "denied": status["denied"], "missing": status["missing"]}  # missing: not made yet
    grant = privacy.interpreter(agent_python(ctx)).grant
    require(imported == "ok", f"the agent's Python cannot import mtld ({imported}): if mtld or its environment is in "
            f"a protected folder, move it, or give {grant} Full Disk Access ({privacy.HOW_TO_GRANT})", **figures)
    require(not status["denied"], f"an agent cannot read {', '.join(status['denied'])}: move it out of ~/Documents, "
            f"~/Desktop, ~/Downloads, iCloud Drive and other volumes, or give {grant} Full Disk Access "
            f"({privacy.HOW_TO_GRANT})", **figures)
    return figures


def caffeinate_asserting(pmset_assertions: str, pid: int) -> bool:
    """`pmset -g assertions` lists caffeinate's PreventUserIdleSystemSleep under its pid (pmset(1))."""
    return re.search(rf"pid {pid}\(caffeinate\):.*PreventUserIdleSystemSleep", pmset_assertions) is not None


def check_caffeinate(ctx: Context) -> dict[str, Any]:
    """`caffeinate -i -w PID` (caffeinate(8)) shows in `pmset -g assertions` and ends with that pid."""
    _mac(ctx)
    spawn = ctx.shared.get("spawn", lambda argv: subprocess.Popen(argv, stdin=subprocess.DEVNULL))
    waiter = spawn(["sleep", "60"])
    caffeinate = spawn(["caffeinate", "-i", "-w", str(waiter.pid)])
    shows = lambda: caffeinate_asserting(ctx.runner.run(["pmset", "-g", "assertions"]).stdout, caffeinate.pid)  # noqa: E731
    try:
        appeared = _wait(ctx, shows, 5)
    finally:
        waiter.send_signal(signal.SIGKILL)
        waiter.wait()
    try:
        code = caffeinate.wait(timeout=10)
    except subprocess.TimeoutExpired:
        caffeinate.kill()
        raise Failed("caffeinate did not end within 10 s of the pid it waits for") from None
    gone = _wait(ctx, lambda: not shows(), 5)
    figures = {"appeared_s": appeared, "caffeinate_exit": code, "gone_s": gone}
    require(appeared is not None, "caffeinate's assertion never showed in `pmset -g assertions`", **figures)
    require(gone is not None, "caffeinate's assertion outlived the pid it waited for", **figures)
    return figures


def pmset_on_battery(pmset_batt: str) -> bool | None:
    """`pmset -g batt`'s first line: "Now drawing from 'Battery Power'" or "'AC Power'"."""
    if "'Battery Power'" in pmset_batt:
        return True
    if "'AC Power'" in pmset_batt:
        return False
    return None


def check_battery(ctx: Context) -> dict[str, Any]:
    """mtld's on_battery() (psutil) agrees with `pmset -g batt`."""
    _mac(ctx)
    result = ctx.runner.run(["pmset", "-g", "batt"])
    by_pmset = pmset_on_battery(result.stdout)
    by_mtld = ctx.shared.get("on_battery", power.on_battery)()
    figures = {"pmset": by_pmset, "on_battery": by_mtld, "pmset_line": result.stdout.splitlines()[0] if result.stdout else None}
    agree = by_mtld == by_pmset or (by_mtld is None and by_pmset is False)  # no battery: a desktop on AC
    require(agree, f"mtld reads on battery = {by_mtld}, pmset says {by_pmset}", **figures)
    return figures


def check_notification(ctx: Context) -> dict[str, Any]:
    """The notification mtld sends when a job ends (osascript's `display notification`) was sent: osascript
    returned 0. Whether it was shown, nothing here can tell (`display notification` returns no result:
    AppleScript Language Guide; Focus or the notification settings may hide it): look at the screen."""
    _mac(ctx)
    argv = power.notify_argv("mtld self-test", "sent by mtld doctor --selftest: did you see it?", platform="darwin")
    if argv is None:
        raise Skipped("no notifier found")
    result = ctx.runner.run(argv)
    figures = {"sent": result.returncode == 0, "delivered": "unknown: osascript cannot tell; look for it on screen",
               "exit_code": result.returncode, "stderr": result.stderr.strip()[:200] or None}
    require(result.returncode == 0, f"the notification was not sent: osascript answered {result.returncode}: "
            f"{figures['stderr']}", **figures)
    return figures


CHECKS = [
    Spec("macos.launchd_agent", "macos", "launchd could refuse mtld's agent, kill it before a run has "
         "checkpointed, or leave it unloaded after a reinstall.", check_launchd_agent),
    Spec("macos.agent_folders", "macos", "the daemon, started by launchd, could not start (its own Python hidden) or "
         "not read the data, models or state: every job fails at night although it works in the Terminal.",
         check_agent_folders),
    Spec("macos.caffeinate", "macos", "the Mac may idle-sleep in the middle of a run.", check_caffeinate),
    Spec("macos.battery", "macos", "daemon.hold_on_battery would start runs on battery, or hold them on AC.",
         check_battery),
    Spec("macos.notification", "macos", "you would not be told when a job ends (a pass means it was sent, "
         "not that it was shown).", check_notification),
]
