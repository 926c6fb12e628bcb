"""Writes the scenario traces in this folder (tests/test_scenarios.py replays them).

    python tests/traces/make_traces.py

The traces are data files, checked in; this script is how they were made, so
a change to one is a change here first. Each is a night's story told in the
format `mtld doctor --record-trace` writes (mtld.memory.replay), one row a
second, on a 16 GiB Mac training on MPS (or a Linux box training on the CPU),
shaped after what the macOS kernel and Linux report: the level as
kern.memorystatus_vm_pressure_level (1 normal, 2 warn, 4 critical) or PSI
avg10, psutil's available share, the process's phys_footprint or resident
set, and MPS's driver allocation. Deterministic: no randomness but a fixed
sine-and-hash wobble. A trace recorded on a real Mac can sit next to them.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from mtld.memory.macos import VmPages  # noqa: E402
from mtld.memory.replay import TraceRow, trace_line  # noqa: E402

GiB = 2**30
MAC_TOTAL = 16 * GiB
LINUX_TOTAL = 32 * GiB
NORMAL, WARN, CRITICAL = 1, 2, 4  # kern.memorystatus_vm_pressure_level
PAGE = 16384  # the kernel's page size on Apple silicon (vm_stat: "page size of 16384 bytes")
MAC_PAGES = MAC_TOTAL // PAGE  # 1,048,576


def wobble(t: int, low: float, high: float) -> float:
    """A deterministic value between low and high that moves every second."""
    phase = (math.sin(t / 7.0) + math.sin(t / 2.3 + 1.0) + ((t * 2654435761) % 1000) / 500.0 - 1.0) / 3.0
    return low + (high - low) * (phase + 1.0) / 2.0


def mac_row(t: int, level: int, *, share: float = 0.30, footprint: float = 5.5 * GiB,
            device: float = 4.5 * GiB, kernel_share: int = 40, vm: VmPages | None = None) -> TraceRow:
    return TraceRow(t=t, platform="darwin", kernel_level=level, memorystatus_level=kernel_share,
                    available_share=round(share, 4), total_bytes=MAC_TOTAL, swap_used_bytes=0, vm=vm,
                    footprint_bytes=int(footprint), device_bytes=int(device), device="mps",
                    level={NORMAL: "normal", WARN: "warn", CRITICAL: "critical"}[level])


def mps_false_warn(t: int) -> TraceRow:
    # MPS training keeps buffers wired: psutil's free + inactive sits at 4-8 % of 16 GiB, the kernel says normal
    return mac_row(t, NORMAL, share=wobble(t, 0.04, 0.08), kernel_share=int(wobble(t, 33, 45)))


def mps_flapping_warn(t: int) -> TraceRow:
    # the kernel's level flips warn/normal every second for 5 minutes (from t = 60), then stays normal
    flapping = 60 <= t < 360
    return mac_row(t, WARN if flapping and t % 2 == 0 else NORMAL, share=wobble(t, 0.18, 0.25))


def mps_sustained_warn(t: int) -> TraceRow:
    # warn without a break for 5 minutes (from t = 60)
    return mac_row(t, WARN if 60 <= t < 360 else NORMAL, share=wobble(t, 0.12, 0.20), kernel_share=20)


def mps_critical_spike(t: int) -> TraceRow:
    # one 3 s critical spike at t = 300
    return mac_row(t, CRITICAL if 300 <= t < 303 else NORMAL, share=wobble(t, 0.15, 0.25))


def mps_sustained_critical(t: int) -> TraceRow:
    # 2 minutes normal, then 30 minutes of critical broken by dips: in every 300 s, 180 s critical, 20 s normal,
    # 10 s critical, 90 s normal; then normal again
    level = NORMAL
    if 120 <= t < 1920:
        phase = (t - 120) % 300
        level = CRITICAL if phase < 180 or 200 <= phase < 210 else NORMAL
    share = wobble(t, 0.01, 0.04) if level == CRITICAL else wobble(t, 0.12, 0.2)
    return mac_row(t, level, share=share, kernel_share=8 if level == CRITICAL else 30)


def mps_slow_leak(t: int) -> TraceRow:
    # the process's footprint grows by 8 GiB over 15 minutes (a leak); the kernel stays normal
    footprint = 5 * GiB + 8 * GiB * min(t, 900) / 900
    return mac_row(t, NORMAL, share=wobble(t, 0.15, 0.25), footprint=footprint, device=4.5 * GiB)


def mps_apps_open(t: int) -> TraceRow:
    # Before a run, a 16 GiB Mac with a browser, a chat app and an IDE left open; the kernel says normal
    # throughout. Synthetic, not recorded: a vm_stat-like state made consistent with how XNU counts pages
    # (host_statistics64's free_count includes the speculative pages; kern.memorystatus_level is active +
    # inactive + free + speculative over all pages). In 16 KiB pages: 422,400 active (6.4 GiB, the apps'
    # working sets), 230,400 inactive (3.5 GiB), 25,600 free (0.4 GiB) and 12,800 speculative (0.2 GiB),
    # 102,400 held by the compressor (1.6 GiB), the other 254,976 wired (3.9 GiB: the kernel, WindowServer,
    # the GPU's buffers). So kern.memorystatus_level = 691,200 × 100 / 1,048,576 = 65 % (the rule before
    # issue 22 offered a run 10.4 GiB); free + speculative + inactive is 4.1 GiB, and the kernel would warn
    # only after 9.0 GiB left the uncompressed pool (691,200 - 102,400 pages). Free pages move by up to
    # ±1,000 a second against active ones (the apps allocate and free).
    moved = int(wobble(t, -1000, 1000))
    free, speculative, inactive, active, compressor = 25_600 + moved, 12_800, 230_400, 422_400 - moved, 102_400
    wired = MAC_PAGES - (free + speculative + inactive + active + compressor)
    external = 281_600  # file-backed; the rest of the pageable pages are anonymous
    vm = VmPages(page_size=PAGE, free_count=free + speculative, active_count=active, inactive_count=inactive,
                 speculative_count=speculative, compressor_page_count=compressor, wire_count=wired,
                 purgeable_count=5_120, external_page_count=external,
                 internal_page_count=active + inactive + speculative - external)
    uncompressed = active + inactive + free + speculative
    return mac_row(t, NORMAL, share=(free + speculative + inactive) / MAC_PAGES,
                   kernel_share=uncompressed * 100 // MAC_PAGES, vm=vm)


def linux_psi_rising(t: int) -> TraceRow:
    # CPU training on Linux while something else grows: PSI "some" climbs past 10 % from t = 60, "full" past
    # 5 % from t = 420, both fall back from t = 600 (avg10 decays over tens of seconds)
    if t < 60:
        some, full = 0.0, 0.0
    elif t < 600:
        some, full = min(30.0, (t - 60) / 10.0), max(0.0, min(12.0, (t - 420) / 10.0))
    else:
        decay = math.exp(-(t - 600) / 20.0)
        some, full = 30.0 * decay, 12.0 * decay
    share = 0.40 - 0.25 * min(max(t - 60, 0), 540) / 540 if t < 600 else 0.40
    return TraceRow(t=t, platform="linux", psi_some_avg10=round(some, 2), psi_full_avg10=round(full, 2),
                    available_share=round(share, 4), total_bytes=LINUX_TOTAL, swap_used_bytes=0,
                    footprint_bytes=int(2.5 * GiB), device="cpu")


TRACES: dict[str, tuple[Callable[[int], TraceRow], int]] = {
    "mps_false_warn": (mps_false_warn, 900),
    "mps_flapping_warn": (mps_flapping_warn, 900),
    "mps_sustained_warn": (mps_sustained_warn, 900),
    "mps_critical_spike": (mps_critical_spike, 600),
    "mps_sustained_critical": (mps_sustained_critical, 2700),
    "mps_slow_leak": (mps_slow_leak, 1500),
    "mps_apps_open": (mps_apps_open, 900),
    "linux_psi_rising": (linux_psi_rising, 1500),
}


def main() -> None:
    for name, (row, seconds) in TRACES.items():
        path = HERE / f"{name}.jsonl"
        path.write_text("".join(trace_line(row(t)) for t in range(seconds)), encoding="utf-8")
        print(f"{path.relative_to(HERE.parents[1])}: {seconds} rows")


if __name__ == "__main__":
    main()
