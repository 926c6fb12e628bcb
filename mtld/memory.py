"""Memory pressure: probes that read one `Reading`, a sampler thread, and the run's memory guard.

Torch-free: the daemon imports this module, and so does the run child, which
passes its device figures in as plain numbers (see `Sampler.read_device`).

- `make_probe(settings.memory)` picks a probe: macOS (the kernel's pressure
  level `kern.memorystatus_vm_pressure_level`), Linux (PSI and the cgroup's
  own limits) or simulated (the level is read from a file, to rehearse).
- A `Reading` is the level (normal, warn, critical), available and total
  bytes, swap used, and in `detail` the raw inputs that explain the level.
- `Sampler` reads a probe about once a second in a thread and keeps the latest
  `Sample`; `MemoryGuard` turns that sample into the step loop's advice.

The decisions (`psi_level`, `available_level`, `macos_level`, `budget_bytes`,
`guard_advice`) and the parsers are pure functions.
"""

from __future__ import annotations

import ctypes
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal, NamedTuple, Protocol

import psutil

from mtld.settings import MemorySettings, SettingsError

Advice = Literal["ok", "scale_down", "interrupt"]  # the same as mtld.train.guard.Advice


class Level(StrEnum):
    """Memory pressure, ordered: NORMAL < WARN < CRITICAL (not by spelling)."""

    NORMAL = "normal"
    WARN = "warn"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        return _RANK[self]

    def __lt__(self, other: object) -> bool:
        return self.rank < Level(other).rank  # type: ignore[arg-type]

    def __le__(self, other: object) -> bool:
        return self.rank <= Level(other).rank  # type: ignore[arg-type]

    def __gt__(self, other: object) -> bool:
        return self.rank > Level(other).rank  # type: ignore[arg-type]

    def __ge__(self, other: object) -> bool:
        return self.rank >= Level(other).rank  # type: ignore[arg-type]


_RANK = {Level.NORMAL: 0, Level.WARN: 1, Level.CRITICAL: 2}


def worst(*levels: Level) -> Level:
    return max(levels, key=_RANK.__getitem__, default=Level.NORMAL)


@dataclass(frozen=True)
class Reading:
    level: Level
    available_bytes: int | None
    total_bytes: int | None
    swap_used_bytes: int | None
    source: str  # "linux", "macos", "simulated", "scripted"
    detail: dict[str, Any] = field(default_factory=dict)  # raw inputs; "notes": what could not be read

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe fields for `memory.sample` events and `mtld doctor`."""
        return {
            "pressure": self.level.value,  # not "level": every log line's "level" is its log level
            "available_bytes": self.available_bytes,
            "total_bytes": self.total_bytes,
            "swap_used_bytes": self.swap_used_bytes,
            "source": self.source,
            "detail": dict(self.detail),
        }


class Probe(Protocol):
    def read(self) -> Reading:
        """One reading; cheap (called about once a second) and never raising for a missing source."""


# ------------------------------------------------------------------ pure decisions and parsers


def psi_level(some_avg10: float, full_avg10: float, *, some_warn: float, full_critical: float) -> Level:
    """PSI (% of the last 10 s): critical when all tasks stalled this much, warn when some did."""
    if full_avg10 >= full_critical:
        return Level.CRITICAL
    if some_avg10 >= some_warn:
        return Level.WARN
    return Level.NORMAL


MACOS_LEVELS = {1: Level.NORMAL, 2: Level.WARN, 4: Level.CRITICAL}  # kern.memorystatus_vm_pressure_level


def macos_level(sysctl_value: int) -> Level:
    """The kernel's pressure level; an unknown value reads as normal (the probe notes it)."""
    return MACOS_LEVELS.get(sysctl_value, Level.NORMAL)


def available_level(available: int | None, total: int | None, *, warn: float, critical: float) -> Level:
    """At least warn / critical when the available share of total is below `warn` / `critical`."""
    if available is None or not total or total <= 0:
        return Level.NORMAL
    share = available / total
    if share < critical:
        return Level.CRITICAL
    if share < warn:
        return Level.WARN
    return Level.NORMAL


