"""macOS checks on memory: the kernel's pressure level read two ways, the page counts "fits" is
reckoned from read two ways, a pressure trace while MPS memory grows, an MPS out-of-memory that mtld
recognises and survives, and the driver figure read from a second thread. The OS and torch edges are
seams (ctx.runner, ctx.shared) so that tests replay recorded outputs and fakes on any machine."""

from __future__ import annotations

import ctypes
import json
import os
import re
import threading
from datetime import datetime
from typing import Any

from mtld.disk import open_private
from mtld.doctor.selftest.base import Context, Failed, Skipped, Spec, require

PRESSURE = "kern.memorystatus_vm_pressure_level"  # 1 normal, 2 warn, 4 critical (XNU bsd/kern/kern_memorystatus*.c)
FREE_LEVEL = "kern.memorystatus_level"  # percentage of memory the kernel counts as available
MEMSIZE = "hw.memsize"  # bytes of RAM (bsd/kern/kern_mib.c)
# vm_stat(1)'s lines: "Mach Virtual Memory Statistics: (page size of 16384 bytes)", "Pages free:   12345."
# (system_cmds vm_stat/vm_stat.c, snapshot)
VM_STAT_PAGE_SIZE = re.compile(r"page size of (\d+) bytes")
VM_STAT_LINE = re.compile(r"^(Pages [a-z ]+):\s+(\d+)\.$", re.M)
CHUNK = 256 << 20


def _mac(ctx: Context) -> None:
    if ctx.platform != "darwin":
        raise Skipped("macOS only")


class TorchMps:
    """The torch.mps calls the checks make (PyTorch docs, torch.mps); tests pass a fake instead."""

    def __init__(self) -> None:
        import torch

        self.torch = torch
        self.model: Any = None

    def available(self) -> bool:
        return self.torch.backends.mps.is_available()

    def recommended_max(self) -> int:
        return int(self.torch.mps.recommended_max_memory())  # Metal's recommendedMaxWorkingSetSize

    def driver_allocated(self) -> int:
        return int(self.torch.mps.driver_allocated_memory())

    def allocate(self, nbytes: int) -> Any:
        return self.torch.ones(nbytes, dtype=self.torch.uint8, device="mps")  # written, so resident

    def set_fraction(self, fraction: float) -> None:
        self.torch.mps.set_per_process_memory_fraction(fraction)  # 0 means unlimited (PyTorch docs)

    def empty_cache(self) -> None:
        self.torch.mps.synchronize()
        self.torch.mps.empty_cache()

    def step(self, batch: int = 8) -> float:
        """One forward/backward of a small network on MPS; its loss."""
        torch = self.torch
        if self.model is None:
            self.model = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.GELU(), torch.nn.Linear(512, 2)).to("mps")
        x = torch.randn(batch, 256, device="mps")
        loss = torch.nn.functional.cross_entropy(self.model(x), torch.zeros(batch, dtype=torch.long, device="mps"))
        loss.backward()
        torch.mps.synchronize()
        return float(loss)


def _mps(ctx: Context) -> Any:
    _mac(ctx)
    if "mps" not in ctx.shared:
        ctx.shared["mps"] = TorchMps()
    mps = ctx.shared["mps"]
    if not mps.available():
        raise Skipped("MPS is not available (an Intel Mac, or torch built without MPS): runs train on the CPU")
    return mps


def sysctl_ctypes(ctx: Context, name: str) -> int:
    reader = ctx.shared.get("sysctl")
    if reader is None:
        from mtld.memory.macos import _find_sysctlbyname, sysctl_by_ctypes

        function = _find_sysctlbyname()
        if function is None:
            raise Failed("libc has no sysctlbyname: mtld falls back to running `sysctl -n` every second")
        return sysctl_by_ctypes(name, function)
    return reader(name)


