"""macOS checks on running unattended: a throwaway LaunchAgent (never mtld's own) through bootstrap,
`launchctl print` and bootout, the folders such an agent may read, sleep prevention through
caffeinate, the battery reading and a notification. Commands go through ctx.runner; processes
through ctx.shared["spawn"] (subprocess.Popen unless a test fakes it)."""

from __future__ import annotations

import os
import plistlib
import re
import signal
import subprocess
from typing import Any

from mtld.platform import launchd, power
from mtld.doctor.selftest.base import Context, Failed, Skipped, Spec, require

AGENT_SCRIPT = """\
#!/bin/sh
# mtld's self-test agent: says which folders it can read, then waits; on SIGTERM it notes it and exits 0.
trap 'kill $! 2>/dev/null; echo "SIGTERM" >> "$MTLD_SELFTEST_OUT"; exit 0' TERM
for dir in "$@"; do
    if [ ! -e "$dir" ]; then echo "missing $dir"
    elif ls "$dir" >/dev/null 2>&1; then echo "ok $dir"; else echo "denied $dir"; fi
done > "$MTLD_SELFTEST_OUT.tmp" && mv "$MTLD_SELFTEST_OUT.tmp" "$MTLD_SELFTEST_OUT"
while :; do sleep 60 & wait $!; done
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


def check_launchd_agent(ctx: Context) -> dict[str, Any]:
    """A throwaway agent: plutil -lint, bootstrap, `launchctl print` read by mtld's parser, bootout,
    and how long until the same label can be bootstrapped again."""
    _mac(ctx)
    from mtld.platform.agent import stop_grace_s
    from mtld.config.settings import Settings

    uid, label = os.getuid(), f"io.mtld.selftest.{ctx.label_suffix}"
    domain, target = f"gui/{uid}", f"gui/{uid}/{label}"
    script, out = ctx.home / "agent.sh", ctx.home / "agent.out"
    script.write_text(AGENT_SCRIPT)
    script.chmod(0o755)
    folders = [str(path) for _, path in ctx.shared.get("user_folders", [])]
    grace = ctx.shared.get("exit_timeout_s") or stop_grace_s(Settings.model_construct())  # the user's, from the CLI
    keys = launchd.plist_dict(["/bin/sh", str(script), *folders], {"MTLD_SELFTEST_OUT": str(out)}, ctx.home, grace)
    plist = ctx.home / f"{label}.plist"
    plist.write_bytes(plistlib.dumps({**keys, "Label": label}))
    lint = ctx.runner.run(["plutil", "-lint", str(plist)])
    require(lint.returncode == 0, f"plutil -lint rejects the plist: {(lint.stdout + lint.stderr).strip()}")
    figures: dict[str, Any] = {"label": label, "plist_exit_timeout_s": grace}
    loaded = False
    try:
        boot = ctx.runner.run(["launchctl", "bootstrap", domain, str(plist)])
        require(boot.returncode == 0, f"bootstrap failed ({boot.returncode}): {boot.stderr.strip()}", **figures)
        loaded = True
        running = _wait(ctx, lambda: launchd.parse_print(*_print(ctx, target))["running"], 10)
        code, text = _print(ctx, target)
        facts, details = launchd.parse_print(code, text), launchd.parse_print_details(text)
        figures.update(start_s=running, state=facts["state"], pid=facts["pid"], **details)
        require(running is not None, f"the agent is not running 10 s after bootstrap (state {facts['state']})", **figures)
        require(details["exit_timeout_s"] == grace, f"launchd uses an exit timeout of {details['exit_timeout_s']} s, "
                f"not the plist's {grace} s: the daemon may be killed before its run has checkpointed", **figures)
        require(details["umask"] == 0o077, f"umask {details['umask']}, not 077", **figures)
        require(details["process_type"] == "interactive", f"process type {details['process_type']}", **figures)
        read = _wait(ctx, out.exists, 10)
        ctx.shared["agent_reads"] = out.read_text().splitlines() if read is not None else None
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


def check_agent_folders(ctx: Context) -> dict[str, Any]:
    """The throwaway agent could read MTLD_HOME and the queued jobs' data folders (privacy protection
    hides ~/Documents, ~/Desktop and ~/Downloads from agents unless allowed)."""
    _mac(ctx)
    reads = ctx.shared.get("agent_reads")
    if reads is None:
        raise Skipped("the throwaway agent did not run (see macos.launchd_agent)")
    denied = [line.split(" ", 1)[1] for line in reads if line.startswith("denied ")]
    figures = {"readable": sum(1 for line in reads if line.startswith("ok ")), "denied": denied,
               "missing": [line.split(" ", 1)[1] for line in reads if line.startswith("missing ")]}  # not made yet
    require(not denied, f"an agent cannot read {', '.join(denied)}: move the data out of ~/Documents, ~/Desktop and "
            "~/Downloads, or give the Python running mtld Full Disk Access (System Settings > Privacy & Security)",
            **figures)
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
    """The notification mtld sends when a job ends (osascript's `display notification`) returns 0."""
    _mac(ctx)
    argv = power.notify_argv("mtld self-test", "notifications reach you", platform="darwin")
    if argv is None:
        raise Skipped("no notifier found")
    result = ctx.runner.run(argv)
    figures = {"exit_code": result.returncode, "stderr": result.stderr.strip()[:200] or None}
    require(result.returncode == 0, f"osascript answered {result.returncode}: {figures['stderr']}", **figures)
    return figures


CHECKS = [
    Spec("macos.launchd_agent", "macos", "launchd could refuse mtld's agent, kill it before a run has "
         "checkpointed, or leave it unloaded after a reinstall.", check_launchd_agent),
    Spec("macos.agent_folders", "macos", "the daemon, started by launchd, could not read the data or state: every "
         "job fails at night although it works in the Terminal.", check_agent_folders),
    Spec("macos.caffeinate", "macos", "the Mac may idle-sleep in the middle of a run.", check_caffeinate),
    Spec("macos.battery", "macos", "daemon.hold_on_battery would start runs on battery, or hold them on AC.",
         check_battery),
    Spec("macos.notification", "macos", "you would not be told when a job ends.", check_notification),
]