def parse_psi(text: str) -> dict[str, dict[str, float]]:
    """`some avg10=1.00 avg60=0.50 avg300=0.10 total=123` lines → {"some": {"avg10": 1.0, ...}, "full": ...}.

    `total` (µs stalled since boot) is an int; pieces that do not parse are left out.
    """
    out: dict[str, dict[str, float]] = {}
    for line in text.splitlines():
        kind, *pairs = line.split() or [""]
        if kind not in ("some", "full"):
            continue
        values: dict[str, float] = {}
        for pair in pairs:
            key, _, value = pair.partition("=")
            try:
                values[key] = int(value) if key == "total" else float(value)
            except ValueError:
                continue
        out[kind] = values
    return out


def parse_cgroup_path(proc_self_cgroup_text: str, controller: str | None = None) -> str | None:
    """The process's cgroup from /proc/self/cgroup: the v2 line `0::/path`, or the v1 line naming `controller`."""
    for line in proc_self_cgroup_text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        if controller is None and hierarchy == "0" and controllers == "":
            return path.strip()
        if controller is not None and controller in controllers.split(","):
            return path.strip()
    return None


UNLIMITED = 2**62  # cgroup v1 writes "no limit" as a huge number (9223372036854771712)


def cgroup_limit(memory_max_text: str) -> int | None:
    """A cgroup memory limit in bytes; None for no limit ("max", or v1's huge number). ValueError for garbage."""
    text = memory_max_text.strip()
    if text == "max":
        return None
    value = int(text)
    return None if value >= UNLIMITED else value


# Only the keys used, by one regular expression: 5x faster than splitting every line.
_STAT_KEYS = re.compile(r"^(inactive_file|total_inactive_file|hierarchical_memory_limit) (\d+)$", re.M)
_MEMINFO_KEYS = re.compile(r"^(MemTotal|MemFree|MemAvailable|Buffers|Cached|SwapTotal|SwapFree):\s+(\d+) kB$", re.M)


def parse_memory_stat(text: str) -> dict[str, int]:
    """A cgroup's memory.stat → {key: bytes} for inactive_file (v2), total_inactive_file and
    hierarchical_memory_limit (v1); other keys are left out."""
    return {key: int(value) for key, value in _STAT_KEYS.findall(text)}


class MemoryFigures(NamedTuple):
    total_bytes: int | None
    available_bytes: int | None
    swap_used_bytes: int | None


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


def budget_bytes(*, device_type: str, device_total: int, cgroup_limit: int | None, fraction: float) -> int:
    """The memory a run may use: `fraction` of what the device can use.

    MPS: recommended_max_memory; CUDA: the device's memory; CPU: RAM, or the
    cgroup limit when lower. A cgroup limits host memory only, so it is
    ignored for CUDA and MPS.
    """
    usable = device_total
    if device_type == "cpu" and cgroup_limit is not None:
        usable = min(usable, cgroup_limit)
    return int(usable * fraction)


class GuardDecision(NamedTuple):
    advice: Advice
    reason: str | None  # "pressure" or "budget" when the advice is not "ok"
    scaled_this_episode: bool  # carry into the next call


def guard_advice(level: Level, used_bytes: int | None, budget_bytes: int | None,
                 scaled_this_episode: bool) -> GuardDecision:
    """The memory guard's decision on one sample.

    Critical → interrupt (checkpoint and requeue). Warn, or the device's (CPU:
    the process's) memory over the budget → scale down, once per episode: an
    episode lasts while the level is warn or the use is over budget, and ends
    at the first sample that is normal and within budget. One halving per
    episode because PSI averages over 10 s and allocators keep what they
    reserved: the next samples still look troubled whatever the loop did, and
    asking again would take 8 to 2 in a second. Critical remains the backstop.
    """
    over_budget = used_bytes is not None and budget_bytes is not None and used_bytes > budget_bytes
    if level is Level.CRITICAL:
        return GuardDecision("interrupt", "pressure", scaled_this_episode)
    if level is Level.WARN or over_budget:
        if scaled_this_episode:
            return GuardDecision("ok", None, True)
        return GuardDecision("scale_down", "pressure" if level is Level.WARN else "budget", True)
    return GuardDecision("ok", None, False)


