"""mtld.memory: the pure decisions as tables, the probes over recorded files, the sampler and the guard.

Each name is imported from the module that owns it (levels, figures, linux,
macos, simulated, sampler, guard); the fake probe is mtld.testing's
ScriptedProbe, and the sampler's events are captured with structlog.testing.

Recorded inputs live in tests/data/memory/ (the *_v1_*, psi_idle and
meminfo_vm_24g files were read on a Linux VM with a cgroup v1 memory
controller; the others are written in the kernel's formats). LinuxProbe reads
them laid out under a temporary root, and once live from "/".
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import struct
import subprocess
import sys
import time
import typing
from pathlib import Path

import psutil
import pytest

import mtld.memory
from mtld.memory import make_probe
from mtld.memory.figures import MemoryFigures, parse_meminfo
from mtld.memory.guard import GuardState, Hysteresis, MemoryGuard, budget_bytes, guard_advice, used_bytes
from mtld.memory.levels import Level, Reading, available_level, worst
from mtld.memory.linux import (
    LinuxProbe,
    cgroup_limit,
    parse_cgroup_path,
    parse_memory_stat,
    parse_psi,
    psi_level,
)
from mtld.memory.footprint import process_footprint
from mtld.memory.macos import (
    AVAILABLE_SYSCTL,
    HOST_STATISTICS64,
    HOST_VM_INFO64,
    HOST_VM_INFO64_COUNT,
    PRESSURE_SYSCTL,
    PROC_PID_RUSAGE,
    RUSAGE_INFO_V0,
    SYSCTLBYNAME,
    MacProbe,
    RusageInfoV0,
    VmPages,
    VmStatistics64,
    mac_fit,
    phys_footprint,
    macos_level,
    read_vm_pages,
    sysctl_by_command,
    sysctl_by_ctypes,
)
from mtld.memory.sampler import Sampler
from mtld.memory.simulated import SimulatedProbe, parse_simulated
from mtld.config.settings import MemorySettings, SettingsError
from mtld.testing import ScriptedProbe
from tests.conftest import capturing_log, take

DATA = Path(__file__).parent / "data" / "memory"
GiB = 2**30
N, W, C = Level.NORMAL, Level.WARN, Level.CRITICAL
SETTINGS = MemorySettings()  # psi_some_warn 10, psi_full_critical 5, available_warn 0.10, available_critical 0.05


def data(name: str) -> str:
    return (DATA / name).read_text()


def lay_out(root: Path, files: dict[str, str]) -> Path:
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def json_safe(value: object) -> object:
    return json.loads(json.dumps(value, allow_nan=False))


# ------------------------------------------------------------------ levels


@pytest.mark.parametrize(("levels", "expected"), [
    ((N,), N), ((N, W), W), ((W, N), W), ((C, W), C), ((N, C, W), C), ((W, W), W), ((), N),
])
def test_worst(levels, expected):
    assert worst(*levels) is expected


def test_levels_order_by_severity_not_spelling():
    assert N < W < C and C > W > N and W <= W and C >= N
    assert sorted([C, N, W]) == [N, W, C]  # "critical" < "normal" < "warn" as strings
    assert Level("warn") is W and json.dumps(W) == '"warn"'


@pytest.mark.parametrize(("some", "full", "expected"), [
    (0.0, 0.0, N),
    (9.99, 0.0, N),
    (10.0, 0.0, W),  # "this much": at the threshold counts
    (23.41, 1.92, W),
    (23.41, 5.0, C),
    (71.02, 38.55, C),
    (4.0, 5.0, C),  # full alone decides critical
])
def test_psi_level(some, full, expected):
    assert psi_level(some, full, some_warn=10.0, full_critical=5.0) is expected


@pytest.mark.parametrize(("value", "expected"), [(1, N), (2, W), (4, C), (0, N), (3, N), (8, N), (-1, N)])
def test_macos_level(value, expected):
    assert macos_level(value) is expected


@pytest.mark.parametrize(("available", "total", "expected"), [
    (8 * GiB, 16 * GiB, N),
    (int(1.6 * GiB) + 1, 16 * GiB, N),
    (int(1.5 * GiB), 16 * GiB, W),  # 9.4 %
    (int(0.81 * GiB), 16 * GiB, W),  # 5.06 %
    (int(0.79 * GiB), 16 * GiB, C),  # 4.9 %
    (0, 16 * GiB, C),
    (None, 16 * GiB, N),  # unknown: no opinion
    (1 * GiB, None, N),
    (1 * GiB, 0, N),
    (20 * GiB, 16 * GiB, N),  # a simulated file may claim more than there is
])
def test_available_level(available, total, expected):
    assert available_level(available, total, warn=0.10, critical=0.05) is expected


# ------------------------------------------------------------------ parsers


def test_parse_psi_recorded():
    assert parse_psi(data("psi_idle.txt")) == {
        "some": {"avg10": 0.0, "avg60": 0.0, "avg300": 0.0, "total": 0},
        "full": {"avg10": 0.0, "avg60": 0.0, "avg300": 0.0, "total": 0},
    }
    busy = parse_psi(data("psi_busy.txt"))
    assert busy["some"]["avg10"] == 23.41 and busy["full"]["avg10"] == 1.92 and busy["full"]["total"] == 6032114


@pytest.mark.parametrize(("text", "expected"), [
    ("some avg10=1.50 avg60=0.00 avg300=0.00 total=10\n", {"some": {"avg10": 1.5, "avg60": 0.0, "avg300": 0.0, "total": 10}}),
    ("some avg10=x avg60=2.00\nfull avg10=0.50\n", {"some": {"avg60": 2.0}, "full": {"avg10": 0.5}}),
    ("", {}),
    ("garbage\n\n", {}),
])
def test_parse_psi_partial(text, expected):
    assert parse_psi(text) == expected


@pytest.mark.parametrize(("name", "controller", "expected"), [
    ("proc_self_cgroup_v2_user_service.txt", None, "/user.slice/user-1000.slice/user@1000.service/app.slice/mtld.service"),
    ("proc_self_cgroup_v2_container.txt", None, "/"),
    ("proc_self_cgroup_v1_hybrid.txt", None, "/"),
    ("proc_self_cgroup_v1_hybrid.txt", "memory", "/process_api/08f957f288af7d9851886cf36f5a6093"),
    ("proc_self_cgroup_v2_user_service.txt", "memory", None),
])
def test_parse_cgroup_path_recorded(name, controller, expected):
    assert parse_cgroup_path(data(name), controller) == expected


@pytest.mark.parametrize(("text", "expected"), [
    ("12:memory:/docker/abc\n11:cpu,cpuacct:/docker/abc\n", None),  # pure v1: no unified line
    ("", None),
    ("not a cgroup line\n0::/a/b\n", "/a/b"),
])
def test_parse_cgroup_path(text, expected):
    assert parse_cgroup_path(text) == expected


@pytest.mark.parametrize(("text", "expected"), [
    ("max\n", None),
    ("4294967296\n", 4 * GiB),
    ("0\n", 0),
    ("9223372036854771712\n", None),  # cgroup v1 "no limit"
])
def test_cgroup_limit(text, expected):
    assert cgroup_limit(text) == expected


def test_cgroup_limit_garbage_is_an_error():
    with pytest.raises(ValueError):
        cgroup_limit("lots\n")


@pytest.mark.parametrize(("name", "expected"), [
    ("meminfo_vm_24g.txt", MemoryFigures(24684092 * 1024, 23970028 * 1024, 0)),
    ("meminfo_16g_low.txt", MemoryFigures(16310328 * 1024, 1093160 * 1024, (8388604 - 5242876) * 1024)),
])
def test_parse_meminfo_recorded(name, expected):
    assert parse_meminfo(data(name)) == expected


def test_parse_meminfo_old_kernel_and_garbage():
    old = "MemTotal: 1000 kB\nMemFree: 100 kB\nBuffers: 10 kB\nCached: 40 kB\n"
    assert parse_meminfo(old) == MemoryFigures(1000 * 1024, 150 * 1024, None)
    with pytest.raises(ValueError):
        parse_meminfo("nothing here\n")


@pytest.mark.parametrize(("name", "expected"), [
    ("memory_stat_v2.txt", {"inactive_file": 805306368}),
    ("memory_stat_v1_unlimited.txt",
     {"inactive_file": 102400, "total_inactive_file": 102400, "hierarchical_memory_limit": 9223372036854771712}),
])
def test_parse_memory_stat_recorded(name, expected):
    assert parse_memory_stat(data(name)) == expected


@pytest.mark.parametrize(("text", "expected"), [
    ("normal", (N, None, None)),
    ("warn\n", (W, None, None)),
    ("  CRITICAL  ", (C, None, None)),
    ("warn 2000000000\n", (W, 2000000000, None)),
    ("critical 0", (C, 0, None)),
    ("", (N, None, "empty file reads as normal")),
    ("panic", (N, None, "unreadable level 'panic' reads as normal")),
    ("warn lots", (W, None, "unreadable available bytes 'lots' ignored")),
    ("warn -5", (W, None, "unreadable available bytes '-5' ignored")),
])
def test_parse_simulated(text, expected):
    assert parse_simulated(text) == expected


@pytest.mark.parametrize(("device_type", "total", "limit", "fraction", "expected"), [
    ("cpu", 16 * GiB, None, 0.8, int(12.8 * GiB)),
    ("cpu", 16 * GiB, 4 * GiB, 0.8, int(3.2 * GiB)),  # the cgroup limit is lower
    ("cpu", 4 * GiB, 16 * GiB, 0.5, 2 * GiB),
    ("cuda", 24 * GiB, 4 * GiB, 0.8, int(19.2 * GiB)),  # a cgroup does not limit GPU memory
    ("mps", 21 * GiB, None, 1.0, 21 * GiB),  # recommended_max_memory
])
def test_budget_bytes(device_type, total, limit, fraction, expected):
    assert budget_bytes(device_type=device_type, device_total=total, cgroup_limit=limit, fraction=fraction) == expected


RULES = Hysteresis(dwell_s=5.0, quiet_s=30.0)


def replay_guard(rows, rules: Hysteresis = RULES, size: int = 8):
    """(time, level, used) rows through guard_advice → (advice times, the micro-batch path, interrupt time).
    A halving at 2 is ignored, as the step loop does."""
    state, advised, path, interrupted = GuardState(), [], [size], None
    for now, level, used in rows:
        decision = guard_advice(state, level, used, 1000, float(now), rules)
        state = decision.state
        if decision.advice == "scale_down":
            advised.append(now)
            if path[-1] > 2:
                path.append(path[-1] // 2)
        elif decision.advice == "interrupt" and interrupted is None:
            interrupted = now
    return advised, path, interrupted


def levels(*pattern: Level, seconds: int, used: int = 500):
    """`pattern` repeated once a second for `seconds` seconds."""
    return [(t, pattern[t % len(pattern)], used) for t in range(seconds)]


@pytest.mark.parametrize(("rows", "advised", "path", "interrupted"), [
    (levels(N, seconds=300), [], [8], None),
    # warn and normal alternating at 1 Hz for 5 minutes: one halving (5 s of warn within the episode), never two
    (levels(W, N, seconds=300), [10], [8, 4], None),
    (levels(N, W, seconds=300), [11], [8, 4], None),
    # sustained warn: one halving per dwell + quiet (5 s, then every 35 s), down to 2 and no further
    (levels(W, seconds=300), [5, 40, 75, 110, 145, 180, 215, 250, 285], [8, 4, 2], None),
    (levels(W, seconds=39), [5], [8, 4], None),
    # a 3 s warn or critical spike: under the dwell, nothing
    ([(t, W if t < 3 else N, 500) for t in range(120)], [], [8], None),
    ([(t, C if t < 3 else N, 500) for t in range(120)], [], [8], None),
    # sustained critical: interrupt after the dwell (and a halving is due at the same moment: interrupt first)
    (levels(C, seconds=10), [], [8], 5),
    # critical 3 s in every 8: the episode never ends, critical adds up to the dwell in the second spike
    (levels(C, C, C, N, N, N, N, N, seconds=60), [], [8], 10),
    # over the budget: like warn
    ([(t, N, 1500) for t in range(60)], [5, 40], [8, 4, 2], None),
    ([(t, N, 1000) for t in range(60)], [], [8], None),  # at the budget is within it
    ([(t, N, 1500 if t % 2 else 500) for t in range(300)], [11], [8, 4], None),
    # an episode ends after 30 s of normal: the next one may halve again at once (after its own dwell)
    ([(t, W if t < 10 or 50 <= t < 60 else N, 500) for t in range(100)], [5, 55], [8, 4, 2], None),
    # two bursts of warn, 4 s and 3 s: 29 s of normal between them do not end the episode, so its trouble adds
    # up to the dwell in the second; 31 s do, and neither burst alone reaches it
    ([(t, W if t < 4 or 33 <= t < 36 else N, 500) for t in range(100)], [34], [8, 4], None),
    ([(t, W if t < 4 or 35 <= t < 38 else N, 500) for t in range(100)], [], [8], None),
])
def test_guard_advice_over_time(rows, advised, path, interrupted):
    assert replay_guard(rows) == (advised, path, interrupted)


def test_guard_advice_dwell_and_quiet_come_from_the_rules():
    assert replay_guard(levels(W, seconds=60), Hysteresis(dwell_s=2, quiet_s=10)) == ([2, 14, 26, 38, 50], [8, 4, 2],
                                                                                        None)
    assert replay_guard(levels(W, N, seconds=60), Hysteresis(dwell_s=0, quiet_s=10))[0] == [0, 10, 20, 30, 40, 50]
    assert replay_guard(levels(C, seconds=10), Hysteresis(dwell_s=0, quiet_s=10))[2] == 0  # dwell 0: the old way


def test_guard_advice_a_long_gap_counts_as_max_gap():
    # a laptop asleep for an hour between two warn samples: not an hour of trouble
    rows = [(0, W, 500), (3600, W, 500), (3601, W, 500)]
    assert replay_guard(rows, Hysteresis(dwell_s=10, quiet_s=30, max_gap_s=5))[0] == []


def test_guard_advice_single_samples():
    calm = GuardState()
    ok = guard_advice(calm, N, 500, 1000, 7.0)
    assert (ok.advice, ok.reason, ok.state) == ("ok", None, GuardState(last_at=7.0))
    first = guard_advice(calm, W, None, None, 7.0)
    assert first.advice == "ok" and first.state.episode_since == 7.0 and first.state.last_trouble
    assert guard_advice(first.state, W, None, None, 12.0) == ("scale_down", "pressure", guard_advice(
        first.state, W, None, None, 12.0).state)
    over = guard_advice(guard_advice(calm, N, 1001, 1000, 0.0).state, N, 1001, 1000, 5.0)
    assert (over.advice, over.reason) == ("scale_down", "budget")
    both = guard_advice(guard_advice(calm, W, 1001, 1000, 0.0).state, W, 1001, 1000, 5.0)
    assert (both.advice, both.reason) == ("scale_down", "pressure")  # pressure named first


@pytest.mark.parametrize(("device", "footprint", "allocated", "expected"), [
    ("cpu", 3 * GiB, None, 3 * GiB),
    ("cuda", 3 * GiB, 5 * GiB, 5 * GiB),  # the budget is the card's: host memory is not in it
    ("mps", 6 * GiB, 4 * GiB, 6 * GiB),  # the footprint already holds the Metal buffers: not 10
    ("mps", 2 * GiB, 4 * GiB, 4 * GiB),  # a footprint that leaves them out: at least the driver's figure
    ("mps", None, 4 * GiB, 4 * GiB),
    ("mps", None, None, None),
    ("cpu", None, None, None),
])
def test_used_bytes(device, footprint, allocated, expected):
    assert used_bytes(device, footprint=footprint, device=allocated) == expected


def test_advice_is_declared_once_and_the_guard_seam_uses_it():
    from mtld.memory import guard as memory_guard
    from mtld.train import guard

    assert guard.Advice is memory_guard.Advice is mtld.memory.Advice
    assert typing.get_args(guard.Advice) == ("ok", "scale_down", "interrupt")


# ------------------------------------------------------------------ LinuxProbe over recorded files

CONTROLLERS = "cpuset cpu io memory hugetlb pids rdma misc\n"
USER_SERVICE = "user.slice/user-1000.slice/user@1000.service/app.slice/mtld.service"


def system_files(psi: str | None = "psi_idle.txt", meminfo: str = "meminfo_vm_24g.txt",
                 cgroup: str = "proc_self_cgroup_v2_user_service.txt") -> dict[str, str]:
    files = {"proc/meminfo": data(meminfo), "proc/self/cgroup": data(cgroup)}
    if psi:
        files["proc/pressure/memory"] = data(psi)
    return files


def v2_cgroup(path: str, *, max: str = "max", high: str = "max", current: int = GiB,
              stat: str | None = None, pressure: str = "psi_idle.txt") -> dict[str, str]:
    folder = f"sys/fs/cgroup/{path}".rstrip("/")
    return {f"{folder}/memory.max": max + "\n", f"{folder}/memory.high": high + "\n",
            f"{folder}/memory.current": f"{current}\n", f"{folder}/memory.stat": stat or data("memory_stat_v2.txt"),
            f"{folder}/memory.pressure": data(pressure)}


def v2_tree(leaf: dict[str, object] | None = None, slice_: dict[str, object] | None = None) -> dict[str, str]:
    """The cgroups from user.slice down to mtld.service, none limited unless told."""
    files = {"sys/fs/cgroup/cgroup.controllers": CONTROLLERS}
    parts = USER_SERVICE.split("/")
    for depth in range(1, len(parts) + 1):
        path = "/".join(parts[:depth])
        options = leaf if depth == len(parts) else slice_ if path == "user.slice/user-1000.slice" else None
        files |= v2_cgroup(path, **(options or {}))  # type: ignore[arg-type]
    return files


def linux_read(root: Path, **settings: float) -> Reading:
    return LinuxProbe(MemorySettings(**settings), root=root).read()


@pytest.mark.parametrize(("psi", "level"), [("psi_idle.txt", N), ("psi_busy.txt", W), ("psi_thrashing.txt", C)])
def test_linux_psi_decides_the_level(tmp_path, psi, level):
    reading = linux_read(lay_out(tmp_path, system_files(psi) | v2_tree()))
    assert reading.level is level
    assert reading.detail["psi_level"] == level.value
    assert reading.detail["available_level"] == "normal"
    assert reading.total_bytes == 24684092 * 1024 and reading.available_bytes == 23970028 * 1024
    assert reading.swap_used_bytes == 0 and reading.source == "linux"


def test_linux_psi_thresholds_come_from_settings(tmp_path):
    root = lay_out(tmp_path, system_files("psi_busy.txt") | v2_tree())
    assert linux_read(root, psi_some_warn=30.0).level is N
    assert linux_read(root, psi_full_critical=1.5).level is C


def test_linux_low_available_memory_warns_with_idle_psi(tmp_path):
    reading = linux_read(lay_out(tmp_path, system_files(meminfo="meminfo_16g_low.txt") | v2_tree()))
    assert reading.level is W
    assert reading.detail["psi_level"] == "normal" and reading.detail["available_level"] == "warn"
    assert reading.swap_used_bytes == 3 * GiB


def test_linux_without_psi_notes_it(tmp_path):
    reading = linux_read(lay_out(tmp_path, system_files(psi=None, meminfo="meminfo_16g_low.txt")))
    assert reading.level is W  # from available memory alone
    assert "psi_some_avg10" not in reading.detail
    assert any("proc/pressure/memory" in note for note in reading.detail["notes"])


def test_linux_unlimited_cgroup_uses_the_system_figures(tmp_path):
    reading = linux_read(lay_out(tmp_path, system_files() | v2_tree()))
    assert reading.detail["cgroup"] == "/" + USER_SERVICE and reading.detail["cgroup_limit_bytes"] is None
    assert reading.total_bytes == 24684092 * 1024
    assert "notes" not in reading.detail


def test_linux_limited_cgroup_counts_its_working_set_not_its_page_cache(tmp_path):
    # 3.5 GiB charged, 768 MiB of it inactive page cache: 2.75 GiB used of 4 GiB
    leaf = {"max": str(4 * GiB), "current": int(3.5 * GiB)}
    reading = linux_read(lay_out(tmp_path, system_files() | v2_tree(leaf=leaf)))
    assert reading.total_bytes == 4 * GiB
    assert reading.available_bytes == int(1.25 * GiB)
    assert reading.level is N
    assert reading.detail["cgroup"] == "/" + USER_SERVICE
    assert reading.detail["cgroup_used_bytes"] == int(2.75 * GiB)
    assert reading.detail["system_total_bytes"] == 24684092 * 1024
    assert reading.detail["cgroup_psi_level"] == "normal"


def test_linux_limited_cgroup_near_its_limit_is_critical(tmp_path):
    stat = data("memory_stat_v2.txt").replace("inactive_file 805306368", "inactive_file 52428800")
    leaf = {"max": str(4 * GiB), "current": 4 * GiB - 10 * 2**20, "stat": stat}
    reading = linux_read(lay_out(tmp_path, system_files() | v2_tree(leaf=leaf)))
    assert reading.available_bytes == 60 * 2**20
    assert reading.level is C and reading.detail["psi_level"] == "normal"


def test_linux_memory_high_counts_as_a_limit(tmp_path):
    leaf = {"high": str(3 * GiB), "current": int(3.5 * GiB)}  # 2.75 GiB used
    reading = linux_read(lay_out(tmp_path, system_files() | v2_tree(leaf=leaf)))
    assert reading.total_bytes == 3 * GiB and reading.available_bytes == GiB // 4
    assert reading.level is W  # 8.3 %


def test_linux_the_ancestor_with_least_headroom_binds(tmp_path):
    slice_ = {"max": str(8 * GiB), "current": int(7.5 * GiB)}  # 6.75 GiB used: 1.25 GiB left
    leaf = {"max": str(6 * GiB), "current": GiB}  # 0.25 GiB used: 5.75 GiB left
    reading = linux_read(lay_out(tmp_path, system_files() | v2_tree(leaf=leaf, slice_=slice_)))
    assert reading.detail["cgroup"] == "/user.slice/user-1000.slice"
    assert reading.total_bytes == 8 * GiB and reading.available_bytes == int(1.25 * GiB)


def test_linux_limited_cgroup_pressure_counts(tmp_path):
    leaf = {"max": str(4 * GiB), "pressure": "psi_thrashing.txt"}
    reading = linux_read(lay_out(tmp_path, system_files("psi_idle.txt") | v2_tree(leaf=leaf)))
    assert reading.level is C
    assert reading.detail["psi_level"] == "normal" and reading.detail["cgroup_psi_level"] == "critical"
    assert reading.detail["cgroup_psi_full_avg10"] == 38.55


def test_linux_container_sees_its_cgroup_at_the_mount(tmp_path):
    files = system_files(cgroup="proc_self_cgroup_v2_container.txt") | {
        "sys/fs/cgroup/cgroup.controllers": CONTROLLERS} | v2_cgroup("", max=str(2 * GiB), current=GiB)
    reading = linux_read(lay_out(tmp_path, files))
    assert reading.detail["cgroup"] == "/" and reading.total_bytes == 2 * GiB


def test_linux_container_with_the_hosts_path_falls_back_to_the_mount(tmp_path):
    files = {"proc/meminfo": data("meminfo_vm_24g.txt"), "proc/self/cgroup": "0::/system.slice/docker-3f2a.scope\n",
             "sys/fs/cgroup/cgroup.controllers": CONTROLLERS} | v2_cgroup("", max=str(2 * GiB), current=GiB)
    reading = linux_read(lay_out(tmp_path, files))
    assert reading.detail["cgroup"] == "/" and reading.total_bytes == 2 * GiB


V1_LEAF = "sys/fs/cgroup/memory/process_api/08f957f288af7d9851886cf36f5a6093"


def test_linux_cgroup_v1_unlimited_recorded(tmp_path):
    files = system_files(cgroup="proc_self_cgroup_v1_hybrid.txt") | {
        f"{V1_LEAF}/memory.stat": data("memory_stat_v1_unlimited.txt"),
        f"{V1_LEAF}/memory.limit_in_bytes": data("memory_limit_in_bytes_v1_unlimited.txt"),
        f"{V1_LEAF}/memory.usage_in_bytes": data("memory_usage_in_bytes_v1.txt"),
        "sys/fs/cgroup/unified/cgroup.controllers": ""}
    reading = linux_read(lay_out(tmp_path, files))
    assert reading.detail["cgroup"] == "/process_api/08f957f288af7d9851886cf36f5a6093"
    assert reading.detail["cgroup_limit_bytes"] is None and reading.total_bytes == 24684092 * 1024


def test_linux_cgroup_v1_limited(tmp_path):
    files = system_files(cgroup="proc_self_cgroup_v1_hybrid.txt") | {
        f"{V1_LEAF}/memory.stat": data("memory_stat_v1_limited_4g.txt"),
        f"{V1_LEAF}/memory.limit_in_bytes": data("memory_limit_in_bytes_v1_unlimited.txt"),  # the limit is above
        f"{V1_LEAF}/memory.usage_in_bytes": f"{int(3.9 * GiB)}\n"}
    reading = linux_read(lay_out(tmp_path, files))
    used = int(3.9 * GiB) - 268435456
    assert reading.detail["cgroup_limit_bytes"] == 4 * GiB and reading.detail["cgroup_used_bytes"] == used
    assert reading.available_bytes == 4 * GiB - used
    assert reading.level is W  # 8.75 % left
    assert "cgroup_psi_level" not in reading.detail  # v1 has no memory.pressure


def test_linux_cgroup_that_vanishes_is_noted_and_found_again(tmp_path):
    root = lay_out(tmp_path, system_files() | v2_tree(leaf={"max": str(4 * GiB)}))
    probe = LinuxProbe(SETTINGS, root=root)
    assert probe.read().total_bytes == 4 * GiB
    current = root / "sys/fs/cgroup" / USER_SERVICE / "memory.current"
    current.unlink()
    reading = probe.read()
    assert reading.total_bytes == 24684092 * 1024
    assert any(note.startswith("cgroup:") for note in reading.detail["notes"])
    assert "cgroup_limit_bytes" not in reading.detail  # not "unlimited": unknown
    current.write_text(f"{GiB}\n")
    assert probe.read().total_bytes == 4 * GiB


def test_linux_reading_is_json_safe(tmp_path):
    reading = linux_read(lay_out(tmp_path, system_files("psi_busy.txt") | v2_tree(leaf={"max": str(4 * GiB)})))
    assert json_safe(reading.to_dict()) == reading.to_dict()
    assert reading.to_dict()["pressure"] == "warn"


def test_linux_probe_live():
    """This machine, read as the daemon would: a sane reading whatever the kernel offers."""
    reading = LinuxProbe(SETTINGS).read()
    assert isinstance(reading.level, Level)
    assert reading.total_bytes and reading.total_bytes > 0
    assert reading.available_bytes is not None and 0 <= reading.available_bytes <= reading.total_bytes
    if Path("/proc/pressure/memory").exists():
        assert 0.0 <= reading.detail["psi_some_avg10"] <= 100.0
    else:
        assert any("pressure" in note for note in reading.detail["notes"])
    json_safe(reading.to_dict())


# ------------------------------------------------------------------ macOS, on recorded values


def fake_sysctlbyname(values: dict[str, int], width: int = 4):
    """A C function with sysctlbyname's signature that answers from `values`."""

    def call(name, oldp, oldlenp, newp, newlen):
        value = values.get(name.decode())
        if value is None:
            return -1
        raw = value.to_bytes(width, sys.byteorder, signed=True)
        ctypes.memmove(oldp, raw, width)
        oldlenp[0] = width
        return 0

    return SYSCTLBYNAME(call)


