"""Crash reports: what the CLI's last-resort handler writes when a command fails in a way mtld did not foresee.

The user sees one line naming the report; the report holds what ran (argv,
version, platform) and the traceback, without local variables (they may hold
job data). It goes under the state folder's `crash/` (user-only), or, when the
settings or that folder cannot be used, the system's temporary folder.
"""

from __future__ import annotations

import os
import sys
import tempfile
import traceback
from datetime import datetime, timezone
from pathlib import Path


def write_report(error: BaseException, argv: list[str], state_dir: Path | None = None) -> Path | None:
    """Write the report (under `state_dir`, else the one the settings name); its path, or None when no
    folder would take it. Never raises."""
    from mtld import __version__

    now = datetime.now(timezone.utc)
    text = "".join([
        f"mtld {__version__} crash report, {now.isoformat()}\n",
        f"command: mtld {' '.join(argv)}\n",
        f"python: {sys.version.split()[0]} on {sys.platform}\n\n",
        *traceback.format_exception(type(error), error, error.__traceback__),
    ])
    for folder in _folders(state_dir):
        try:
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd, path = tempfile.mkstemp(prefix=f"crash-{now:%Y%m%d-%H%M%S}-", suffix=".txt", dir=folder)  # 0600
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            return Path(path)
        except OSError:
            continue
    return None


def _folders(state_dir: Path | None) -> list[Path]:
    if state_dir is None:
        try:
            from mtld.config.settings import load_settings

            state_dir = load_settings().state_dir
        except Exception:  # the settings may be what is broken
            pass
    return [*([state_dir / "crash"] if state_dir else []), Path(tempfile.gettempdir())]
