"""Recorded memory traces: their format, the probe that replays one, and the recorder behind
`mtld doctor --record-trace`.

A trace is JSON lines, one row a second:

    {"t": 12.0, "platform": "darwin", "kernel_level": 1, "memorystatus_level": 41,
     "available_share": 0.06, "total_bytes": 17179869184, "swap_used_bytes": 0,
     "vm": {"page_size": 16384, "free_count": 20480, "active_count": 301056, "inactive_count": 40960,
            "speculative_count": 6144, "compressor_page_count": 98304, ...},
     "footprint_bytes": 5100000000, "device_bytes": 4300000000, "device": "mps", "level": "normal"}

`t` is seconds from the start. The raw inputs are the platform's own:
macOS `kernel_level` (kern.memorystatus_vm_pressure_level: 1, 2, 4) and
`memorystatus_level` (kern.memorystatus_level, %), and `vm`, the page counts
of host_statistics64 that "fits" is reckoned from (mtld.memory.macos.VmPages;
a trace recorded before they were kept has none, and its replay checks fits
against the available share, the same pages by psutil's count); Linux
`psi_some_avg10` and `psi_full_avg10` (/proc/pressure/memory).
`available_share` and `total_bytes` are psutil's (macOS) or /proc/meminfo's
(Linux). The process's
`footprint_bytes` (macOS phys_footprint, Linux resident set) and the
`device_bytes` (MPS driver allocation, CUDA reserve) are null where unknown.
`level` is what the recording probe decided then; a replay decides again.

`ReplayProbe` feeds each row's raw inputs to the real probe of its platform
(MacProbe with the row as its sysctls and figures; LinuxProbe over files laid
out under a private folder), so a replay exercises today's decisions, not
the recorded ones. It is also `probe = "replay"` in config.toml: a run then
rehearses a recorded night's pressure (the run's own figures stay real).
"""

from __future__ import annotations

import bisect
import json
import math
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal, TextIO

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mtld.memory.figures import MemoryFigures
from mtld.memory.guard import used_bytes
from mtld.memory.levels import Probe, Reading
from mtld.memory.linux import LinuxProbe
from mtld.memory.macos import AVAILABLE_SYSCTL, PRESSURE_SYSCTL, MacProbe, VmPages
from mtld.config.settings import MemorySettings


class TraceError(ValueError):
    """A trace file that cannot be replayed; the message is one line naming the file and row."""


