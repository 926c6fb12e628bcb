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

What a new run "fits" in is another figure (`mac_fit`): the pages the kernel
can hand it without taking anybody's active pages (free, speculative and
inactive, read from host_statistics64 through ctypes), and never more than
would push the kernel's own level to warn. kern.memorystatus_level, which
counts other programs' active pages as available, is data only.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

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
# (XNU vm_pageout.c, vm_pressure_response; osfmk/vm/vm_page.h, VM_CHECK_MEMORYSTATUS without CONFIG_JETSAM,
# which macOS lacks: config/MASTER.arm64.MacOSX). `memory_pressure` prints it as "System-wide memory free
# percentage". Other programs' active pages count as available in it, so it is data, not what "fits" uses.
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


# ------------------------------------------------------------------ the page counts: host_statistics64


class VmStatistics64(ctypes.Structure):
    """struct vm_statistics64, field for field (XNU osfmk/mach/vm_statistics.h; natural_t is unsigned int:
    bsd/arm/_types.h). ctypes' natural alignment gives the header's layout: 152 bytes, a multiple of its
    __attribute__((aligned(8)))."""

    _fields_ = [
        ("free_count", ctypes.c_uint), ("active_count", ctypes.c_uint), ("inactive_count", ctypes.c_uint),
        ("wire_count", ctypes.c_uint),
        *[(name, ctypes.c_uint64) for name in ("zero_fill_count", "reactivations", "pageins", "pageouts", "faults",
                                               "cow_faults", "lookups", "hits", "purges")],
        ("purgeable_count", ctypes.c_uint), ("speculative_count", ctypes.c_uint),
        *[(name, ctypes.c_uint64) for name in ("decompressions", "compressions", "swapins", "swapouts")],
        ("compressor_page_count", ctypes.c_uint), ("throttled_count", ctypes.c_uint),
        ("external_page_count", ctypes.c_uint), ("internal_page_count", ctypes.c_uint),
        ("total_uncompressed_pages_in_compressor", ctypes.c_uint64),
    ]


HOST_VM_INFO64 = 4  # osfmk/mach/host_info.h
# sizeof(vm_statistics64_data_t) / sizeof(integer_t) (osfmk/mach/host_info.h): 38; rev0 lacks the last 14 ints,
# the compressor's figures among them, which the kernel fills only when asked for the whole struct
# (osfmk/kern/host.c, vm_stats).
HOST_VM_INFO64_COUNT = ctypes.sizeof(VmStatistics64) // ctypes.sizeof(ctypes.c_int)

# kern_return_t host_statistics64(host_t, host_flavor_t, host_info64_t, mach_msg_type_number_t *)
# (osfmk/mach/mach_host.defs; host_t is a mach_port_t, an unsigned int in user space)
HOST_STATISTICS64 = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_uint, ctypes.c_int, ctypes.POINTER(VmStatistics64),
                                     ctypes.POINTER(ctypes.c_uint))
_mach: Any = None  # (host_statistics64, the host port, the kernel's page size), looked up once; False off macOS