@pytest.mark.parametrize("value", [1, 2, 4])
@pytest.mark.parametrize("width", [4, 8])
def test_sysctl_by_ctypes(value, width):
    function = fake_sysctlbyname({PRESSURE_SYSCTL: value}, width)
    assert sysctl_by_ctypes(PRESSURE_SYSCTL, function) == value


def test_sysctl_by_ctypes_errors():
    with pytest.raises(OSError, match="no.such"):
        sysctl_by_ctypes("no.such", fake_sysctlbyname({}))
    with pytest.raises(OSError, match="2-byte"):
        sysctl_by_ctypes(PRESSURE_SYSCTL, fake_sysctlbyname({PRESSURE_SYSCTL: 1}, width=2))


def test_sysctl_by_command():
    def answers(stdout: str, code: int = 0):
        def run(args, **kwargs):
            assert args == ["sysctl", "-n", PRESSURE_SYSCTL] and kwargs["timeout"] > 0
            if code:
                raise subprocess.CalledProcessError(code, args, stdout, "sysctl: unknown oid")
            return subprocess.CompletedProcess(args, 0, stdout, "")
        return run

    assert sysctl_by_command(PRESSURE_SYSCTL, answers("2\n")) == 2
    with pytest.raises(OSError, match="unknown oid"):
        sysctl_by_command(PRESSURE_SYSCTL, answers("", code=1))
    with pytest.raises(OSError, match="ValueError"):
        sysctl_by_command(PRESSURE_SYSCTL, answers("four\n"))