def sysctl_command(ctx: Context, name: str) -> int:
    result = ctx.runner.run(["sysctl", "-n", name])
    if result.returncode != 0 or not result.stdout.strip().lstrip("-").isdigit():
        raise Failed(f"`sysctl -n {name}` answered {result.returncode}: {(result.stderr or result.stdout).strip()}")
    return int(result.stdout.strip())


def footprint_bytes(ctx: Context) -> int | None:
    """This process's physical footprint (what Activity Monitor's Memory column shows):
    proc_pid_rusage(RUSAGE_INFO_V0) ri_phys_footprint (<libproc.h>, <sys/resource.h>)."""
    if "footprint" in ctx.shared:
        return ctx.shared["footprint"]()
    try:
        libproc = ctypes.CDLL(None)  # proc_pid_rusage is in libSystem, already loaded
        buffer = (ctypes.c_uint64 * 16)()  # rusage_info_v0: 16-byte uuid, then 9 uint64 counters
        if libproc.proc_pid_rusage(os.getpid(), 0, ctypes.byref(buffer)) != 0:
            return None
        return int(buffer[2 + 7])  # uuid (2 words), user, system, pkg_idle, interrupt, pageins, wired, resident, footprint
    except (OSError, AttributeError):
        return None


def vm_pages(ctx: Context) -> Any:
    """host_statistics64's page counts through ctypes, as the probe reads them (mtld.memory.macos.read_vm_pages)."""
    if "vm_pages" in ctx.shared:
        return ctx.shared["vm_pages"]()
    from mtld.memory.macos import read_vm_pages

    return read_vm_pages()


def parse_vm_stat(text: str) -> dict[str, int]:
    """vm_stat(1)'s page size and its "Pages ..." counts."""
    counts = {name: int(value) for name, value in VM_STAT_LINE.findall(text)}
    if (size := VM_STAT_PAGE_SIZE.search(text)) is not None:
        counts["page size"] = int(size.group(1))
    return counts


def available_share(ctx: Context) -> float:
    if "available_share" in ctx.shared:
        return ctx.shared["available_share"]()
    import psutil

    vm = psutil.virtual_memory()
    return vm.available / vm.total


# ---------------------------------------------------------------- the checks


def check_pressure_level(ctx: Context) -> dict[str, Any]:
    """The kernel's level through ctypes (what the probe reads each second) and through `sysctl -n` agree."""
    _mac(ctx)
    figures: dict[str, Any] = {}
    for name in (PRESSURE, FREE_LEVEL):
        for _ in range(3):  # the level may change between the two reads
            by_ctypes, by_command = sysctl_ctypes(ctx, name), sysctl_command(ctx, name)
            if by_ctypes == by_command or name == FREE_LEVEL and abs(by_ctypes - by_command) <= 2:
                break
        figures[name] = {"ctypes": by_ctypes, "sysctl": by_command}
        require(by_ctypes == by_command or name == FREE_LEVEL and abs(by_ctypes - by_command) <= 2,
                f"{name}: ctypes reads {by_ctypes}, `sysctl -n` {by_command}", **figures)
    require(figures[PRESSURE]["ctypes"] in (1, 2, 4), f"{PRESSURE} = {figures[PRESSURE]['ctypes']}: not 1, 2 or 4",
            **figures)
    return figures