# ------------------------------------------------------------------ reading files cheaply


def _read(path: Path) -> str:
    """A small procfs/sysfs file, via os-level calls (about twice as fast as open())."""
    fd = os.open(path, os.O_RDONLY)
    try:
        chunks = []
        while chunk := os.read(fd, 16384):
            chunks.append(chunk)
        return b"".join(chunks).decode("ascii", "replace")
    finally:
        os.close(fd)


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:200]


def psutil_figures() -> MemoryFigures:
    vm, swap = psutil.virtual_memory(), psutil.swap_memory()
    return MemoryFigures(int(vm.total), int(vm.available), int(swap.used))


def memory_figures(root: Path = Path("/")) -> MemoryFigures:
    """From root/proc/meminfo where there is one (one read, ~5x cheaper than psutil's two), else psutil."""
    try:
        return parse_meminfo(_read(root / "proc/meminfo"))
    except (OSError, ValueError):
        return psutil_figures()


# ------------------------------------------------------------------ Linux


@dataclass(frozen=True)
class CgroupPaths:
    version: int  # 1 or 2
    name: str  # the process's cgroup, as /proc/self/cgroup spells it
    leaf: Path  # its folder
    chain: tuple[Path, ...]  # v2: the leaf and its ancestors with a memory.max, nearest first; v1: (leaf,)


def find_cgroup(root: Path) -> CgroupPaths | None:
    """The process's memory cgroup under root/sys/fs/cgroup: v2 (unified) first, then v1's memory controller.

    A path the mount does not show (a container seeing the host's path) falls
    back to the mount's own folder, which is then the container's cgroup.
    """
    text = _read(root / "proc/self/cgroup")
    base = root / "sys/fs/cgroup"
    path = parse_cgroup_path(text)
    if path is not None and (base / "cgroup.controllers").exists():
        leaf = _inside(base, path)
        chain = []
        folder = leaf
        while True:
            if (folder / "memory.max").exists():
                chain.append(folder)
            if folder == base:
                break
            folder = folder.parent
        return CgroupPaths(2, _cgroup_name(leaf, base), leaf, tuple(chain)) if chain else None
    path = parse_cgroup_path(text, "memory")
    if path is not None:
        leaf = _inside(base / "memory", path)
        if (leaf / "memory.limit_in_bytes").exists():
            return CgroupPaths(1, _cgroup_name(leaf, base / "memory"), leaf, (leaf,))
    return None


def _inside(base: Path, path: str) -> Path:
    folder = base / path.lstrip("/")
    return folder if ".." not in Path(path).parts and folder.is_dir() else base


class CgroupUsage(NamedTuple):
    path: str  # the binding cgroup, as /proc/self/cgroup spells it
    limit_bytes: int
    used_bytes: int  # memory.current less inactive file pages (reclaimable), like `docker stats`


