"""Power and the desktop: keep the machine awake during a run, read the battery, notify.

Each tool is chosen by a pure `*_argv` function (platform and `which` passed
in), so the exact command lines are checked on any machine; the small
functions and the class below only run them.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from typing import Callable

import psutil

Which = Callable[[str], "str | None"]
NOTIFY_TIMEOUT_S = 10.0


def inhibit_sleep_argv(
    pid: int, reason: str, *, platform: str = sys.platform, which: Which = shutil.which
) -> list[str] | None:
    """A command that keeps the machine from idle-sleeping until process `pid` ends; None if no tool.

    Both end by themselves when `pid` exits: caffeinate watches it (-w), and
    systemd-inhibit holds its lock while `tail --pid` (GNU coreutils) waits for it.
    """
    if platform == "darwin":
        return ["caffeinate", "-i", "-w", str(pid)]
    if platform.startswith("linux") and which("systemd-inhibit"):
        return [
            "systemd-inhibit", "--what=idle:sleep", "--who=mtld", f"--why={reason}", "--mode=block",
            "tail", f"--pid={pid}", "-f", "/dev/null",
        ]  # fmt: skip
    return None


def stay_awake_argv(
    seconds: int, reason: str, *, platform: str = sys.platform, which: Which = shutil.which
) -> list[str] | None:
    """A command that keeps the machine from idle-sleeping for `seconds`, then ends; None if no tool.
    caffeinate(8): `-t`, the assertion's timeout in seconds; systemd-inhibit(1) holds its lock while its
    command (here `sleep`) runs."""
    if platform == "darwin":
        return ["caffeinate", "-i", "-t", str(seconds)]
    if platform.startswith("linux") and which("systemd-inhibit"):
        return ["systemd-inhibit", "--what=idle:sleep", "--who=mtld", f"--why={reason}", "--mode=block",
                "sleep", str(seconds)]
    return None


class SleepInhibitor:
    """Holds one sleep inhibitor for the lifetime of one process (the training child).

    The inhibitor runs in its own process group: systemd-inhibit forks its
    command, so `stop` signals the whole group and nothing is left behind.
    """

    def __init__(self, *, platform: str = sys.platform, which: Which = shutil.which):
        self.platform = platform
        self.which = which
        self.process: subprocess.Popen | None = None

    @property
    def active(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, pid: int, reason: str, *, settle_s: float = 0.2) -> bool:
        """Start inhibiting sleep while `pid` lives; False (quietly) where no tool exists or it
        gives up at once (systemd-inhibit without logind: containers, sessions with no bus)."""
        return self._hold(inhibit_sleep_argv(pid, reason, platform=self.platform, which=self.which), settle_s)

    def start_for(self, seconds: int, reason: str, *, settle_s: float = 0.2) -> bool:
        """Inhibit idle sleep for `seconds` (the wait for a run window); False as `start`."""
        return self._hold(stay_awake_argv(seconds, reason, platform=self.platform, which=self.which), settle_s)

    def _hold(self, argv: list[str] | None, settle_s: float) -> bool:
        self.stop()
        if argv is None:
            return False
        try:
            process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                start_new_session=True,
            )  # fmt: skip
        except OSError:
            return False
        try:
            process.wait(settle_s)
            return False  # ended already: it never held the machine awake
        except subprocess.TimeoutExpired:
            self.process = process
            return True

    def stop(self, timeout_s: float = 5.0) -> None:
        """End the inhibitor if it still runs, and reap it."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return  # never signal a reaped pid's group: the number may be someone else's now
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(process.pid, sig)  # its group id is its pid (start_new_session)
            except ProcessLookupError:
                break
            try:
                process.wait(timeout_s)
                break
            except subprocess.TimeoutExpired:
                continue
        process.wait()


def on_battery(sensors: Callable[[], object] | None = None) -> bool | None:
    """True on battery, False on mains power, None where there is no battery sensor (desktops, VMs)."""
    sensors = sensors or getattr(psutil, "sensors_battery", None)
    if sensors is None:
        return None
    try:
        battery = sensors()
    except (OSError, RuntimeError, NotImplementedError):
        return None
    plugged = getattr(battery, "power_plugged", None) if battery is not None else None
    return None if plugged is None else not plugged


def applescript_string(text: str) -> str:
    """`text` as an AppleScript string literal, on one line."""
    one_line = " ".join(text.split())
    return '"' + one_line.replace("\\", "\\\\").replace('"', '\\"') + '"'


def notify_argv(
    title: str, message: str, *, platform: str = sys.platform, which: Which = shutil.which
) -> list[str] | None:
    """A desktop notification's command line; None where no notifier exists."""
    if platform == "darwin":
        script = f"display notification {applescript_string(message)} with title {applescript_string(title)}"
        return ["osascript", "-e", script]
    if platform.startswith("linux") and which("notify-send"):
        return ["notify-send", "--app-name=mtld", "--", title, message]  # `--`: a message may start with "-"
    return None


def notify(title: str, message: str, *, platform: str = sys.platform, which: Which = shutil.which,
           timeout_s: float = NOTIFY_TIMEOUT_S) -> bool:
    """Show a notification; True if the notifier ran and succeeded. Never raises: a job's end
    must not depend on a desktop being there (no display, no session bus)."""
    argv = notify_argv(title, message, platform=platform, which=which)
    if argv is None:
        return False
    try:
        result = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout_s, check=False)
    except (OSError, subprocess.SubprocessError):
        return False
    return result.returncode == 0
