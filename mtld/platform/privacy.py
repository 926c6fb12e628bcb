"""macOS privacy protection (TCC) and LaunchAgents: which paths an agent may be refused.

A LaunchAgent is not the Terminal: it does not inherit the Terminal's grant to
~/Documents, ~/Desktop or ~/Downloads, so a daemon that reads data there fails
with "Operation not permitted" although the same command works in a shell.
Apple, "Protecting user data" (Platform Security Guide): apps and processes
need the user's consent for Desktop, Documents and Downloads.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

PROTECTED = ("Documents", "Desktop", "Downloads")


def protected_folder(path: Path, home: Path) -> str | None:
    """The protected folder under `home` that `path` lies in (e.g. "~/Documents"), or None."""
    absolute = Path(os.path.abspath(os.path.expanduser(str(path))))
    for name in PROTECTED:
        if absolute == home / name or (home / name) in absolute.parents:
            return f"~/{name}"
    return None


def agent_warnings(paths: Iterable[tuple[str, Path]], *, home: Path, python: str) -> list[str]:
    """One line per (what, path) that macOS may hide from the agent, then how to grant access."""
    found = [(what, path, folder) for what, path in paths if (folder := protected_folder(path, home))]
    if not found:
        return []
    lines = [f"warning: {what} ({path}) is under {folder}, which macOS hides from agents unless allowed"
             for what, path, folder in found]
    lines.append(
        "Either move it out of ~/Documents, ~/Desktop and ~/Downloads (then submit again), or grant access: "
        f"System Settings > Privacy & Security > Full Disk Access, add {python} "
        "(press Cmd-Shift-G in the file dialog to type the path), then `mtld agent install` again."
    )
    return lines