def cgroup_usage(cg: CgroupPaths, base: Path) -> CgroupUsage | None:
    """The limit that binds (least headroom) and the use under it; None when nothing is limited."""
    if cg.version == 1:
        stat = parse_memory_stat(_read(cg.leaf / "memory.stat"))
        limit = stat.get("hierarchical_memory_limit")  # the tightest of the leaf and its ancestors
        limit = cgroup_limit(str(limit)) if limit is not None else cgroup_limit(_read(cg.leaf / "memory.limit_in_bytes"))
        if limit is None:
            return None
        used = int(_read(cg.leaf / "memory.usage_in_bytes")) - stat.get("total_inactive_file", 0)
        return CgroupUsage(_cgroup_name(cg.leaf, base / "memory"), limit, max(used, 0))
    best: CgroupUsage | None = None
    for folder in cg.chain:
        limits = [cgroup_limit(_read(folder / "memory.max")), cgroup_limit(_read(folder / "memory.high"))]
        limit = min((x for x in limits if x is not None), default=None)  # above memory.high it is throttled
        if limit is None:
            continue
        inactive = parse_memory_stat(_read(folder / "memory.stat")).get("inactive_file", 0)
        used = max(int(_read(folder / "memory.current")) - inactive, 0)
        if best is None or limit - used < best.limit_bytes - best.used_bytes:
            best = CgroupUsage(_cgroup_name(folder, base), limit, used)
    return best


def _cgroup_name(folder: Path, base: Path) -> str:
    relative = folder.relative_to(base)
    return "/" if relative == Path(".") else f"/{relative}"


class LinuxProbe:
    """PSI (/proc/pressure/memory), /proc/meminfo and, in a limited cgroup, the cgroup's own figures.

    The level is the worst of: the system's PSI level, the limited cgroup's
    PSI level (its memory.pressure, v2 only) and the available level. In a
    limited cgroup, available and total are the tighter of the system's and
    the cgroup's (limit less working set; memory.high counts as a limit).
    A source that cannot be read is skipped and noted in detail["notes"].
    """

    source = "linux"

    def __init__(self, settings: MemorySettings, *, root: Path = Path("/")):
        self.settings = settings
        self.root = Path(root)
        self._cgroup: CgroupPaths | None = None
        self._looked_for_cgroup = False

    def read(self) -> Reading:
        s = self.settings
        detail: dict[str, Any] = {}
        notes: list[str] = []
        levels = [self._psi(self.root / "proc/pressure/memory", "psi", detail, notes)]
        total, available, swap = memory_figures(self.root)
        usage = self._cgroup_usage(notes)
        cgroup = self._cgroup
        if usage is None and cgroup is not None:
            detail.update(cgroup=cgroup.name, cgroup_limit_bytes=None)  # in a cgroup without a limit
        if usage is not None and cgroup is not None:
            detail.update(cgroup=usage.path, cgroup_limit_bytes=usage.limit_bytes, cgroup_used_bytes=usage.used_bytes,
                          system_total_bytes=total, system_available_bytes=available)
            headroom = max(usage.limit_bytes - usage.used_bytes, 0)
            total = usage.limit_bytes if total is None else min(total, usage.limit_bytes)
            available = headroom if available is None else min(available, headroom)
            if cgroup.version == 2:
                levels.append(self._psi(cgroup.leaf / "memory.pressure", "cgroup_psi", detail, notes))
        detail["available_level"] = available_level(available, total, warn=s.available_warn,
                                                    critical=s.available_critical).value
        levels.append(Level(detail["available_level"]))
        if notes:
            detail["notes"] = notes
        return Reading(worst(*levels), available, total, swap, self.source, detail)

    def _psi(self, path: Path, prefix: str, detail: dict[str, Any], notes: list[str]) -> Level:
        try:
            psi = parse_psi(_read(path))
            some, full = psi["some"]["avg10"], psi.get("full", {}).get("avg10", 0.0)
        except (OSError, KeyError) as e:
            notes.append(f"{prefix}: {path} unreadable ({_error(e)}); level from the other sources")
            return Level.NORMAL
        level = psi_level(some, full, some_warn=self.settings.psi_some_warn, full_critical=self.settings.psi_full_critical)
        detail.update({f"{prefix}_some_avg10": some, f"{prefix}_full_avg10": full, f"{prefix}_level": level.value})
        return level

    def _cgroup_usage(self, notes: list[str]) -> CgroupUsage | None:
        try:
            if not self._looked_for_cgroup:  # once: a process stays in its cgroup
                self._cgroup, self._looked_for_cgroup = find_cgroup(self.root), True
            if self._cgroup is None:
                return None
            return cgroup_usage(self._cgroup, self.root / "sys/fs/cgroup")
        except (OSError, ValueError) as e:
            notes.append(f"cgroup: {_error(e)}; system figures only")
            self._cgroup, self._looked_for_cgroup = None, False  # look again next time
            return None


