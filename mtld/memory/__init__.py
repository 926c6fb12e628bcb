"""Memory pressure: probes that read one `Reading`, a sampler thread, and the run's memory guard.

Torch-free: the daemon imports this package, and so does the run child, which
passes its device figures in as plain numbers (see `Sampler.read_device`).

- `make_probe(settings.memory)` picks a probe: macOS (the kernel's pressure
  level `kern.memorystatus_vm_pressure_level`, `mtld.memory.macos`), Linux
  (PSI and the cgroup's own limits, `mtld.memory.linux`) or simulated (the
  level is read from a file, to rehearse, `mtld.memory.simulated`).
- A `Reading` is the level (normal, warn, critical), available and total
  bytes, swap used, and in `detail` the raw inputs that explain the level
  (`mtld.memory.levels`; the machine's figures: `mtld.memory.figures`).
- `Sampler` reads a probe about once a second in a thread and keeps the latest
  `Sample` (`mtld.memory.sampler`); `MemoryGuard` turns that sample into the
  step loop's advice (`mtld.memory.guard`).

The decisions (`psi_level`, `available_level`, `macos_level`, `budget_bytes`,
`guard_advice`) and the parsers are pure functions. The fake probe for tests,
`ScriptedProbe`, lives in mtld.testing.
"""

from __future__ import annotations

import sys

from mtld.memory.figures import MemoryFigures, memory_figures, parse_meminfo, psutil_figures
from mtld.memory.guard import Advice, GuardDecision, MemoryGuard, budget_bytes, guard_advice
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
    read_sysctl_int,
    sysctl_by_command,
    sysctl_by_ctypes,
)
from mtld.memory.sampler import Sample, Sampler
from mtld.memory.simulated import SimulatedProbe, parse_simulated
from mtld.settings import MemorySettings, SettingsError

__all__ = [
    "MACOS_LEVELS", "PRESSURE_SYSCTL", "SYSCTLBYNAME", "UNLIMITED",
    "Advice", "CgroupPaths", "CgroupUsage", "GuardDecision", "Level", "LinuxProbe", "MacProbe", "MemoryFigures",
    "MemoryGuard", "Probe", "Reading", "Sample", "Sampler", "SimulatedProbe",
    "available_level", "budget_bytes", "cgroup_limit", "cgroup_usage", "find_cgroup", "guard_advice",
    "macos_level", "make_probe", "memory_figures", "parse_cgroup_path", "parse_memory_stat", "parse_meminfo",
    "parse_psi", "parse_simulated", "psi_level", "psutil_figures", "read_sysctl_int", "sysctl_by_command",
    "sysctl_by_ctypes", "worst",
]


def make_probe(settings: MemorySettings, platform: str = sys.platform) -> Probe:
    """The probe config.toml's [memory] probe names ("auto": by platform)."""
    if settings.probe == "simulated":
        if settings.simulated_file is None:
            raise SettingsError('memory.simulated_file - required when memory.probe = "simulated" '
                                '(a file holding normal, warn or critical)')
        return SimulatedProbe(settings.simulated_file)
    if settings.probe == "macos" or (settings.probe == "auto" and platform == "darwin"):
        return MacProbe(settings)
    return LinuxProbe(settings)