class TraceRow(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    t: float = Field(ge=0)
    platform: Literal["darwin", "linux"]
    kernel_level: int | None = None
    memorystatus_level: int | None = Field(default=None, ge=0, le=100)
    psi_some_avg10: float | None = Field(default=None, ge=0, le=100)
    psi_full_avg10: float | None = Field(default=None, ge=0, le=100)
    available_share: float | None = Field(default=None, ge=0, le=1)
    total_bytes: int | None = Field(default=None, gt=0)
    swap_used_bytes: int | None = Field(default=None, ge=0)
    vm: VmPages | None = None  # macOS page counts (host_statistics64); None in traces from before they were kept
    footprint_bytes: int | None = Field(default=None, ge=0)
    device_bytes: int | None = Field(default=None, ge=0)
    device: Literal["cpu", "cuda", "mps"] | None = None
    level: Literal["normal", "warn", "critical"] | None = None

    @property
    def available_bytes(self) -> int | None:
        if self.available_share is None or self.total_bytes is None:
            return None
        return int(self.available_share * self.total_bytes)

    def device_figures(self, device_type: str | None = None) -> dict[str, Any]:
        """What the run child's device reader would have said: used_bytes as the guard compares it."""
        kind = device_type or self.device or "cpu"
        return {"used_bytes": used_bytes(kind, footprint=self.footprint_bytes, device=self.device_bytes),
                "footprint_bytes": self.footprint_bytes, "device_bytes": self.device_bytes}


def read_trace(path: Path) -> list[TraceRow]:
    """A trace file's rows, in time order. Raises TraceError (one line) for anything unusable."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise TraceError(f"{path}: cannot read ({e})") from None
    return parse_trace(lines, shown_as=str(path))


def parse_trace(lines: Iterable[str], *, shown_as: str = "trace") -> list[TraceRow]:
    rows: list[TraceRow] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(TraceRow.model_validate(json.loads(line)))
        except ValueError as e:  # json's JSONDecodeError and pydantic's ValidationError are both ValueErrors
            if isinstance(e, ValidationError):
                first = e.errors()[0]
                e = ValueError(f"{'.'.join(map(str, first['loc'])) or '(row)'} - {first['msg']}")
            raise TraceError(f"{shown_as}:{number}: {e}") from None
        if len(rows) > 1 and rows[-1].t < rows[-2].t:
            raise TraceError(f"{shown_as}:{number}: t goes back in time")
    if not rows:
        raise TraceError(f"{shown_as}: no rows")
    return rows


def trace_line(row: TraceRow) -> str:
    return json.dumps(row.model_dump(mode="json", exclude_none=True), separators=(", ", ": ")) + "\n"


# ------------------------------------------------------------------ replaying


class ReplayProbe:
    """Replays a trace: each read gives the row at the probe's time (the last row at or before it; after the
    end, the last row holds). Time starts at `start`, or at the first read when `start` is None.

    `clock` is seconds (monotonic by default; tests pass their own).
    """

    source = "replay"
    decides = "a recorded trace (memory.replay_file), decided again by the real probe of its platform"

    def __init__(self, trace: Path | Sequence[TraceRow], settings: MemorySettings, *,
                 clock: Callable[[], float] = time.monotonic, start: float | None = None):
        self.rows = read_trace(trace) if isinstance(trace, (str, Path)) else list(trace)
        self.settings, self.clock, self.start = settings, clock, start
        self._times = [row.t for row in self.rows]
        self._root: tempfile.TemporaryDirectory[str] | None = None
        self._linux: LinuxProbe | None = None
        self._written: dict[str, str | None] = {}

    def row(self) -> TraceRow:
        now = self.clock()
        if self.start is None:
            self.start = now
        index = bisect.bisect_right(self._times, now - self.start) - 1
        return self.rows[max(index, 0)]

    def read(self) -> Reading:
        row = self.row()
        reading = self._mac(row) if row.platform == "darwin" else self._linux_reading(row)
        return replace(reading, source=self.source, detail={**reading.detail, "trace_t": row.t})

    def device_figures(self) -> dict[str, Any]:
        """The current row's process and device figures (the scenario tests' stand-in for the run's own)."""
        return self.row().device_figures()

    def _mac(self, row: TraceRow) -> Reading:
        values = {PRESSURE_SYSCTL: row.kernel_level, AVAILABLE_SYSCTL: row.memorystatus_level}

        def sysctl(name: str) -> int:
            if values.get(name) is None:
                raise OSError(f"{name} not in the trace")
            return int(values[name])

        def vm_pages() -> VmPages:
            if row.vm is None:
                raise OSError("host_statistics64's page counts are not in the trace")
            return row.vm

        figures = MemoryFigures(row.total_bytes, row.available_bytes, row.swap_used_bytes)
        return MacProbe(self.settings, sysctl=sysctl, figures=lambda: figures, vm_pages=vm_pages).read()

    def _linux_reading(self, row: TraceRow) -> Reading:
        if self._root is None:  # the real LinuxProbe, over files laid out from the row
            self._root = tempfile.TemporaryDirectory(prefix="mtld-replay-")
            root = Path(self._root.name)
            (root / "proc/pressure").mkdir(parents=True)
            (root / "proc/self").mkdir(parents=True)
            (root / "proc/self/cgroup").write_text("0::/\n")  # no cgroup hierarchy under this root: none binds
            self._linux = LinuxProbe(self.settings, root=root)
        psi = None if row.psi_some_avg10 is None else (
            f"some avg10={row.psi_some_avg10:.2f} avg60=0.00 avg300=0.00 total=0\n"
            f"full avg10={row.psi_full_avg10 or 0.0:.2f} avg60=0.00 avg300=0.00 total=0\n")
        kib, swap = (row.total_bytes or 0) // 1024, (row.swap_used_bytes or 0) // 1024
        self._lay_out("proc/pressure/memory", psi)
        self._lay_out("proc/meminfo", f"MemTotal: {kib} kB\nMemAvailable: {(row.available_bytes or 0) // 1024} kB\n"
                                      f"SwapTotal: {swap} kB\nSwapFree: 0 kB\n")
        return self._linux.read()

    def _lay_out(self, name: str, text: str | None) -> None:
        """Write (None: remove) one of the files LinuxProbe reads, when it changed."""
        if self._written.get(name, "") == text:
            return
        path = Path(self._root.name) / name
        if text is None:
            path.unlink(missing_ok=True)
        else:
            path.write_text(text)
        self._written[name] = text


# ------------------------------------------------------------------ recording


def trace_row(reading: Reading, t: float, *, footprint: int | None = None, device_bytes: int | None = None,
              device: str | None = None) -> TraceRow:
    """One row from a macOS or Linux probe's reading (its raw inputs are in `detail`)."""
    detail = reading.detail
    platform = "darwin" if "sysctl_pressure_level" in detail or reading.source == "macos" else "linux"
    share = (reading.available_bytes / reading.total_bytes
             if reading.available_bytes is not None and reading.total_bytes else None)
    return TraceRow(
        t=round(t, 3), platform=platform, kernel_level=detail.get("sysctl_pressure_level"),
        memorystatus_level=detail.get("memorystatus_level"), psi_some_avg10=detail.get("psi_some_avg10"),
        psi_full_avg10=detail.get("psi_full_avg10"), available_share=None if share is None else round(share, 5),
        total_bytes=reading.total_bytes, swap_used_bytes=reading.swap_used_bytes, vm=detail.get("vm"),
        footprint_bytes=footprint, device_bytes=device_bytes, device=device, level=reading.level.value,
    )


def record_trace(probe: Probe, out: TextIO, *, seconds: float, every_s: float = 1.0,
                 footprint: Callable[[], int | None] = lambda: None, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> int:
    """Read `probe` every `every_s` for `seconds` (one row each: 60 s → 60 rows), flushing each row (a trace
    cut short by Ctrl-C keeps what it has). `footprint` gives the watched process's footprint, or None.
    Returns the rows written."""
    if getattr(probe, "source", None) not in ("macos", "linux"):
        raise TraceError("a trace records a macOS or Linux probe's raw inputs: set memory.probe to auto")
    rows = max(1, math.ceil(seconds / every_s))
    start = clock()
    for row in range(rows):
        sleep(max(0.0, start + row * every_s - clock()))
        t = clock() - start
        try:
            used = footprint()
        except OSError:
            used = None  # the watched process ended
        out.write(trace_line(trace_row(probe.read(), t, footprint=used)))
        out.flush()
    return rows
