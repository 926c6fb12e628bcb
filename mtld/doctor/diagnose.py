"""`mtld doctor`: what mtld sees on this machine, the first thing to run when something looks wrong;
`mtld doctor --record-trace`: a trace of this machine's memory readings (mtld.memory.replay)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mtld import __version__
from mtld.executor import ExecutorPlugin
from mtld.executor.registry import plugin_for
from mtld.platform.machine import guess_device
from mtld.memory import Reading, budget_bytes, make_probe, process_footprint, record_trace
from mtld.platform.pidfile import running_pid
from mtld.platform.agent import SubprocessRunner, agent_status
from mtld.config.settings import Settings

# What the guard compares with the budget, per device (mtld.memory.guard.used_bytes).
USED_FIGURE = {
    "mps": "the larger of the run's phys_footprint and torch.mps.driver_allocated_memory()",
    "cuda": "torch.cuda.memory_reserved() (the caching allocator's reserve)",
    "cpu": "the run's phys_footprint (proc_pid_rusage)" if sys.platform == "darwin" else "the run's resident set",
}


def diagnose(settings: Settings) -> dict[str, dict[str, Any]]:
    executor = plugin_for(settings)
    return {
        "mtld": {"version": __version__, "python": sys.executable, "platform": sys.platform},
        "device": _device(settings),
        "memory": _memory(settings),
        "folders": {
            "state": str(settings.state_dir),
            "logs": str(settings.log_dir),
            "store": str(settings.db_path),
            "runs": str(executor.runs_dir),
        },
        "daemon": {"pid": (pid := running_pid(settings.pid_file)), "running": pid is not None},
        "agent": agent_status(SubprocessRunner(timeout_s=10)),
        "executor": _executor(executor),
    }


def _executor(executor: ExecutorPlugin) -> dict[str, Any]:
    """The executor runs go to, and what its own check found (a cluster: reachable, the same versions on
    both ends, the shared folder seen by a worker, the resources a run asks for)."""
    if executor.doctor_note:
        sys.stderr.write(executor.doctor_note + "\n")
    return {**executor.describe(), **(executor.doctor() or {})}


def problems(info: dict[str, dict[str, Any]]) -> list[str]:
    """What the diagnosis found that stops runs (doctor exits 1 when there is any)."""
    return list(info.get("executor", {}).get("problems", []))


def _device(settings: Settings) -> dict[str, Any]:
    """Asks torch itself (the daemon only guesses, to stay torch-free)."""
    info: dict[str, Any] = {"setting": settings.train.device, "daemon_guess": guess_device(settings.train.device)}
    try:
        import torch
    except ImportError as e:
        return {**info, "error": f"torch cannot be imported: {e}"}
    from mtld.train.device import pick_device, total_memory_bytes

    device = pick_device(settings.train.device)
    info.update(torch=torch.__version__, trains_on=device.type, memory_bytes=total_memory_bytes(device),
                cuda=torch.cuda.is_available(), mps=torch.backends.mps.is_available(), threads=torch.get_num_threads())
    from mtld.platform.machine import precision_for

    info["mixed_precision_auto"] = dict(zip(("precision", "why"), precision_for("auto", device.type), strict=True))
    return info


def _memory(settings: Settings) -> dict[str, Any]:
    mem = settings.memory
    try:
        probe = make_probe(mem)
        reading = probe.read()
    except Exception as e:
        return {"probe": mem.probe, "error": f"{type(e).__name__}: {e}"}
    device = guess_device(settings.train.device)
    info: dict[str, Any] = {
        "probe": type(probe).__name__,
        "decides": {"level": getattr(probe, "decides", None), "over_budget": USED_FIGURE.get(device)},
        **reading.to_dict(),
        "fits": fits(reading),
    }
    if device == "cpu" and reading.total_bytes:
        info["budget_bytes"] = budget_bytes(device_type="cpu", device_total=reading.total_bytes,
                                            cgroup_limit=reading.detail.get("cgroup_limit_bytes"),
                                            fraction=mem.budget_fraction)
    info["budget_fraction"] = mem.budget_fraction
    info["headroom"] = mem.headroom
    info["hysteresis"] = {"dwell_s": mem.dwell_s, "quiet_s": mem.quiet_s, "resume_calm_s": mem.resume_calm_s,
                          "interrupt_limit": mem.interrupt_limit, "interrupt_window_s": mem.interrupt_window_s}
    return info


def fits(reading: Reading) -> dict[str, Any]:
    """What the check before a run compares a size's measured peak with, and where that figure comes from.
    On macOS kern.memorystatus_level's share is shown beside it: it counts other programs' active pages too."""
    detail = reading.detail
    fit = detail.get("fit")
    if fit:  # macOS: mtld.memory.macos.mac_fit over host_statistics64's page counts
        shown: dict[str, Any] = {"bytes": reading.fit_bytes, "bound": fit["bound"],
                                 "free_speculative_inactive_bytes": fit["reclaimable_bytes"],
                                 "before_kernel_warn_bytes": fit["before_warn_bytes"]}
    else:
        shown = {"bytes": reading.fit_bytes, "bound": "available_bytes"}
    share = detail.get("memorystatus_level")
    if share is not None and reading.total_bytes:
        shown["memorystatus_level_bytes"] = reading.total_bytes * share // 100
    return shown


def record(settings: Settings, path: Path, *, seconds: float, pid: int | None = None,
           say: Callable[[str], None] = print) -> int:
    """Record `seconds` of this machine's memory readings to `path`, one row a second, with the footprint of
    `pid` (default: the daemon's running run, if any). Ctrl-C stops early and keeps the rows so far."""
    probe = make_probe(settings.memory)
    pid = pid if pid is not None else _running_child(settings)
    footprint = (lambda: process_footprint(pid)) if pid else (lambda: None)
    whose = f"the footprint of process {pid}" if pid else "no process footprint (no run is running; --pid)"
    say(f"recording {seconds:.0f} s of memory readings to {path}, with {whose}; Ctrl-C stops")
    rows = 0
    with path.open("w", encoding="utf-8") as out:
        try:
            rows = record_trace(probe, out, seconds=seconds, footprint=footprint)
        except KeyboardInterrupt:
            say("stopped")
    say(f"{path}: done (replay it with memory.probe = \"replay\", memory.replay_file = \"{path}\")"
        + (f", {rows} rows" if rows else ""))
    return rows


def _running_child(settings: Settings) -> int | None:
    """The pid of the run the daemon is running now, from the store (None when there is none)."""
    if not settings.db_path.exists():
        return None
    from mtld.store import Store

    with Store(settings.db_path) as store:
        return next((run.pid for run in store.active_runs() if run.pid), None)
