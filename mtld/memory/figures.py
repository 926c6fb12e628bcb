"""The machine's memory figures (total, available, swap used), and reading small files cheaply.

Linux reads them from /proc/meminfo (one read, ~5x cheaper than psutil's
two); elsewhere, or when that cannot be read, from psutil. `read_file` is the
cheap read the Linux and simulated probes use for procfs, sysfs and their own
files.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import NamedTuple

import psutil


class MemoryFigures(NamedTuple):
    total_bytes: int | None
    available_bytes: int | None
    swap_used_bytes: int | None


# Only the keys used, by one regular expression: 5x faster than splitting every line.
_MEMINFO_KEYS = re.compile(r"^(MemTotal|MemFree|MemAvailable|Buffers|Cached|SwapTotal|SwapFree):\s+(\d+) kB$", re.M)


def parse_meminfo(text: str) -> MemoryFigures:
    """/proc/meminfo → total, available (MemAvailable) and swap used, in bytes."""
    kib = {key: int(value) for key, value in _MEMINFO_KEYS.findall(text)}
    if "MemTotal" not in kib:
        raise ValueError("no MemTotal in meminfo")
    available = kib.get("MemAvailable")
    if available is None:  # kernels before 3.14: a rough estimate
        available = kib.get("MemFree", 0) + kib.get("Buffers", 0) + kib.get("Cached", 0)
    swap = kib["SwapTotal"] - kib["SwapFree"] if "SwapTotal" in kib and "SwapFree" in kib else None
    return MemoryFigures(kib["MemTotal"] * 1024, available * 1024, None if swap is None else swap * 1024)


def read_file(path: Path) -> str:
    """A small procfs/sysfs file, via os-level calls (about twice as fast as open())."""
    fd = os.open(path, os.O_RDONLY)
    try:
        chunks = []
        while chunk := os.read(fd, 16384):
            chunks.append(chunk)
        return b"".join(chunks).decode("ascii", "replace")
    finally:
        os.close(fd)


def psutil_figures() -> MemoryFigures:
    vm, swap = psutil.virtual_memory(), psutil.swap_memory()
    return MemoryFigures(int(vm.total), int(vm.available), int(swap.used))


def memory_figures(root: Path = Path("/")) -> MemoryFigures:
    """From root/proc/meminfo where there is one (one read, ~5x cheaper than psutil's two), else psutil."""
    try:
        return parse_meminfo(read_file(root / "proc/meminfo"))
    except (OSError, ValueError):
        return psutil_figures()