# ------------------------------------------------------------------ macOS

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
        raise OSError(f"sysctl -n {name}: {_error(e)}{f' ({said[:100]})' if said else ''}") from None


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
            notes.append(f"{_error(e)}; level from available memory only")
            level = Level.NORMAL
        total, available, swap = self.figures()
        by_available = available_level(available, total, warn=self.settings.available_warn,
                                       critical=self.settings.available_critical)
        detail.update(kernel_level=level.value, available_level=by_available.value)
        if notes:
            detail["notes"] = notes
        return Reading(worst(level, by_available), available, total, swap, self.source, detail)


# ------------------------------------------------------------------ simulated and scripted


class SimulatedProbe:
    """The level (and optionally available bytes) from a file: `warn`, or `warn 2000000000`.

    For tests, and for users rehearsing what mtld does under pressure (like
    macOS `memory_pressure -S`). A missing file reads as normal; total and swap
    are the machine's. Never raises.
    """

    source = "simulated"

    def __init__(self, path: Path, *, figures: Callable[[], MemoryFigures] = memory_figures):
        self.path, self.figures = Path(path), figures

    def read(self) -> Reading:
        try:
            level, available, note = parse_simulated(_read(self.path))
        except FileNotFoundError:
            level, available, note = Level.NORMAL, None, "no file: normal"
        except OSError as e:
            level, available, note = Level.NORMAL, None, f"{_error(e)}; read as normal"
        total, machine_available, swap = self.figures()
        detail: dict[str, Any] = {"file": str(self.path)}
        if note:
            detail["notes"] = [note]
        return Reading(level, machine_available if available is None else available, total, swap, self.source, detail)


class ScriptedProbe:
    """A fake: each read gives the next item (a Reading, a Level, or an exception to raise); the last repeats."""

    source = "scripted"

    def __init__(self, items: Iterable[Reading | Level | str | BaseException]):
        self.items = list(items)
        self.reads = 0

    def read(self) -> Reading:
        item = self.items[min(self.reads, len(self.items) - 1)]
        self.reads += 1
        if isinstance(item, BaseException):
            raise item
        if isinstance(item, Reading):
            return item
        return Reading(Level(item), None, None, None, self.source)


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


# ------------------------------------------------------------------ the sampler thread


@dataclass(frozen=True)
class Sample:
    reading: Reading
    device: dict[str, Any]  # from read_device; "used_bytes" is what the guard compares with the budget
    at: float  # the sampler's clock (monotonic seconds)

    def fields(self) -> dict[str, Any]:
        return {**self.reading.to_dict(), "device": dict(self.device)}


class _NullLog:
    def info(self, event: str, **fields: Any) -> None:
        pass

    warning = info


