"""The LaunchAgent: its plist (built as a dict, written by plistlib) and its launchctl lines.

The dict in `plist_dict` is the single source of truth; `launchd/io.mtld.daemon.plist`
in the repository is this module's output for a placeholder user (regenerate it
with `python -m mtld.platform.agent > launchd/io.mtld.daemon.plist`).
"""

from __future__ import annotations

import plistlib
import re
from pathlib import Path

LABEL = "io.mtld.daemon"
THROTTLE_INTERVAL_S = 10  # launchd's minimum gap between two starts of the daemon

def plist_path(home: Path) -> Path:
    return home / "Library/LaunchAgents" / f"{LABEL}.plist"


def plist_dict(program: list[str], env: dict[str, str], log_dir: Path, exit_timeout_s: int) -> dict:
    """The LaunchAgent's keys; see launchd/README.md for why each is there."""
    return {
        "Label": LABEL,
        "ProgramArguments": list(program),
        "RunAtLoad": True,
        # Restart after a crash, not after a clean exit (someone asked it to
        # stop), like systemd's Restart=on-failure.
        "KeepAlive": {"SuccessfulExit": False},
        # The default (Standard) tier lets the system throttle CPU and I/O of
        # background agents, which makes overnight training crawl.
        "ProcessType": "Interactive",
        # launchd sends SIGTERM, then SIGKILL after this many seconds (launchd.plist(5),
        # ExitTimeOut): longer than the daemon's own worst-case stop, with a margin.
        "ExitTimeOut": exit_timeout_s,
        "ThrottleInterval": THROTTLE_INTERVAL_S,
        "StandardOutPath": str(log_dir / "daemon.stdout.log"),
        "StandardErrorPath": str(log_dir / "daemon.stderr.log"),
        "EnvironmentVariables": dict(env),
        "Umask": 0o077,  # state and logs are private to the user
    }


def render_plist(program: list[str], env: dict[str, str], log_dir: Path, exit_timeout_s: int) -> bytes:
    return plistlib.dumps(plist_dict(program, env, log_dir, exit_timeout_s), sort_keys=False)


def service_target(uid: int) -> str:
    return f"gui/{uid}/{LABEL}"


def bootout_argv(uid: int) -> list[str]:
    return ["launchctl", "bootout", service_target(uid)]


def bootstrap_argv(uid: int, plist: Path) -> list[str]:
    return ["launchctl", "bootstrap", f"gui/{uid}", str(plist)]


def enable_argv(uid: int) -> list[str]:
    """launchctl(1), enable: a service disabled earlier (`launchctl disable`, or switched off under Login
    Items > Allow in the Background) stays disabled across bootouts, and bootstrap does not start it."""
    return ["launchctl", "enable", service_target(uid)]


def print_disabled_argv(uid: int) -> list[str]:
    return ["launchctl", "print-disabled", f"gui/{uid}"]


def parse_disabled(stdout: str, label: str = LABEL) -> bool | None:
    """Whether `launchctl print-disabled gui/UID` lists `label` as disabled (`"LABEL" => disabled`, or
    `=> true` as older launchctl prints it); None when it is not listed (never enabled nor disabled)."""
    match = re.search(rf'^\s*"{re.escape(label)}" => (disabled|enabled|true|false)\s*$', stdout, flags=re.MULTILINE)
    return None if match is None else match.group(1) in ("disabled", "true")


# launchctl's error 125 ("Domain does not support specified action"): gui/UID names the user's GUI login
# domain, which exists only while the user is logged in at the GUI (launchctl(1), login/<asid> and gui/<uid>);
# an SSH session (with nobody logged in at the screen, or outside that login) cannot bootstrap into it.
NO_GUI_DOMAIN = 125


def explain_failure(returncode: int, stderr: str) -> str | None:
    """One clear line for a launchctl failure that retrying cannot cure, or None."""
    if returncode == NO_GUI_DOMAIN or "Domain does not support specified action" in stderr:
        return ("launchd has no GUI login session here to run the agent in (launchctl: 125: Domain does not support "
                "specified action), as in an SSH session: log in on the Mac itself (at its screen, or through "
                "Screen Sharing) and run `mtld agent install` in a Terminal there")
    return None


def read_installed(home: Path) -> dict | None:
    """The installed agent's plist (its ProgramArguments and EnvironmentVariables), or None if there is
    none or it cannot be read."""
    try:
        with plist_path(home).open("rb") as f:
            keys = plistlib.load(f)
    except (OSError, plistlib.InvalidFileException, ValueError):
        return None
    return keys if isinstance(keys, dict) else None


def print_argv(uid: int) -> list[str]:
    return ["launchctl", "print", service_target(uid)]


def parse_print(returncode: int, stdout: str) -> dict:
    """Loaded, running and pid from `launchctl print gui/UID/LABEL` (exit 113: not loaded).

    Only the service's own top-level lines count (one tab deep); nested blocks
    such as `endpoints` have `state` lines of their own.
    """
    if returncode != 0:
        return {"loaded": False, "running": False, "pid": None, "state": None}
    fields = dict(re.findall(r"^\t(state|pid) = (.+)$", stdout, flags=re.MULTILINE))
    state = fields.get("state")
    pid = int(fields["pid"]) if fields.get("pid", "").isdigit() else None
    return {"loaded": True, "running": state == "running", "pid": pid, "state": state}


def parse_print_details(stdout: str) -> dict:
    """The service's own `exit timeout`, `umask` (octal), `spawn type` (the ProcessType) and
    `last exit code` lines from `launchctl print` (a format launchctl(1) calls unstable: absent keys are None)."""
    fields = dict(re.findall(r"^\t(exit timeout|umask|spawn type|last exit code) = (.+)$", stdout, flags=re.MULTILINE))
    timeout, umask = fields.get("exit timeout", ""), fields.get("umask", "")
    spawn = fields.get("spawn type")
    return {
        "exit_timeout_s": int(timeout) if timeout.isdigit() else None,
        "umask": int(umask, 8) if umask and all(c in "01234567" for c in umask) else None,
        "process_type": spawn.split(" (")[0] if spawn else None,  # "interactive (4)" -> "interactive"
        "last_exit_code": fields.get("last exit code"),
    }