@pytest.mark.skipif(sys.platform == "darwin", reason="Linux has no kern.memorystatus_vm_pressure_level")
def test_read_sysctl_int_fails_as_oserror_off_macos():
    from mtld.memory.macos import read_sysctl_int

    with pytest.raises(OSError):
        read_sysctl_int(PRESSURE_SYSCTL)


def test_read_sysctl_int_without_libcs_sysctlbyname_asks_the_command(monkeypatch):
    from mtld.memory import macos

    monkeypatch.setattr(macos, "_libc_sysctlbyname", False)  # looked up already: libc has none
    monkeypatch.setattr(macos, "sysctl_by_command", {PRESSURE_SYSCTL: 2}.__getitem__)
    assert macos.read_sysctl_int(PRESSURE_SYSCTL) == 2
    monkeypatch.setattr(macos, "_libc_sysctlbyname", fake_sysctlbyname({PRESSURE_SYSCTL: 4}))
    assert macos.read_sysctl_int(PRESSURE_SYSCTL) == 4


@pytest.mark.skipif(sys.platform != "darwin", reason="macOS only")
def test_mac_probe_live():
    from mtld.memory.macos import read_sysctl_int

    assert read_sysctl_int(PRESSURE_SYSCTL) in (1, 2, 4)
    reading = MacProbe(SETTINGS).read()
    assert reading.total_bytes and 0 <= reading.available_bytes <= reading.total_bytes
    assert "notes" not in reading.detail
    assert reading.detail["vm"]["page_size"] in (4096, 16384) and 0 <= reading.usable_bytes <= reading.total_bytes
    json_safe(reading.to_dict())


