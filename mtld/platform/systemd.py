"""The systemd user unit: its text and its `systemctl --user` lines.

systemd delivers SIGTERM to the daemon only (KillMode=mixed: the daemon asks
its training child to checkpoint itself), then SIGKILL to everything left in
the unit after TimeoutStopSec, which is longer than the daemon's own wait.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Mapping

UNIT = "mtld.service"
RESTART_SEC = 10  # like the LaunchAgent's ThrottleInterval


def unit_path(home: Path, env: Mapping[str, str]) -> Path:
    config = Path(env["XDG_CONFIG_HOME"]) if env.get("XDG_CONFIG_HOME") else home / ".config"
    return config / "systemd/user" / UNIT


def quote(word: str, *, expand_dollar: bool = False) -> str:
    """One word as a unit file value: `%` doubled (specifiers), `$` doubled in ExecStart
    (variable expansion), double-quoted with C escapes when it has spaces or quotes."""
    word = word.replace("%", "%%")
    if expand_dollar:
        word = word.replace("$", "$$")
    if word and not re.search(r"[\s\"'\\;]", word):
        return word
    escaped = word.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
    return f'"{escaped}"'


def render_unit(program: list[str], env: dict[str, str], exit_timeout_s: int) -> str:
    exec_start = " ".join(quote(word, expand_dollar=True) for word in program)
    environment = " ".join(quote(f"{key}={value}") for key, value in env.items())
    return f"""\
[Unit]
Description=mtld training daemon (fine-tunes multi-task encoders overnight)

[Service]
Type=simple
ExecStart={exec_start}
Environment={environment}
Restart=on-failure
RestartSec={RESTART_SEC}
KillMode=mixed
TimeoutStopSec={exit_timeout_s}
UMask=0077

[Install]
WantedBy=default.target
"""


def systemctl(*args: str) -> list[str]:
    return ["systemctl", "--user", *args]


def show_argv() -> list[str]:
    return systemctl("show", UNIT, "--property=LoadState,ActiveState,SubState,MainPID")


def parse_show(returncode: int, stdout: str) -> dict:
    """Loaded, running and pid from `systemctl --user show` (KEY=value lines, stable for machines)."""
    if returncode != 0:
        return {"loaded": False, "running": False, "pid": None, "state": None}
    fields = dict(line.split("=", 1) for line in stdout.splitlines() if "=" in line)
    pid = int(fields.get("MainPID", "0") or 0)
    active = fields.get("ActiveState")
    return {
        "loaded": fields.get("LoadState") == "loaded",
        "running": active == "active",
        "pid": pid or None,
        "state": f"{active}/{fields['SubState']}" if active and fields.get("SubState") else active,
    }
