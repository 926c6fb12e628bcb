"""A process's memory as its platform accounts it: what the guard compares with the budget for a CPU run,
and what `mtld doctor --record-trace` records next to the machine's readings."""

from __future__ import annotations

import sys

import psutil

from mtld.memory.macos import phys_footprint


def process_footprint(pid: int | None = None, platform: str = sys.platform) -> int:
    """A process's memory as its platform accounts it: macOS phys_footprint (mtld.memory.macos), elsewhere the
    resident set. Raises OSError (psutil's NoSuchProcess and AccessDenied are not) when it cannot be read."""
    if platform == "darwin":
        return phys_footprint(pid)
    try:
        return int(psutil.Process(pid).memory_info().rss)
    except psutil.Error as e:
        raise OSError(f"process {pid}: {e}") from None