def check_vm_statistics(ctx: Context) -> dict[str, Any]:
    """host_statistics64 through ctypes (the struct mtld lays out, what "fits" is reckoned from) and vm_stat(1)
    agree, to 1 % of RAM (pages move between the two reads); the fits figure beside kern.memorystatus_level's."""
    from mtld.memory.macos import mac_fit

    _mac(ctx)
    total = sysctl_ctypes(ctx, MEMSIZE)
    for _ in range(3):
        try:
            pages = vm_pages(ctx)
        except OSError as e:
            raise Failed(f"host_statistics64 through ctypes: {e}") from None
        result = ctx.runner.run(["vm_stat"])
        require(result.returncode == 0, f"`vm_stat` answered {result.returncode}: {result.stderr.strip()[:200]}")
        shown = parse_vm_stat(result.stdout)
        ours = {"page size": pages.page_size, "Pages free": pages.free_count - pages.speculative_count,
                "Pages active": pages.active_count, "Pages inactive": pages.inactive_count,
                "Pages speculative": pages.speculative_count,
                "Pages occupied by compressor": pages.compressor_page_count}
        tolerance = total // pages.page_size // 100
        apart = {name: ours[name] - shown[name] if name in shown else None for name in ours}
        if apart["page size"] == 0 and all(d is not None and abs(d) <= tolerance for d in apart.values()):
            break
    figures: dict[str, Any] = {"ctypes": ours, "vm_stat": {name: shown.get(name) for name in ours},
                               "tolerance_pages": tolerance}
    require(apart["page size"] == 0, f"page size: ctypes {pages.page_size}, vm_stat {shown.get('page size')}",
            **figures)
    far = [f"{name} ({d:+})" if d is not None else f"{name} (not in vm_stat's output)"
           for name, d in apart.items() if d is None or abs(d) > tolerance]
    require(not far, f"ctypes and vm_stat disagree by more than {tolerance} pages: {', '.join(far)}", **figures)
    fit = mac_fit(pages, total)
    figures.update(fits_bytes=fit.bytes, bound=fit.bound, free_speculative_inactive_bytes=fit.reclaimable_bytes,
                   before_kernel_warn_bytes=fit.before_warn_bytes,
                   memorystatus_level_bytes=total * sysctl_ctypes(ctx, FREE_LEVEL) // 100)
    return figures


def check_pressure_trace(ctx: Context) -> dict[str, Any]:
    """MPS memory grows to ~60 % of the recommended maximum and is held, sampled at 1 Hz into a
    JSON-lines trace; samples where only psutil's available share looks alarming are counted."""
    from mtld.memory.levels import Level, available_level
    from mtld.memory.macos import macos_level
    from mtld.memory.replay import TraceRow
    from mtld.config.settings import MemorySettings

    mps = _mps(ctx)
    duration = 15 if ctx.quick else 120
    target = int(0.6 * mps.recommended_max())
    ramp = max(1, int(duration * 0.6))
    per_second = max(1, target // ramp)
    settings = MemorySettings()
    path = (ctx.out_dir or ctx.home) / f"mtld-trace-{datetime.now():%Y%m%d-%H%M%S}.jsonl"
    held, allocated, stopped_by, alarms, levels = [], 0, None, [], set()
    start = ctx.clock()
    with os.fdopen(open_private(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), "w") as trace:  # user-only
        for second in range(duration + 1):
            while allocated < min(target, per_second * (second + 1)) and stopped_by is None:
                size = min(CHUNK, target - allocated)
                try:
                    held.append(mps.allocate(size))
                    allocated += size
                except RuntimeError as e:  # the machine said no before 60 %: data, not a failure
                    stopped_by = str(e).splitlines()[0][:200]
            share = available_share(ctx)
            raw = sysctl_ctypes(ctx, PRESSURE)
            kernel = macos_level(raw)
            try:
                pages = vm_pages(ctx)
            except OSError:
                pages = None  # the trace still replays; its fits fall back to the available share
            row = TraceRow(t=round(ctx.clock() - start, 2), platform="darwin", kernel_level=raw,
                           memorystatus_level=sysctl_ctypes(ctx, FREE_LEVEL), available_share=round(share, 4), vm=pages,
                           footprint_bytes=footprint_bytes(ctx), device_bytes=mps.driver_allocated(), device="mps",
                           level=kernel.value)  # the replay probe's format (mtld.memory.replay)
            sample = row.model_dump(exclude_none=True)
            trace.write(json.dumps(sample) + "\n")
            by_share = available_level(int(share * 1e6), 1_000_000, warn=settings.available_warn,
                                       critical=settings.available_critical)
            levels.add(kernel.value)
            if by_share > Level.NORMAL and kernel == Level.NORMAL:
                alarms.append((sample["t"], by_share.value))
            ctx.sleep(max(0.0, start + second + 1 - ctx.clock()))
    held.clear()
    mps.empty_cache()
    ctx.files["pressure_trace"] = str(path)
    return {"trace": str(path), "samples": duration + 1, "target_bytes": target, "allocated_bytes": allocated,
            "stopped_by": stopped_by, "kernel_levels_seen": sorted(levels), "available_only_alarms": len(alarms),
            "first_available_only_alarm": alarms[0] if alarms else None}


def check_mps_oom(ctx: Context) -> dict[str, Any]:
    """Under set_per_process_memory_fraction an MPS allocation fails with an error mtld's is_oom
    recognises; empty_cache lowers the driver's figure; a forward/backward works afterwards."""
    from mtld.train.device import is_oom

    mps = _mps(ctx)
    limit = min(2 << 30, mps.recommended_max() // 8)
    mps.set_fraction(limit / mps.recommended_max())
    held, error = [], None
    try:
        for _ in range(64):
            held.append(mps.allocate(CHUNK))
    except Exception as e:  # what the allocator raises (a RuntimeError on MPS: PyTorch MPSAllocator.mm)
        error = e
    finally:
        peak = mps.driver_allocated()
        held.clear()
        mps.empty_cache()
        after = mps.driver_allocated()
        mps.set_fraction(0.0)
    figures = {"limit_bytes": limit, "driver_bytes_at_oom": peak, "driver_bytes_after_empty_cache": after,
               "error": str(error).splitlines()[0][:200] if error else None}
    require(error is not None, "no allocation failed above the fraction: the budget mtld sets is not enforced", **figures)
    require(is_oom(error), f"mtld does not recognise this as out of memory: {type(error).__name__}", **figures)
    require(after < peak, "empty_cache did not lower driver_allocated_memory", **figures)
    figures["loss_after"] = loss = mps.step()
    require(loss == loss, "the forward/backward after the out-of-memory gave NaN", **figures)
    return figures


def check_driver_memory_thread(ctx: Context) -> dict[str, Any]:
    """The memory guard reads driver_allocated_memory from its sampler thread while the loop trains."""
    mps = _mps(ctx)
    reads: list[int] = []
    errors: list[str] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            try:
                reads.append(mps.driver_allocated())
            except Exception as e:
                errors.append(f"{type(e).__name__}: {e}")
            done.wait(0.01)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        losses = [mps.step() for _ in range(50 if ctx.quick else 500)]
    finally:
        done.set()
        thread.join(5)
    figures = {"steps": len(losses), "reads": len(reads), "max_driver_bytes": max(reads, default=None)}
    require(not errors, f"reading from a second thread failed: {errors[0] if errors else ''}", **figures)
    require(reads and max(reads) > 0, "the second thread read no driver memory", **figures)
    return figures


CHECKS = [
    Spec("macos.pressure_level", "macos", "mtld could misread the kernel's memory pressure and start or keep a "
         "run that pushes the Mac into swap.", check_pressure_level),
    Spec("macos.vm_statistics", "macos", "mtld could misread the page counts it checks a run's size against "
         "before starting it, and start a size that pushes the Mac into swap.", check_vm_statistics),
    Spec("macos.pressure_trace", "macos", "the trace is the evidence of which signal reacts when MPS memory grows; "
         "without it a scale-down at night cannot be explained.", check_pressure_trace),
    Spec("macos.mps_oom", "macos", "an MPS out-of-memory would crash the run instead of halving the micro-batch "
         "and redoing the step.", check_mps_oom),
    Spec("macos.driver_memory_thread", "macos", "the memory guard's sampler thread could crash or read nothing "
         "while training, so the run could not scale down in time.", check_driver_memory_thread),
]
