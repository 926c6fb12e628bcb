"""The macOS probe: the kernel's pressure level `kern.memorystatus_vm_pressure_level` and psutil's figures.

The sysctl is read through libc's sysctlbyname via ctypes (microseconds), or
`sysctl -n` where libc has none; `macos_level` is the pure decision.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

from mtld.memory.figures import MemoryFigures, psutil_figures
from mtld.memory.levels import Level, Reading, available_level, error_text, worst
from mtld.settings import MemorySettings

MACOS_LEVELS = {1: Level.NORMAL, 2: Level.WARN, 4: Level.CRITICAL}  # kern.memorystatus_vm_pressure_level


def macos_level(sysctl_value: int) -> Level:
    """The kernel's pressure level; an unknown value reads as normal (the probe notes it)."""
    return MACOS_LEVELS.get(sysctl_value, Level.NORMAL)


# ------------------------------------------------------------------ reading a sysctl

PRESSURE_SYSCTL = "kern.memorystatus_vm_pressure_level"

# int sysctlbyname(const char *name, void *oldp, size_t *oldlenp, void *newp, size_t newlen)
SYSCTLBYNAME = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t),
                                ctypes.c_void_p, ctypes.c_size_t, use_errno=True)
_libc_sysctlbyname: Any = None  # looked up once; False where libc has none (Linux)


def _find_sysctlbyname() -> Any:
    global _libc_sysctlbyname
    if _libc_sysctlbyname is None:
        try:
            _libc_sysctlbyname = SYSCTLBYNAME(("sysctlbyname", ctypes.CDLL(None, use_errno=True)))
        except (OSError, AttributeError):
            _libc_sysctlbyname = False
    return _libc_sysctlbyname or None


def read_sysctl_int(name: str) -> int:
    """An integer sysctl: sysctlbyname through ctypes (microseconds), or `sysctl -n` (milliseconds)
    where libc has no sysctlbyname. Raises OSError when it cannot be read."""
    function = _find_sysctlbyname()
    return sysctl_by_ctypes(name, function) if function is not None else sysctl_by_command(name)


def sysctl_by_ctypes(name: str, sysctlbyname: Any) -> int:
    """Calls a SYSCTLBYNAME function (libc's, or a fake in tests) for a 4- or 8-byte integer."""
    buffer = (ctypes.c_ubyte * 8)()
    size = ctypes.c_size_t(ctypes.sizeof(buffer))
    if sysctlbyname(name.encode(), buffer, ctypes.byref(size), None, 0) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"sysctlbyname({name}): {os.strerror(errno)}")
    if size.value not in (4, 8):
        raise OSError(f"sysctlbyname({name}): a {size.value}-byte value, not an integer")
    return int.from_bytes(bytes(buffer)[: size.value], sys.byteorder, signed=True)


def sysctl_by_command(name: str, run: Callable[..., Any] = subprocess.run) -> int:
    try:
        done = run(["sysctl", "-n", name], capture_output=True, text=True, timeout=2, check=True)
        return int(done.stdout.strip())
    except (subprocess.SubprocessError, ValueError) as e:
        said = (getattr(e, "stderr", None) or "").strip()
        raise OSError(f"sysctl -n {name}: {error_text(e)}{f' ({said[:100]})' if said else ''}") from None


# ------------------------------------------------------------------ the probe


class MacProbe:
    """The kernel's pressure level (what Activity Monitor's graph shows) and psutil's figures.

    The level is the worse of the kernel's and the available level (psutil's
    available on macOS is free + inactive pages).
    """

    source = "macos"

    def __init__(self, settings: MemorySettings, *, sysctl: Callable[[str], int] = read_sysctl_int,
                 figures: Callable[[], MemoryFigures] = psutil_figures):
        self.settings, self.sysctl, self.figures = settings, sysctl, figures

    def read(self) -> Reading:
        detail: dict[str, Any] = {}
        notes: list[str] = []
        try:
            value = self.sysctl(PRESSURE_SYSCTL)
            detail["sysctl_pressure_level"] = value
            if value not in MACOS_LEVELS:
                notes.append(f"{PRESSURE_SYSCTL} = {value}: unknown, read as normal")
            level = macos_level(value)
        except OSError as e:
            notes.append(f"{error_text(e)}; level from available memory only")
            level = Level.NORMAL
        total, available, swap = self.figures()
        by_available = available_level(available, total, warn=self.settings.available_warn,
                                       critical=self.settings.available_critical)
        detail.update(kernel_level=level.value, available_level=by_available.value)
        if notes:
            detail["notes"] = notes
        return Reading(worst(level, by_available), available, total, swap, self.source, detail)
