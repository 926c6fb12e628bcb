"""The simulated probe: the level (and optionally available bytes) read from a file, to rehearse pressure."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from mtld.memory.figures import MemoryFigures, memory_figures, read_file
from mtld.memory.levels import Level, Reading, error_text


def parse_simulated(text: str) -> tuple[Level, int | None, str | None]:
    """The simulated file: `normal` | `warn` | `critical`, optionally followed by available bytes.

    Never raises: what cannot be read reads as normal, with a note.
    """
    words = text.split()
    if not words:
        return Level.NORMAL, None, "empty file reads as normal"
    try:
        level = Level(words[0].lower())
    except ValueError:
        return Level.NORMAL, None, f"unreadable level {words[0][:40]!r} reads as normal"
    if len(words) < 2:
        return level, None, None
    if words[1].isdigit():
        return level, int(words[1]), None
    return level, None, f"unreadable available bytes {words[1][:40]!r} ignored"


class SimulatedProbe:
    """The level (and optionally available bytes) from a file: `warn`, or `warn 2000000000`.

    For tests, and for users rehearsing what mtld does under pressure (like
    macOS `memory_pressure -S`). A missing file reads as normal; total and swap
    are the machine's. Never raises.
    """

    source = "simulated"
    decides = "the level written in memory.simulated_file"

    def __init__(self, path: Path, *, figures: Callable[[], MemoryFigures] = memory_figures):
        self.path, self.figures = Path(path), figures

    def read(self) -> Reading:
        try:
            level, available, note = parse_simulated(read_file(self.path))
        except FileNotFoundError:
            level, available, note = Level.NORMAL, None, "no file: normal"
        except OSError as e:
            level, available, note = Level.NORMAL, None, f"{error_text(e)}; read as normal"
        total, machine_available, swap = self.figures()
        detail: dict[str, Any] = {"file": str(self.path)}
        if note:
            detail["notes"] = [note]
        return Reading(level, machine_available if available is None else available, total, swap, self.source, detail)
