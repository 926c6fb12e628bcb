"""A worker that sees a folder read-only: an interpreter (a script standing in for `python`) that runs in a
mount namespace of its own where the folder is bind-mounted read-only, while this machine's other processes
(the daemon, the test) still write it. unshare(1) -U -r -m makes the namespaces without privileges where the
kernel allows unprivileged user namespaces; mount(8) --bind then -o remount,ro,bind makes the read-only view
(a bind mount's read-only flag is set by remounting it: mount(8), "bind mount operation")."""

from __future__ import annotations

import shutil
import stat
import subprocess
import sys
from pathlib import Path

SCRIPT = """#!/bin/sh
# {folder} is read-only for this interpreter and everything it starts (tests/readonly.py)
exec unshare -U -r -m sh -c 'mount --bind "$0" "$0" && mount -o remount,ro,bind "$0" "$0" && exec "$@"' \\
    '{folder}' '{python}' "$@"
"""


def available() -> str | None:
    """Why a read-only view cannot be made here (no unshare, or user namespaces not allowed), else None."""
    if not shutil.which("unshare"):
        return "unshare(1) is not installed"
    done = subprocess.run(["unshare", "-U", "-r", "-m", "true"], capture_output=True, text=True)
    return None if done.returncode == 0 else f"unshare -U -r -m is not allowed here: {done.stderr.strip()}"


def python_seeing_read_only(folder: Path, at: Path, python: str = sys.executable) -> Path:
    """An executable at `at` that runs `python` with `folder` read-only."""
    at.write_text(SCRIPT.format(folder=folder, python=python))
    at.chmod(at.stat().st_mode | stat.S_IXUSR)
    return at
