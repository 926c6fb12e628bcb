"""macOS privacy protection (TCC) and LaunchAgents: which paths an agent may be refused, and whom to grant.

A LaunchAgent is not the Terminal: it does not inherit the Terminal's grants, so
a daemon that reads data in ~/Documents fails with "Operation not permitted"
although the same command works in a shell. Its own virtual environment is no
exception: Python reads `pyvenv.cfg` at start, and an agent whose venv is in
~/Documents exits at once, and again every ThrottleInterval all night.

Apple Platform Security, "Controlling app access to files in macOS": apps need the
user's consent for Desktop, Documents, Downloads, iCloud Drive, network volumes
and removable volumes; Full Disk Access (System Settings > Privacy & Security)
grants all of them to one binary.

The checks here are pure: paths in, lines out (`resolve` follows symlinks; tests
pass recorded paths). The CLI runs them at `mtld agent install` and at `mtld submit`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Under the user's home: (folder, how a person names it). ~/Library/Mobile Documents is iCloud Drive.
PROTECTED = (("Desktop", "~/Desktop"), ("Documents", "~/Documents"), ("Downloads", "~/Downloads"),
             ("Library/Mobile Documents", "iCloud Drive (~/Library/Mobile Documents)"))
HOW_TO_GRANT = "System Settings > Privacy & Security > Full Disk Access"

Resolve = Callable[[str], str]


def protected_place(path: Path | str, home: Path, *, resolve: Resolve = os.path.realpath) -> str | None:
    """Where `path` lies that macOS hides from agents ("~/Documents", "/Volumes/USB"), or None.

    Compared without case, as APFS and HFS+ are by default. `/Volumes/NAME` is any other
    mounted volume: removable or network, both behind consent (the boot volume's link there,
    `/Volumes/Macintosh HD`, resolves to `/`).
    """
    absolute = Path(resolve(os.path.abspath(os.path.expanduser(str(path)))))
    folded = [part.casefold() for part in absolute.parts]
    home_parts = [part.casefold() for part in Path(resolve(os.path.abspath(str(home)))).parts]
    for folder, name in PROTECTED:
        inside = home_parts + [part.casefold() for part in Path(folder).parts]
        if folded[: len(inside)] == inside:
            return name
    if len(folded) >= 3 and folded[1] == "volumes":
        return f"/Volumes/{absolute.parts[2]} (a removable or network volume)"
    return None


# A framework build's bin/python3.X (python.org, Homebrew) is a launcher that re-executes the interpreter
# inside Python.app (CPython, Mac/Tools/pythonw.c: Versions/X.Y/Resources/Python.app/Contents/MacOS/Python).
FRAMEWORK_BIN = re.compile(r"^(?P<version>.*/Python3?\.framework/Versions/[^/]+)/bin/python[0-9.]*$")


@dataclass(frozen=True)
class Interpreter:
    """The Python a LaunchAgent runs, as macOS privacy sees it."""

    path: str  # what launchd starts: the venv's bin/python, not resolved (or its packages are lost)
    prefix: str  # sys.prefix: the venv, whose pyvenv.cfg Python reads before anything else
    real: str  # the binary behind the venv's symlinks
    app: str | None  # the framework's Python.app that `real` re-executes, if it is such a launcher

    @property
    def runs(self) -> str:
        """The binary that ends up running (and asking for access)."""
        return f"{self.app}/Contents/MacOS/Python" if self.app else self.real

    @property
    def grant(self) -> str:
        """What to add under Full Disk Access: Python.app for a framework build, else the binary."""
        return self.app or self.real


def interpreter(path: str, prefix: str | None = None, *, resolve: Resolve = os.path.realpath) -> Interpreter:
    """Facts of the interpreter at `path`; `prefix` defaults to the folder above its bin/ (a venv's root)."""
    real = resolve(path)
    match = FRAMEWORK_BIN.match(real)
    return Interpreter(path=path, prefix=prefix or os.path.dirname(os.path.dirname(path)), real=real,
                       app=f"{match.group('version')}/Resources/Python.app" if match else None)


def interpreter_paths(python: Interpreter) -> list[tuple[str, str]]:
    """(what, path) the agent's interpreter itself needs before mtld runs a line: its environment
    (sys.prefix), the python it starts and the binary behind it, each unless inside one named before."""
    found = [("the agent's Python environment", python.prefix)]
    for what, path in (("the Python the agent runs", python.path), ("the binary behind it", python.runs)):
        if not any(Path(path).is_relative_to(seen) for _, seen in found):
            found.append((what, path))
    return found


# Settings the agent carries whose values are paths it reads (mtld.platform.agent.carried_env).
PATH_SETTINGS = ("MTLD_HOME", "MTLD_CONFIG", "HF_HOME", "HF_HUB_CACHE", "HF_TOKEN_PATH", "REQUESTS_CA_BUNDLE",
                 "SSL_CERT_FILE")


def environment_paths(env: Mapping[str, str]) -> list[tuple[str, str]]:
    """(what, path) of the agent's environment that names files or folders it reads."""
    return [(key, env[key]) for key in PATH_SETTINGS if env.get(key)]


def job_paths(label: str, spec: Any) -> list[tuple[str, Path]]:
    """(what, path) a job's run reads or writes: its model and tokenizer folders (a hub id is resolved to
    its snapshot folder at submit), its data files and its output folder (None: the state folder's)."""
    found: list[tuple[str, Path]] = []
    for key in ("model", "tokenizer"):
        value = getattr(spec, key, None)
        if value and os.path.isabs(value):
            found.append((f"{label} {key}", Path(value)))
    for task in spec.tasks:
        found += [(f"{label} data", path) for path in (task.train, task.eval) if path is not None]
    if spec.output is not None:
        found.append((f"{label} output", spec.output))
    return found


def warnings(paths: Iterable[tuple[str, Path | str]], *, home: Path, grant: str,
             resolve: Resolve = os.path.realpath) -> list[str]:
    """One line per (what, path) macOS may hide from the agent, then what to do: move it, or grant
    Full Disk Access to `grant` (Interpreter.grant of the agent's Python)."""
    found = [(what, path, place) for what, path in dict.fromkeys(paths)
             if (place := protected_place(path, home, resolve=resolve))]
    if not found:
        return []
    lines = [f"warning: {what} ({path}) is in {place}, which macOS hides from agents unless allowed"
             for what, path, place in found]
    lines.append(
        "The agent could not read it at night (a Python it cannot read does not even start). Either move it "
        "out of ~/Documents, ~/Desktop, ~/Downloads and iCloud Drive and off removable or network volumes, or "
        f"give the agent's Python Full Disk Access: {HOW_TO_GRANT}, add {grant} (press Cmd-Shift-G in the file "
        "dialog to type the path), then run `mtld agent install` again (it restarts the daemon)."
    )
    return lines
