"""Memory pressure: probes that read one `Reading`, a sampler thread, and the run's memory guard.

Torch-free: the daemon imports this package, and so does the run child, which
passes its device figures in as plain numbers (see `Sampler.read_device`).

- `make_probe(settings.memory)` picks a probe: macOS (the kernel's pressure
  level `kern.memorystatus_vm_pressure_level`, `mtld.memory.macos`), Linux
  (PSI and the cgroup's own limits, `mtld.memory.linux`), simulated (the
  level is read from a file, to rehearse, `mtld.memory.simulated`) or replay
  (a recorded trace, `mtld.memory.replay`, which also records them).
- A `Reading` is the level (normal, warn, critical), available and total
  bytes, swap used, and in `detail` the raw inputs that explain the level
  (`mtld.memory.levels`; the machine's figures: `mtld.memory.figures`).
- `Sampler` reads a probe about once a second in a thread and keeps the latest
  `Sample` (`mtld.memory.sampler`); `MemoryGuard` turns the samples into the
  step loop's advice, with a dwell time and a quiet time (`mtld.memory.guard`).

The decisions (`psi_level`, `available_level`, `macos_level`, `budget_bytes`,
`used_bytes`, `guard_advice`) and the parsers are pure functions. The fake probe for tests,
`ScriptedProbe`, lives in mtld.testing.
"""

from __future__ import annotations

import sys

from mtld.memory.figures import MemoryFigures, memory_figures, parse_meminfo, psutil_figures
from mtld.memory.footprint import process_footprint
from mtld.memory.guard import (
    Advice,
    GuardDecision,
    GuardState,
    Hysteresis,
    MemoryGuard,
    budget_bytes,
    guard_advice,
    used_bytes,
)
from mtld.memory.levels import Level, Probe, Reading, available_level, worst
from mtld.memory.linux import (
    UNLIMITED,
    CgroupPaths,
    CgroupUsage,
    LinuxProbe,
    cgroup_limit,
    cgroup_usage,
    find_cgroup,
    parse_cgroup_path,
    parse_memory_stat,
    parse_psi,
    psi_level,
)
from mtld.memory.macos import (
    MACOS_LEVELS,
    PRESSURE_SYSCTL,
    SYSCTLBYNAME,
    MacProbe,
    macos_level,
    phys_footprint,
    read_sysctl_int,
    sysctl_by_command,
    sysctl_by_ctypes,
)
from mtld.memory.replay import ReplayProbe, TraceError, TraceRow, read_trace, record_trace
from mtld.memory.sampler import Sample, Sampler
from mtld.memory.simulated import SimulatedProbe, parse_simulated
from mtld.config.settings import MemorySettings, SettingsError

__all__ = [
    "MACOS_LEVELS", "PRESSURE_SYSCTL", "SYSCTLBYNAME", "UNLIMITED",
    "Advice", "CgroupPaths", "CgroupUsage", "GuardDecision", "GuardState", "Hysteresis", "Level", "LinuxProbe",
    "MacProbe", "MemoryFigures", "MemoryGuard", "Probe", "Reading", "ReplayProbe", "Sample", "Sampler",
    "SimulatedProbe", "TraceError", "TraceRow",
    "available_level", "budget_bytes", "cgroup_limit", "cgroup_usage", "find_cgroup", "guard_advice",
    "hysteresis", "macos_level", "make_probe", "memory_figures", "parse_cgroup_path", "parse_memory_stat",
    "parse_meminfo", "parse_psi", "parse_simulated", "phys_footprint", "process_footprint", "psi_level",
    "psutil_figures", "read_sysctl_int", "read_trace", "record_trace", "sysctl_by_command", "sysctl_by_ctypes",
    "used_bytes", "worst",
]


def make_probe(settings: MemorySettings, platform: str = sys.platform) -> Probe:
    """The probe config.toml's [memory] probe names ("auto": by platform)."""
    if settings.probe == "simulated":
        if settings.simulated_file is None:
            raise SettingsError('memory.simulated_file - required when memory.probe = "simulated" '
                                '(a file holding normal, warn or critical)')
        return SimulatedProbe(settings.simulated_file)
    if settings.probe == "replay":
        if settings.replay_file is None:
            raise SettingsError('memory.replay_file - required when memory.probe = "replay" '
                                '(a trace recorded with mtld doctor --record-trace)')
        try:
            return ReplayProbe(settings.replay_file, settings)
        except TraceError as e:
            raise SettingsError(f"memory.replay_file - {e}") from None
    if settings.probe == "macos" or (settings.probe == "auto" and platform == "darwin"):
        return MacProbe(settings)
    return LinuxProbe(settings)


def hysteresis(settings: MemorySettings) -> Hysteresis:
    """The guard's dwell and quiet times from config.toml's [memory]."""
    return Hysteresis(dwell_s=settings.dwell_s, quiet_s=settings.quiet_s)