class Sampler:
    """Reads a probe every `every_s` seconds in a daemon thread; `latest` is the newest Sample.

    The loop reads `latest` without a lock (one attribute assignment is
    atomic). Logs `memory.sample` at the first sample, at once when the level
    changes, and otherwise every `log_every_s`; `memory.sample_failed` when a
    read fails (the first at once, then at most every `log_every_s`), keeping
    the last good sample and trying again next tick. Nothing escapes the thread.

    `read_device` (the child's torch figures, e.g. {"used_bytes": ...,
    "total_bytes": ...}) is called in the sampler thread. `log` is a bound
    structlog logger (fields bound by mtld.logs.configure cross threads).
    """

    def __init__(self, probe: Probe, *, every_s: float = 1.0, log_every_s: float = 30.0,
                 read_device: Callable[[], Mapping[str, Any]] | None = None, log: Any = None,
                 clock: Callable[[], float] = time.monotonic):
        self.probe, self.every_s, self.log_every_s = probe, every_s, log_every_s
        self.read_device, self.log, self.clock = read_device, log or _NullLog(), clock
        self.latest: Sample | None = None
        self.failures = 0  # since the last memory.sample_failed event
        self._logged_at: float | None = None
        self._failure_logged_at: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def from_settings(cls, probe: Probe, settings: MemorySettings, **kwargs: Any) -> Sampler:
        return cls(probe, every_s=settings.sample_every_s, log_every_s=settings.log_every_s, **kwargs)

    def tick(self) -> Sample | None:
        """One read (what the thread does each period); returns the latest sample. Never raises."""
        try:
            return self._tick()
        except Exception as e:  # a failing logger, or a bug: the loop must not notice
            self._failed("sampler", e, self.clock())
            return self.latest

    def _tick(self) -> Sample | None:
        now = self.clock()
        try:
            reading = self.probe.read()
        except Exception as e:
            self._failed("probe", e, now)
            return self.latest
        device: dict[str, Any] = {}
        if self.read_device is not None:
            try:
                device = dict(self.read_device())
            except Exception as e:
                self._failed("device", e, now)
        previous, sample = self.latest, Sample(reading, device, now)
        self.latest = sample
        if previous is None:
            trigger = "first"
        elif previous.reading.level is not reading.level:
            trigger = "level_changed"
        elif self._logged_at is None or now - self._logged_at >= self.log_every_s:
            trigger = "periodic"
        else:
            return sample
        self._logged_at = now
        extra = {"previous_pressure": previous.reading.level.value} if trigger == "level_changed" and previous else {}
        self.log.info("memory.sample", trigger=trigger, **extra, **sample.fields())
        return sample

    def _failed(self, what: str, exc: Exception, now: float) -> None:
        self.failures += 1
        if self._failure_logged_at is not None and now - self._failure_logged_at < self.log_every_s:
            return
        self._failure_logged_at = now
        try:
            self.log.warning("memory.sample_failed", what=what, error=_error(exc), failures=self.failures)
            self.failures = 0
        except Exception:
            pass  # nowhere left to say it

    def start(self) -> Sampler:
        """Take the first sample now (the guard has one from the start), then one every `every_s`."""
        self.tick()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="mtld-memory-sampler", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.tick()

    def stop(self, timeout: float = 1.0) -> None:
        """Wakes the thread at once; waits for a read in progress at most `timeout` (the thread is a daemon)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def __enter__(self) -> Sampler:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ------------------------------------------------------------------ the guard the step loop asks


class MemoryGuard:
    """The step loop's guard (mtld.train.guard.Guard) over a sampler's latest sample.

    Critical → "interrupt"; warn or over budget → "scale_down" once per
    episode (see `guard_advice`). After a non-ok advice, `last_reason` is
    "pressure" or "budget" and `last_detail` the figures behind it, for the
    `batch.scaled_down` / `run.interrupted` events. No sample yet → "ok".
    """

    def __init__(self, sampler: Any, budget_bytes: int | None):
        self.sampler = sampler  # anything with a `latest: Sample | None`
        self.budget_bytes = budget_bytes
        self.scaled_this_episode = False
        self.step = 0
        self.last_reason: str | None = None
        self.last_detail: dict[str, Any] = {}

    def at_step(self, step: int) -> None:
        self.step = step

    def advice(self) -> Advice:
        sample: Sample | None = self.sampler.latest
        if sample is None:
            return "ok"
        used = sample.device.get("used_bytes")
        decision = guard_advice(sample.reading.level, used, self.budget_bytes, self.scaled_this_episode)
        self.scaled_this_episode = decision.scaled_this_episode
        if decision.advice != "ok":
            self.last_reason = decision.reason
            self.last_detail = {"pressure": sample.reading.level.value, "used_bytes": used,
                                "budget_bytes": self.budget_bytes, "step": self.step}
        return decision.advice
