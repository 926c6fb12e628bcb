"""The macOS probe: the kernel's level `kern.memorystatus_vm_pressure_level` decides; psutil's figures are data.

The sysctls are read through libc's sysctlbyname via ctypes (microseconds), or
`sysctl -n` where libc has none; `macos_level` is the pure decision. The
process's own footprint, `phys_footprint`, comes from libproc's
proc_pid_rusage, also through ctypes.

Why the kernel's level and not psutil's available share: psutil's
"available" on macOS is free + inactive pages (psutil/_psosx.py,
virtual_memory), which leaves out active and speculative pages the kernel can
compress at will and sinks while MPS keeps buffers wired; on a 16 GB Mac
training on MPS it reads 4-8 % with the kernel at normal. The kernel's level
is what it acts on itself: warn when uncompressed available memory falls
below the compressor's compact threshold, normal again only above 1.2 times
it (XNU osfmk/vm/vm_pageout.c, VM_PRESSURE_NORMAL_TO_WARNING and
VM_PRESSURE_WARNING_TO_NORMAL), reported through this sysctl as
NOTE_MEMORYSTATUS_PRESSURE_NORMAL/WARN/CRITICAL = 1/2/4
(bsd/kern/kern_memorystatus_notify.c, sysctl_memorystatus_vm_pressure_level).
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

from mtld.memory.figures import MemoryFigures, psutil_figures
from mtld.memory.levels import Level, Reading, available_level, error_text
from mtld.config.settings import MemorySettings

MACOS_LEVELS = {1: Level.NORMAL, 2: Level.WARN, 4: Level.CRITICAL}  # kern.memorystatus_vm_pressure_level


def macos_level(sysctl_value: int) -> Level:
    """The kernel's pressure level; an unknown value reads as normal (the probe notes it)."""
    return MACOS_LEVELS.get(sysctl_value, Level.NORMAL)


# ------------------------------------------------------------------ reading a sysctl

PRESSURE_SYSCTL = "kern.memorystatus_vm_pressure_level"
# The kernel's available share in %: memorystatus_level = available pages × 100 / total pages, where on
# macOS available is AVAILABLE_NON_COMPRESSED_MEMORY, active + inactive + free + speculative pages
# (XNU vm_pageout.c, vm_pressure_response; osfmk/vm/vm_page.h). `memory_pressure` prints it as
# "System-wide memory free percentage".
AVAILABLE_SYSCTL = "kern.memorystatus_level"

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
    """The kernel's pressure level (what Activity Monitor's graph shows) decides; psutil's figures are data.

    `available_bytes` is psutil's (free + inactive), kept for logs, `doctor`
    and `report` with its own verdict in detail["available_level"], but it
    drives nothing. `usable_bytes`, what the fits-or-defer check uses, is the
    kernel's kern.memorystatus_level share of total. Only when the kernel's
    level cannot be read does the available share decide, and the reading
    says so in its notes.
    """

    source = "macos"
    decides = "the kernel's level, kern.memorystatus_vm_pressure_level (psutil's available share is data only)"

    def __init__(self, settings: MemorySettings, *, sysctl: Callable[[str], int] = read_sysctl_int,
                 figures: Callable[[], MemoryFigures] = psutil_figures):
        self.settings, self.sysctl, self.figures = settings, sysctl, figures

    def read(self) -> Reading:
        detail: dict[str, Any] = {}
        notes: list[str] = []
        total, available, swap = self.figures()
        by_available = available_level(available, total, warn=self.settings.available_warn,
                                       critical=self.settings.available_critical)
        try:
            value = self.sysctl(PRESSURE_SYSCTL)
            detail["sysctl_pressure_level"] = value
            if value not in MACOS_LEVELS:
                notes.append(f"{PRESSURE_SYSCTL} = {value}: unknown, read as normal")
            level = kernel = macos_level(value)
        except OSError as e:
            notes.append(f"{error_text(e)}; level from the available share instead")
            kernel, level = None, by_available
        usable = None
        try:
            share = self.sysctl(AVAILABLE_SYSCTL)
            detail["memorystatus_level"] = share
            if total and 0 <= share <= 100:
                usable = total * share // 100
        except OSError as e:
            notes.append(f"{error_text(e)}; fits checked against the available share")
        detail.update(kernel_level=kernel.value if kernel else None, available_level=by_available.value)
        if available is not None and total:
            detail["available_share"] = round(available / total, 4)
        if notes:
            detail["notes"] = notes
        return Reading(level, available, total, swap, self.source, detail, usable_bytes=usable)


# ------------------------------------------------------------------ the process's footprint

RUSAGE_INFO_V0 = 0  # bsd/sys/resource.h


class RusageInfoV0(ctypes.Structure):
    """struct rusage_info_v0 (XNU bsd/sys/resource.h); ri_phys_footprint is the task's phys_footprint ledger
    (osfmk/kern/bsd_kern.c fills it with get_task_phys_footprint)."""

    _fields_ = [("ri_uuid", ctypes.c_uint8 * 16)] + [(name, ctypes.c_uint64) for name in (
        "ri_user_time", "ri_system_time", "ri_pkg_idle_wkups", "ri_interrupt_wkups", "ri_pageins",
        "ri_wired_size", "ri_resident_size", "ri_phys_footprint", "ri_proc_start_abstime", "ri_proc_exit_abstime")]


# int proc_pid_rusage(int pid, int flavor, rusage_info_t *buffer)  (libproc.h, macOS 10.9+)
PROC_PID_RUSAGE = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.POINTER(RusageInfoV0),
                                   use_errno=True)
_libc_proc_pid_rusage: Any = None  # looked up once; False where libc has none (Linux)


def _find_proc_pid_rusage() -> Any:
    global _libc_proc_pid_rusage
    if _libc_proc_pid_rusage is None:
        try:
            _libc_proc_pid_rusage = PROC_PID_RUSAGE(("proc_pid_rusage", ctypes.CDLL(None, use_errno=True)))
        except (OSError, AttributeError):
            _libc_proc_pid_rusage = False
    return _libc_proc_pid_rusage or None


def phys_footprint(pid: int | None = None, function: Any = None) -> int:
    """The process's phys_footprint in bytes: what XNU's memory limits and jetsam count against it
    (anonymous and compressed memory, IOKit mappings, footprint-tagged graphics memory; osfmk/kern/task.c),
    and what Activity Monitor's "Memory" column and footprint(1) show. psutil 7 has no such figure on macOS
    (memory_info is rss/vms/pfaults/pageins, memory_full_info adds a region-walking uss; psutil 8's
    memory_info_ex reads it through task_info), so it is read here from proc_pid_rusage (RUSAGE_INFO_V0).
    Raises OSError where it cannot be read (not macOS, or the process is gone)."""
    function = function or _find_proc_pid_rusage()
    if function is None:
        raise OSError("proc_pid_rusage is not available here (macOS only)")
    info = RusageInfoV0()
    if function(os.getpid() if pid is None else pid, RUSAGE_INFO_V0, ctypes.byref(info)) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"proc_pid_rusage({pid}): {os.strerror(errno)}")
    return int(info.ri_phys_footprint)