class VmPages(BaseModel):
    """One host_statistics64(HOST_VM_INFO64) reading's page counts, as the kernel gives them, and the kernel's
    page size. free_count includes the speculative pages (osfmk/kern/host.c, vm_stats: free_count =
    vm_page_free_count + speculative); vm_stat(1) prints free_count - speculative_count as "Pages free"."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    page_size: int = Field(gt=0)
    free_count: int = Field(ge=0)
    active_count: int = Field(ge=0)
    inactive_count: int = Field(ge=0)
    speculative_count: int = Field(ge=0)
    compressor_page_count: int = Field(ge=0)
    wire_count: int | None = Field(default=None, ge=0)  # the rest are shown, not used
    purgeable_count: int | None = Field(default=None, ge=0)
    external_page_count: int | None = Field(default=None, ge=0)
    internal_page_count: int | None = Field(default=None, ge=0)


def vm_pages_from(stats: VmStatistics64, count: int, page_size: int) -> VmPages:
    """The figures of a filled struct; `count` is what the kernel said it filled (in ints)."""
    if count < HOST_VM_INFO64_COUNT:
        raise OSError(f"host_statistics64 filled {count} of {HOST_VM_INFO64_COUNT} ints: no compressor figures")
    return VmPages(page_size=page_size, **{name: int(getattr(stats, name)) for name in VmPages.model_fields
                                           if name != "page_size"})


def _find_mach() -> Any:
    global _mach
    if _mach is None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            function = HOST_STATISTICS64(("host_statistics64", libc))
            # mach_host_self() adds a send right at every call (osfmk/kern/ipc_host.c, host_self_trap): asked once
            host = ctypes.CFUNCTYPE(ctypes.c_uint)(("mach_host_self", libc))()
            # the page size host_statistics64 counts in; vm_stat(1) prints the same (libsyscall/mach/mach_init.c)
            page_size = ctypes.c_size_t.in_dll(libc, "vm_kernel_page_size").value
            _mach = (function, host, page_size)
        except (OSError, AttributeError, ValueError):
            _mach = False
    return _mach or None


def read_vm_pages(mach: Any = None) -> VmPages:
    """This machine's page counts, from host_statistics64 through ctypes (microseconds). `mach` is
    (function, host port, page size): a fake HOST_STATISTICS64 in tests. Raises OSError where it cannot be read.
    Past 2-10 calls a second, system-wide, a program that is not Apple's gets the kernel's cached copy
    (osfmk/kern/host.c, rate_limit_host_statistics): at most a second old, which a check before a run can bear."""
    mach = mach or _find_mach()
    if mach is None:
        raise OSError("host_statistics64 is not available here (macOS only)")
    function, host, page_size = mach
    stats, count = VmStatistics64(), ctypes.c_uint(HOST_VM_INFO64_COUNT)
    status = function(host, HOST_VM_INFO64, ctypes.byref(stats), ctypes.byref(count))
    if status != 0:
        raise OSError(f"host_statistics64(HOST_VM_INFO64): kern_return_t {status}")
    return vm_pages_from(stats, count.value, page_size)


# ------------------------------------------------------------------ what a new run fits in

# The compressor's minor-compaction divisor on macOS (osfmk/vm/vm_compressor.c, vm_compressor_init): 20 above
# 3 GB of RAM, 11 at or below (15 with swap on a hard disk, which no Apple silicon Mac has).
COMPACT_DIVISOR, SMALL_MAC_COMPACT_DIVISOR, SMALL_MAC_BYTES = 20, 11, 3 * 2**30


@dataclass(frozen=True)
class MacFit:
    """What a new run can take on this Mac now (`bytes`, the smaller of the two), and why."""

    bytes: int
    # free, speculative and inactive pages: what the kernel hands out without taking anybody's active pages
    reclaimable_bytes: int
    # how much may leave the uncompressed pool (MPS buffers are wired) before the kernel's level turns warn
    before_warn_bytes: int

    @property
    def bound(self) -> str:
        return ("free + speculative + inactive pages" if self.reclaimable_bytes <= self.before_warn_bytes
                else "the kernel's warn point")


def mac_fit(pages: VmPages, total_bytes: int | None) -> MacFit:
    """The conservative "fits" figure. kern.memorystatus_level counts active pages too, so with a browser and
    an IDE open it promises their working sets to a run; here only free + speculative + inactive pages count,
    capped where the kernel would warn: it goes from normal to warn when uncompressed memory U (active +
    inactive + free + speculative) falls below (U + compressor pages C) × 10 / divisor (osfmk/vm/vm_pageout.c,
    VM_PRESSURE_NORMAL_TO_WARNING; VM_PAGE_COMPRESSOR_COMPACT_THRESHOLD in osfmk/vm/vm_compressor_xnu.h), so
    U may fall by at most U - C × 10 / (divisor - 10): U - C on a Mac with more than 3 GB."""
    reclaimable = pages.free_count + pages.inactive_count  # free_count includes the speculative pages
    uncompressed = pages.active_count + pages.inactive_count + pages.free_count  # AVAILABLE_NON_COMPRESSED_MEMORY
    divisor = SMALL_MAC_COMPACT_DIVISOR if total_bytes and total_bytes <= SMALL_MAC_BYTES else COMPACT_DIVISOR
    warn_floor = -(-pages.compressor_page_count * 10 // (divisor - 10))  # ceiling
    before_warn = max(0, uncompressed - warn_floor)
    return MacFit(min(reclaimable, before_warn) * pages.page_size, reclaimable * pages.page_size,
                  before_warn * pages.page_size)


# ------------------------------------------------------------------ the probe


class MacProbe:
    """The kernel's pressure level (what Activity Monitor's graph shows) decides; psutil's figures are data.

    `available_bytes` is psutil's (free + speculative + inactive pages), kept for logs, `doctor`
    and `report` with its own verdict in detail["available_level"], but it
    drives no level. `usable_bytes`, what the fits-or-defer check before a run
    compares a size's peak with, is `mac_fit` over host_statistics64's page
    counts (detail["vm"], detail["fit"]); where those cannot be read it is
    None, and the check uses psutil's figure, the same pages by psutil's
    count. kern.memorystatus_level is kept in detail as data. Only when the
    kernel's level cannot be read does the available share decide, and the
    reading says so in its notes.
    """

    source = "macos"
    decides = "the kernel's level, kern.memorystatus_vm_pressure_level (psutil's available share is data only)"

    def __init__(self, settings: MemorySettings, *, sysctl: Callable[[str], int] = read_sysctl_int,
                 figures: Callable[[], MemoryFigures] = psutil_figures,
                 vm_pages: Callable[[], VmPages] = read_vm_pages):
        self.settings, self.sysctl, self.figures, self.vm_pages = settings, sysctl, figures, vm_pages

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
            pages = self.vm_pages()
            fit = mac_fit(pages, total)
            usable = fit.bytes
            detail["vm"] = pages.model_dump(exclude_none=True)
            detail["fit"] = {"reclaimable_bytes": fit.reclaimable_bytes, "before_warn_bytes": fit.before_warn_bytes,
                             "bound": fit.bound}
        except OSError as e:
            notes.append(f"{error_text(e)}; fits checked against psutil's available (free + speculative + inactive)")
        try:
            share = self.sysctl(AVAILABLE_SYSCTL)
            detail["memorystatus_level"] = share
        except OSError as e:
            notes.append(f"{error_text(e)} (data only)")
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