ROOMY = MemoryFigures(16 * GiB, 8 * GiB, 0)
TIGHT = MemoryFigures(16 * GiB, GiB, 2 * GiB)  # 6.25 % available


def sysctls(**values: int):
    """A sysctl reader over recorded values; a name not recorded raises OSError, as sysctlbyname does."""
    names = {"pressure": PRESSURE_SYSCTL, "available": AVAILABLE_SYSCTL}

    def read(name: str) -> int:
        recorded = {names[k]: v for k, v in values.items()}
        if name not in recorded:
            raise OSError(errno.ENOENT, f"no such sysctl: {name}")
        return recorded[name]

    return read


@pytest.mark.parametrize(("value", "figures", "level", "by_available"), [
    (1, ROOMY, N, N), (2, ROOMY, W, N), (4, ROOMY, C, N),
    # psutil's available share at 6 % (free + inactive, while MPS holds wired memory): data, not a trigger
    (1, TIGHT, N, W), (2, TIGHT, W, W), (4, TIGHT, C, W),
    (1, MemoryFigures(16 * GiB, GiB // 2, 0), N, C),  # 3 %: still the kernel's normal
])
def test_mac_probe_the_kernel_decides_the_available_share_is_data(value, figures, level, by_available):
    reading = MacProbe(SETTINGS, sysctl=sysctls(pressure=value, available=41), figures=lambda: figures,
                       vm_pages=lambda: APPS_OPEN).read()
    assert reading.level is level
    assert reading.detail["sysctl_pressure_level"] == value and reading.detail["kernel_level"] == level.value
    assert reading.detail["available_level"] == by_available.value
    assert reading.detail["available_share"] == round(figures.available_bytes / figures.total_bytes, 4)
    assert (reading.total_bytes, reading.available_bytes, reading.swap_used_bytes) == figures
    assert reading.usable_bytes == reading.fit_bytes == mac_fit(APPS_OPEN, 16 * GiB).bytes  # the pages, not 41 %
    assert reading.detail["memorystatus_level"] == 41  # data
    assert "notes" not in reading.detail and reading.source == "macos"
    json_safe(reading.to_dict())


def no_vm_pages() -> VmPages:
    raise OSError("host_statistics64 is not available here (macOS only)")


def test_mac_probe_unknown_or_unreadable_level_is_noted():
    reading = MacProbe(SETTINGS, sysctl=lambda name: 3, figures=lambda: ROOMY, vm_pages=lambda: APPS_OPEN).read()
    assert reading.level is N and reading.detail["notes"] == [f"{PRESSURE_SYSCTL} = 3: unknown, read as normal"]

    reading = MacProbe(SETTINGS, sysctl=sysctls(), figures=lambda: TIGHT, vm_pages=no_vm_pages).read()
    assert reading.level is W  # from the available share, only because the kernel cannot be read
    assert reading.detail["kernel_level"] is None
    assert "no such sysctl" in reading.detail["notes"][0] and "available share instead" in reading.detail["notes"][0]
    # without the page counts, fits are checked against psutil's available: the same pages by psutil's count
    assert reading.usable_bytes is None and reading.fit_bytes == GiB
    assert "(macOS only); fits checked against psutil's available" in reading.detail["notes"][1]
    assert "no such sysctl: kern.memorystatus_level (data only)" in reading.detail["notes"][2]
    assert "vm" not in reading.detail and "fit" not in reading.detail


# ------------------------------------------------------------------ macOS: what a new run fits in

PAGE = 16384  # the kernel's page size on Apple silicon
# A 16 GiB Mac with apps left open (tests/traces/make_traces.py, mps_apps_open): 6.4 GiB active, 3.5 GiB
# inactive, 0.4 + 0.2 GiB free and speculative (free_count holds both), 1.6 GiB in the compressor, 3.9 GiB wired
APPS_OPEN = VmPages(page_size=PAGE, free_count=38_400, active_count=422_400, inactive_count=230_400,
                    speculative_count=12_800, compressor_page_count=102_400, wire_count=254_976,
                    purgeable_count=5_120, external_page_count=281_600, internal_page_count=384_000)
# struct vm_statistics64's fields in the header's order (osfmk/mach/vm_statistics.h) and their struct codes
VM_STATISTICS64 = [
    ("free_count", "I"), ("active_count", "I"), ("inactive_count", "I"), ("wire_count", "I"),
    ("zero_fill_count", "Q"), ("reactivations", "Q"), ("pageins", "Q"), ("pageouts", "Q"), ("faults", "Q"),
    ("cow_faults", "Q"), ("lookups", "Q"), ("hits", "Q"), ("purges", "Q"), ("purgeable_count", "I"),
    ("speculative_count", "I"), ("decompressions", "Q"), ("compressions", "Q"), ("swapins", "Q"), ("swapouts", "Q"),
    ("compressor_page_count", "I"), ("throttled_count", "I"), ("external_page_count", "I"),
    ("internal_page_count", "I"), ("total_uncompressed_pages_in_compressor", "Q"),
]


def vm_statistics64_bytes(pages: VmPages) -> bytes:
    """The struct as the kernel fills it, packed with `struct` from the header's field order (not from the
    ctypes Structure under test). The event counters get large distinct values, so a field read at the wrong
    offset cannot pass for a page count."""
    counts = pages.model_dump(exclude_none=True)
    values = [counts.get(name, (2**40 if code == "Q" else 3 * 10**9) + i)
              for i, (name, code) in enumerate(VM_STATISTICS64)]
    return struct.pack("=" + "".join(code for _, code in VM_STATISTICS64), *values)


def fake_host_statistics64(recorded: bytes, calls: list, *, filled: int = HOST_VM_INFO64_COUNT, status: int = 0):
    """A HOST_STATISTICS64 function that writes `recorded` as the kernel would and says it filled `filled` ints."""

    @HOST_STATISTICS64
    def host_statistics64(host, flavor, info, count):
        calls.append((host, flavor, count.contents.value))
        if status:
            return status
        ctypes.memmove(info, recorded, len(recorded))
        count.contents.value = filled
        return 0

    return host_statistics64


def test_vm_statistics64_has_the_headers_layout():
    packed = vm_statistics64_bytes(APPS_OPEN)
    assert ctypes.sizeof(VmStatistics64) == len(packed) == 152 and HOST_VM_INFO64_COUNT == 38
    offsets = {name: getattr(VmStatistics64, name).offset for name, _ in VM_STATISTICS64}
    assert offsets == {name: struct.calcsize("=" + "".join(c for _, c in VM_STATISTICS64[:i]))
                       for i, (name, _) in enumerate(VM_STATISTICS64)}  # no padding anywhere, as in the header
    assert (offsets["speculative_count"], offsets["compressor_page_count"]) == (92, 128)


def test_read_vm_pages_reads_what_the_kernel_wrote():
    calls: list = []
    mach = (fake_host_statistics64(vm_statistics64_bytes(APPS_OPEN), calls), 2563, PAGE)
    assert read_vm_pages(mach) == APPS_OPEN
    assert calls == [(2563, HOST_VM_INFO64, 38)]  # the host port, HOST_VM_INFO64, room for the whole struct


def test_read_vm_pages_refuses_what_it_cannot_trust():
    recorded = vm_statistics64_bytes(APPS_OPEN)
    with pytest.raises(OSError, match="filled 24 of 38 ints: no compressor figures"):  # a rev0 answer
        read_vm_pages((fake_host_statistics64(recorded, [], filled=24), 1, PAGE))
    with pytest.raises(OSError, match=r"host_statistics64\(HOST_VM_INFO64\): kern_return_t 4"):
        read_vm_pages((fake_host_statistics64(recorded, [], status=4), 1, PAGE))


@pytest.mark.skipif(sys.platform == "darwin", reason="off macOS")
def test_read_vm_pages_off_macos_is_an_oserror():
    with pytest.raises(OSError, match="macOS only"):
        read_vm_pages()


def kernel_warns(uncompressed: int, compressor: int, divisor: int) -> bool:
    """VM_PRESSURE_NORMAL_TO_WARNING with the compressor active (osfmk/vm/vm_pageout.c), in integer pages."""
    return uncompressed < (uncompressed + compressor) * 10 // divisor


@pytest.mark.parametrize(("pages", "total", "reclaimable", "before_warn", "bound"), [
    # apps open: the working sets of others are not counted; the kernel is far from warn
    (APPS_OPEN, 16 * GiB, 268_800, 691_200 - 102_400, "free + speculative + inactive pages"),
    # the compressor holds much: the kernel would warn before the free and inactive pages ran out
    (VmPages(page_size=PAGE, free_count=30_000, speculative_count=10_000, active_count=300_000,
             inactive_count=100_000, compressor_page_count=350_000), 16 * GiB, 130_000, 80_000,
     "the kernel's warn point"),
    # already past the warn point: nothing fits
    (VmPages(page_size=PAGE, free_count=20_000, speculative_count=0, active_count=200_000, inactive_count=80_000,
             compressor_page_count=320_000), 16 * GiB, 100_000, 0, "the kernel's warn point"),
    # 3 GB or less (divisor 11): the kernel warns once U < 10 × C
    (VmPages(page_size=4096, free_count=30_000, speculative_count=0, active_count=120_000, inactive_count=50_000,
             compressor_page_count=15_000), 2 * GiB, 80_000, 50_000, "the kernel's warn point"),
])
def test_mac_fit_counts_free_speculative_inactive_and_stops_at_the_kernels_warn_point(pages, total, reclaimable,
                                                                                       before_warn, bound):
    fit = mac_fit(pages, total)
    page = pages.page_size
    assert (fit.reclaimable_bytes, fit.before_warn_bytes) == (reclaimable * page, before_warn * page)
    assert fit.bound == bound
    assert fit.bytes == min(reclaimable, before_warn) * page
    divisor = 11 if total <= 3 * GiB else 20
    uncompressed = pages.active_count + pages.inactive_count + pages.free_count
    if before_warn:  # `before_warn` pages taken leave it at normal; `divisor` more make it warn (integer division)
        assert not kernel_warns(uncompressed - before_warn, pages.compressor_page_count, divisor)
        assert kernel_warns(uncompressed - before_warn - divisor, pages.compressor_page_count, divisor)
    else:
        assert kernel_warns(uncompressed, pages.compressor_page_count, divisor)


def test_mac_probe_fits_against_the_pages_not_kern_memorystatus_level():
    reading = MacProbe(SETTINGS, sysctl=sysctls(pressure=1, available=65), figures=lambda: ROOMY,
                       vm_pages=lambda: APPS_OPEN).read()
    assert reading.level is N and "notes" not in reading.detail
    assert reading.fit_bytes == 268_800 * PAGE < 16 * GiB * 65 // 100  # 4.1 GiB, where the old rule said 10.4
    assert reading.detail["vm"] == APPS_OPEN.model_dump(exclude_none=True)
    assert reading.detail["fit"] == {"reclaimable_bytes": 268_800 * PAGE, "before_warn_bytes": 588_800 * PAGE,
                                     "bound": "free + speculative + inactive pages"}
    assert reading.to_dict()["usable_bytes"] == reading.fit_bytes
    json_safe(reading.to_dict())


def test_a_trace_without_page_counts_replays_with_fits_against_the_available_share():
    from mtld.memory.replay import ReplayProbe

    old = ReplayProbe(Path(__file__).parent / "traces/mps_false_warn.jsonl", SETTINGS, clock=lambda: 0.5, start=0.0)
    reading = old.read()
    assert reading.usable_bytes is None and reading.fit_bytes == reading.available_bytes == old.row().available_bytes
    assert "page counts are not in the trace; fits checked against psutil's available" in reading.detail["notes"][0]

    new = ReplayProbe(Path(__file__).parent / "traces/mps_apps_open.jsonl", SETTINGS, clock=lambda: 0.5, start=0.0)
    row = new.row()
    assert new.read().usable_bytes == (row.vm.free_count + row.vm.inactive_count) * row.vm.page_size


def test_doctor_shows_what_fits_and_what_kern_memorystatus_level_would_have_said(tmp_path):
    from mtld.config.settings import Settings
    from mtld.doctor.diagnose import diagnose

    traces = Path(__file__).parent / "traces"
    settings = Settings(home=tmp_path, memory={"probe": "replay", "replay_file": traces / "mps_apps_open.jsonl"})
    row = mtld.memory.read_trace(traces / "mps_apps_open.jsonl")[0]
    fits_now = (row.vm.free_count + row.vm.inactive_count) * PAGE
    assert diagnose(settings)["memory"]["fits"] == {
        "bytes": fits_now, "bound": "free + speculative + inactive pages",
        "free_speculative_inactive_bytes": fits_now, "before_kernel_warn_bytes": 588_800 * PAGE,
        "memorystatus_level_bytes": 16 * GiB * 65 // 100}
    settings = Settings(home=tmp_path, memory={"probe": "replay", "replay_file": traces / "mps_false_warn.jsonl"})
    shown = diagnose(settings)["memory"]["fits"]
    assert shown["bound"] == "available_bytes" and shown["bytes"] == diagnose(settings)["memory"]["available_bytes"]


def fake_proc_pid_rusage(footprints: dict[int, int]):
    """A PROC_PID_RUSAGE function over recorded footprints (ESRCH for an unknown pid)."""

    @PROC_PID_RUSAGE
    def proc_pid_rusage(pid, flavor, buffer):
        if pid not in footprints or flavor != RUSAGE_INFO_V0:
            ctypes.set_errno(errno.ESRCH)
            return -1
        buffer.contents.ri_resident_size = 1
        buffer.contents.ri_phys_footprint = footprints[pid]
        return 0

    return proc_pid_rusage


def test_phys_footprint_reads_rusage_info_v0():
    assert ctypes.sizeof(RusageInfoV0) == 96 and RusageInfoV0.ri_phys_footprint.offset == 72  # bsd/sys/resource.h
    function = fake_proc_pid_rusage({42: 5 * GiB, os.getpid(): 123})
    assert phys_footprint(42, function) == 5 * GiB
    assert phys_footprint(None, function) == 123  # this process
    with pytest.raises(OSError, match="proc_pid_rusage"):
        phys_footprint(7, function)


@pytest.mark.skipif(sys.platform == "darwin", reason="off macOS")
def test_phys_footprint_off_macos_is_an_oserror_and_the_footprint_is_the_resident_set():
    with pytest.raises(OSError, match="macOS only"):
        phys_footprint()
    assert abs(process_footprint() - psutil.Process().memory_info().rss) < 64 * 2**20


@pytest.mark.skipif(sys.platform != "darwin", reason="macOS only")
def test_phys_footprint_live():
    assert 10 * 2**20 < phys_footprint() == process_footprint() < 64 * GiB


# ------------------------------------------------------------------ simulated, scripted, make_probe


def test_simulated_probe_follows_the_file(tmp_path):
    path = tmp_path / "pressure"
    probe = SimulatedProbe(path, figures=lambda: ROOMY)
    reading = probe.read()
    assert reading.level is N and reading.available_bytes == 8 * GiB and reading.detail["notes"] == ["no file: normal"]
    path.write_text("warn\n")
    assert probe.read().level is W
    path.write_text("critical 2000000000\n")
    reading = probe.read()
    assert (reading.level, reading.available_bytes, reading.total_bytes) == (C, 2000000000, 16 * GiB)
    assert "notes" not in reading.detail
    path.write_text("\x00\xff garbage")
    reading = probe.read()
    assert reading.level is N and "unreadable" in reading.detail["notes"][0]
    path.unlink()
    path.mkdir()  # unreadable as a file: still no exception
    assert probe.read().level is N
    json_safe(probe.read().to_dict())


def test_scripted_probe_repeats_its_last_item():
    probe = ScriptedProbe([W, OSError("gone"), "critical"])
    assert probe.read().level is W
    with pytest.raises(OSError):
        probe.read()
    assert [probe.read().level for _ in range(2)] == [C, C]


@pytest.mark.parametrize(("probe", "platform", "kind"), [
    ("auto", "darwin", MacProbe), ("auto", "linux", LinuxProbe), ("macos", "linux", MacProbe),
    ("linux", "darwin", LinuxProbe),
])
def test_make_probe(probe, platform, kind):
    assert type(make_probe(MemorySettings(probe=probe), platform)) is kind


def test_make_probe_simulated(tmp_path):
    (tmp_path / "p").write_text("warn")
    assert make_probe(MemorySettings(probe="simulated", simulated_file=tmp_path / "p")).read().level is W
    with pytest.raises(ValueError, match="simulated_file"):  # refused where the settings load
        MemorySettings(probe="simulated")
    with pytest.raises(SettingsError, match="memory.simulated_file"):  # and by make_probe, should one get through
        make_probe(MemorySettings.model_construct(probe="simulated", simulated_file=None))


@pytest.mark.slow
def test_module_is_torch_free():
    code = "import sys, mtld.memory, mtld.testing; sys.exit(any(m.split('.')[0] == 'torch' for m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_the_package_reexports_what_callers_import_and_no_fakes():
    from mtld.memory import guard, levels, macos, sampler

    assert (mtld.memory.Reading, mtld.memory.Level) == (levels.Reading, levels.Level)
    assert (mtld.memory.MemoryGuard, mtld.memory.budget_bytes) == (guard.MemoryGuard, guard.budget_bytes)
    assert (mtld.memory.Sampler, mtld.memory.read_sysctl_int) == (sampler.Sampler, macos.read_sysctl_int)
    assert set(mtld.memory.__all__) <= set(dir(mtld.memory))
    assert not hasattr(mtld.memory, "ScriptedProbe")


# ------------------------------------------------------------------ the sampler


class FakeClock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def run_ticks(sampler: Sampler, clock: FakeClock, ticks: int, every: float = 1.0) -> None:
    for _ in range(ticks):
        sampler.tick()
        clock.now += every


def test_sampler_logs_changes_at_once_and_repeats_rarely():
    (log, capture), clock = capturing_log(), FakeClock()
    probe = ScriptedProbe([N, N, N, W, W, N] + [N] * 40)
    sampler = Sampler(probe, every_s=1.0, log_every_s=30.0, log=log, clock=clock)
    run_ticks(sampler, clock, 6)
    events = take(capture)
    assert [(e["event"], e["trigger"], e["pressure"]) for e in events] == [
        ("memory.sample", "first", "normal"),
        ("memory.sample", "level_changed", "warn"),
        ("memory.sample", "level_changed", "normal"),
    ]
    assert events[1]["previous_pressure"] == "normal" and events[2]["previous_pressure"] == "warn"
    run_ticks(sampler, clock, 29)  # t = 1006 .. 1034: under 30 s since the last event, at 1005
    assert take(capture) == []
    run_ticks(sampler, clock, 1)
    assert [e["trigger"] for e in take(capture)] == ["periodic"]
    assert sampler.latest.at == 1035.0 and sampler.latest.reading.level is N


def test_sampler_adds_device_figures():
    (log, capture), clock = capturing_log(), FakeClock()
    figures = iter([{"used_bytes": 100, "total_bytes": 1000}, {"used_bytes": 200, "total_bytes": 1000}])
    sampler = Sampler(ScriptedProbe([N]), log=log, clock=clock, read_device=lambda: next(figures))
    run_ticks(sampler, clock, 2)
    assert sampler.latest.device == {"used_bytes": 200, "total_bytes": 1000}
    fields = capture.entries[0]
    assert fields["device"] == {"used_bytes": 100, "total_bytes": 1000}
    assert json_safe(fields) == fields


def test_sampler_keeps_the_last_sample_when_a_read_fails_and_says_so_rarely():
    (log, capture), clock = capturing_log(), FakeClock()
    probe = ScriptedProbe([W] + [OSError("proc vanished")] * 40 + [N])
    sampler = Sampler(probe, every_s=1.0, log_every_s=30.0, log=log, clock=clock)
    run_ticks(sampler, clock, 1)
    first = sampler.latest
    take(capture)
    run_ticks(sampler, clock, 30)
    assert sampler.latest is first  # the loop still sees the last good sample
    failed = take(capture)
    assert [(e["log_level"], e["event"], e["what"], e["failures"]) for e in failed] == [
        ("warning", "memory.sample_failed", "probe", 1)]
    assert "proc vanished" in failed[0]["error"]
    run_ticks(sampler, clock, 1)  # 30 s after the first failure
    assert [(e["event"], e["failures"]) for e in take(capture)] == [("memory.sample_failed", 30)]
    run_ticks(sampler, clock, 11)
    assert sampler.latest.reading.level is N
    assert [e["trigger"] for e in take(capture) if e["event"] == "memory.sample"] == ["level_changed"]


def test_sampler_survives_a_failing_device_reader_and_logger():
    clock = FakeClock()

    def device() -> dict:
        raise RuntimeError("MPS went away")

    class BrokenLog:
        def info(self, event, **fields):
            raise OSError("disk full")

        warning = info

    sampler = Sampler(ScriptedProbe([W]), log=BrokenLog(), clock=clock, read_device=device)
    assert sampler.tick().reading.level is W  # the sample is taken before logging fails
    assert sampler.latest.device == {}


def test_sampler_thread_samples_and_stops_promptly():
    probe = ScriptedProbe([N])
    sampler = Sampler(probe, every_s=60.0).start()
    assert sampler.latest is not None and probe.reads == 1  # the first sample is taken at start
    started = time.monotonic()
    sampler.stop()
    assert time.monotonic() - started < 0.5 and not sampler.running

    with Sampler(probe, every_s=0.005) as fast:
        deadline = time.monotonic() + 10
        while probe.reads < 6 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert fast.running
    assert probe.reads >= 6 and not fast.running


def test_sampler_from_settings():
    sampler = Sampler.from_settings(ScriptedProbe([N]), MemorySettings(sample_every_s=2.0, log_every_s=10.0))
    assert (sampler.every_s, sampler.log_every_s) == (2.0, 10.0)


# ------------------------------------------------------------------ the guard


def test_memory_guard_over_a_scripted_run():
    # (level, device used) per sampler tick, a second apart → the first and second advice after it
    script = [(N, 500)] + [(W, 500)] * 6 + [(N, 500)] * 3 + [(N, 1200)] * 30 + [(C, 1100)] * 6
    # warn from 1 → halve at 6 (5 s); normal 7-9 does not end the episode; over budget from 10 and critical
    # from 40 keep the trouble unbroken → halve again at 6 + 30 + 5 = 41; critical for 5 s → interrupt at 45
    expected = {6: ("scale_down", "ok"), 41: ("scale_down", "ok"), 45: ("interrupt", "interrupt")}
    clock = FakeClock(0.0)
    figures = iter([{"used_bytes": used} for _, used in script])
    sampler = Sampler(ScriptedProbe([level for level, _ in script]), read_device=lambda: next(figures), clock=clock)
    guard = MemoryGuard(sampler, budget_bytes=1000, rules=RULES)
    assert guard.advice() == "ok"  # no sample yet
    got = {}
    for step, _ in enumerate(script):
        sampler.tick()
        clock.now += 1.0
        guard.at_step(step)
        advice = (guard.advice(), guard.advice())
        if advice != ("ok", "ok"):
            got[step] = advice
    assert got == expected
    assert guard.last_reason == "pressure"
    assert guard.last_detail == {"pressure": "critical", "used_bytes": 1100, "budget_bytes": 1000, "step": 45}


def test_memory_guard_without_budget_or_device_figures_follows_pressure():
    clock = FakeClock(0.0)
    sampler = Sampler(ScriptedProbe([N] + [W] * 10), clock=clock)
    guard = MemoryGuard(sampler, budget_bytes=None, rules=Hysteresis(dwell_s=2, quiet_s=30))
    advice = []
    for _ in range(6):
        sampler.tick()
        clock.now += 1.0
        advice.append(guard.advice())
    assert advice == ["ok", "ok", "ok", "scale_down", "ok", "ok"] and guard.last_reason == "pressure"


# ------------------------------------------------------------------ traces: format, replay, record


def test_a_trace_is_read_row_by_row_and_refused_with_the_row_that_is_wrong(tmp_path):
    from mtld.memory.replay import TraceError, parse_trace, read_trace

    good = '{"t": 0, "platform": "darwin", "kernel_level": 1, "available_share": 0.5, "total_bytes": 1000}'
    rows = parse_trace([good, "", good.replace('"t": 0', '"t": 1')])
    assert [r.t for r in rows] == [0.0, 1.0] and rows[0].available_bytes == 500
    for lines, message in [
        ([good, "{"], "trace:2: Expecting property name"),
        ([good.replace("darwin", "windows")], "trace:1: platform - Input should be 'darwin' or 'linux'"),
        ([good.replace('"t": 0', '"t": 0, "colour": 1')], "trace:1: colour - Extra inputs are not permitted"),
        ([good.replace('"t": 0', '"t": 5'), good], "trace:2: t goes back in time"),
        ([], "trace: no rows"),
    ]:
        with pytest.raises(TraceError, match=message):
            parse_trace(lines)
    with pytest.raises(TraceError, match="cannot read"):
        read_trace(tmp_path / "missing.jsonl")


def test_make_probe_replay(tmp_path):
    from mtld.memory.replay import ReplayProbe

    trace = tmp_path / "trace.jsonl"
    trace.write_text('{"t": 0, "platform": "darwin", "kernel_level": 2, "available_share": 0.5, "total_bytes": 1000}\n')
    probe = make_probe(MemorySettings(probe="replay", replay_file=trace))
    assert isinstance(probe, ReplayProbe) and probe.read().level is W
    with pytest.raises(ValueError, match="required when memory.probe = \"replay\""):
        MemorySettings(probe="replay")  # refused when the settings load, as the simulated probe's file is
    trace.write_text("nonsense\n")
    with pytest.raises(SettingsError, match=r"memory.replay_file - .*trace.jsonl:1"):
        make_probe(MemorySettings(probe="replay", replay_file=trace))


def test_a_recorded_trace_replays_to_the_same_levels():
    import io

    from mtld.memory.replay import ReplayProbe, parse_trace, record_trace

    levels = iter([1, 2, 4, 1])
    value = {"now": 1}

    def sysctl(name: str) -> int:
        if name == PRESSURE_SYSCTL:
            value["now"] = next(levels)
            return value["now"]
        return 30

    clock = FakeClock(100.0)

    def sleep(seconds: float) -> None:
        clock.now += seconds

    out = io.StringIO()
    probe = MacProbe(SETTINGS, sysctl=sysctl, figures=lambda: TIGHT)
    footprints = iter([GiB, 2 * GiB, OSError("gone"), None])

    def footprint():
        item = next(footprints)
        if isinstance(item, Exception):
            raise item
        return item

    assert record_trace(probe, out, seconds=4, footprint=footprint, clock=clock, sleep=sleep) == 4
    rows = parse_trace(out.getvalue().splitlines())
    assert [(r.t, r.kernel_level, r.memorystatus_level, r.footprint_bytes, r.level) for r in rows] == [
        (0.0, 1, 30, GiB, "normal"), (1.0, 2, 30, 2 * GiB, "warn"), (2.0, 4, 30, None, "critical"),
        (3.0, 1, 30, None, "normal")]
    assert rows[0].available_share == round(1 / 16, 5) and rows[0].platform == "darwin"
    t = {"now": 0.0}
    replay = ReplayProbe(rows, SETTINGS, clock=lambda: t["now"], start=0.0)
    got = []
    for second in range(4):
        t["now"] = second + 0.5
        got.append(replay.read().level)
    assert got == [N, W, C, N]


def test_a_recorded_trace_keeps_the_page_counts_and_replays_to_the_same_fits():
    import io

    from mtld.memory.replay import ReplayProbe, parse_trace, record_trace

    clock = FakeClock(0.0)

    def sleep(seconds: float) -> None:
        clock.now += seconds

    probe = MacProbe(SETTINGS, sysctl=sysctls(pressure=1, available=65), figures=lambda: ROOMY,
                     vm_pages=lambda: APPS_OPEN)
    out = io.StringIO()
    assert record_trace(probe, out, seconds=2, clock=clock, sleep=sleep) == 2
    rows = parse_trace(out.getvalue().splitlines())
    assert [row.vm for row in rows] == [APPS_OPEN, APPS_OPEN] and '"vm": {"page_size": 16384' in out.getvalue()
    replayed = ReplayProbe(rows, SETTINGS, clock=lambda: 0.5, start=0.0).read()
    assert replayed.usable_bytes == probe.read().usable_bytes == 268_800 * PAGE


def test_record_trace_wants_a_platform_probe():
    import io

    from mtld.memory.replay import TraceError, record_trace

    with pytest.raises(TraceError, match="macOS or Linux"):
        record_trace(ScriptedProbe([N]), io.StringIO(), seconds=1)


def test_doctor_records_a_trace_of_this_machine(tmp_path):
    trace = tmp_path / "night.jsonl"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("MTLD_")}, "MTLD_HOME": str(tmp_path / "home")}
    done = subprocess.run([sys.executable, "-m", "mtld", "doctor", "--record-trace", str(trace), "--seconds", "2",
                           "--pid", str(os.getpid())], capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 0, done.stderr
    assert "2 rows" in done.stdout
    from mtld.memory.replay import read_trace

    rows = read_trace(trace)
    assert len(rows) == 2 and rows[0].footprint_bytes > 0
    assert rows[0].platform == ("darwin" if sys.platform == "darwin" else "linux")


# ------------------------------------------------------------------ the self-test's check of the page counts


def vm_stat_output(pages: VmPages, *, page_size: int | None = None, **moved: int) -> str:
    """What vm_stat(1) prints for these counts ("%-30s %16llu.", system_cmds vm_stat/vm_stat.c); `moved`
    shifts a line by so many pages (the counts move between two reads)."""
    lines = {"Pages free:": pages.free_count - pages.speculative_count, "Pages active:": pages.active_count,
             "Pages inactive:": pages.inactive_count, "Pages speculative:": pages.speculative_count,
             "Pages throttled:": 0, "Pages wired down:": pages.wire_count, "Pages purgeable:": pages.purgeable_count,
             '"Translation faults":': 123456789, "Pages occupied by compressor:": pages.compressor_page_count}
    for key, by in moved.items():
        lines[f"Pages {key.replace('_', ' ')}:"] += by
    return (f"Mach Virtual Memory Statistics: (page size of {page_size or pages.page_size} bytes)\n"
            + "".join(f"{label:<30} {value:>16}.\n" for label, value in lines.items()))


def selftest_context(tmp_path, runner, platform: str = "darwin"):
    from mtld.doctor.selftest import Context, macos

    values = {macos.MEMSIZE: 16 * GiB, macos.FREE_LEVEL: 65}
    return Context(home=tmp_path, platform=platform, runner=runner, out_dir=tmp_path,
                   shared={"sysctl": values.__getitem__, "vm_pages": lambda: APPS_OPEN})


def run_vm_check(ctx):
    from mtld.doctor.selftest import macos
    from mtld.doctor.selftest.base import run_check

    return run_check(next(spec for spec in macos.CHECKS if spec.name == "macos.vm_statistics"), ctx)


def test_selftest_checks_the_page_counts_against_vm_stat_and_shows_both_fits_figures(tmp_path):
    from mtld.testing import RecordingRunner

    runner = RecordingRunner().on("vm_stat", stdout=vm_stat_output(APPS_OPEN, active=-900))  # within 1 % of RAM
    check = run_vm_check(selftest_context(tmp_path, runner))
    assert check.status == "pass", check.why
    assert check.figures["vm_stat"]["Pages active"] == 422_400 - 900 and check.figures["tolerance_pages"] == 10_485
    assert (check.figures["fits_bytes"], check.figures["memorystatus_level_bytes"]) == (268_800 * PAGE,
                                                                                        16 * GiB * 65 // 100)
    assert check.figures["bound"] == "free + speculative + inactive pages"
    assert runner.calls == [["vm_stat"]]


@pytest.mark.parametrize(("output", "why"), [
    (vm_stat_output(APPS_OPEN, page_size=4096), "page size: ctypes 16384, vm_stat 4096"),
    (vm_stat_output(APPS_OPEN, inactive=-50_000), "disagree by more than 10485 pages: Pages inactive (+50000)"),
    ("Mach Virtual Memory Statistics: (page size of 16384 bytes)\n", "Pages free (not in vm_stat's output)"),
])
def test_selftest_fails_when_ctypes_and_vm_stat_disagree(tmp_path, output, why):
    from mtld.testing import RecordingRunner

    runner = RecordingRunner().on("vm_stat", stdout=output)
    check = run_vm_check(selftest_context(tmp_path, runner))
    assert check.status == "fail" and why in check.why
    assert len(runner.calls) == 3  # read again twice: pages move between the two reads


def test_selftest_page_count_check_is_for_macos(tmp_path):
    from mtld.testing import RecordingRunner

    check = run_vm_check(selftest_context(tmp_path, RecordingRunner(), platform="linux"))
    assert check.status == "skipped" and check.why == "macOS only"
