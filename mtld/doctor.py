"""`mtld doctor`: what mtld sees on this machine, the first thing to run when something looks wrong."""

from __future__ import annotations

import sys
from typing import Any

from mtld import __version__
from mtld.family import resolve_device
from mtld.memory import budget_bytes, make_probe
from mtld.pidfile import running_pid
from mtld.platform.agent import SubprocessRunner, agent_status
from mtld.settings import Settings


def diagnose(settings: Settings) -> dict[str, dict[str, Any]]:
    return {
        "mtld": {"version": __version__, "python": sys.executable, "platform": sys.platform},
        "device": _device(settings),
        "memory": _memory(settings),
        "folders": {
            "state": str(settings.state_dir),
            "logs": str(settings.log_dir),
            "store": str(settings.db_path),
            "runs": str(settings.runs_dir),
        },
        "daemon": {"pid": (pid := running_pid(settings.pid_file)), "running": pid is not None},
        "agent": agent_status(SubprocessRunner(timeout_s=10)),
    }


def _device(settings: Settings) -> dict[str, Any]:
    """Asks torch itself (the daemon only guesses, to stay torch-free)."""
    info: dict[str, Any] = {"setting": settings.train.device, "daemon_guess": resolve_device(settings.train.device)}
    try:
        import torch
    except ImportError as e:
        return {**info, "error": f"torch cannot be imported: {e}"}
    from mtld.train.device import pick_device, total_memory_bytes

    device = pick_device(settings.train.device)
    info.update(torch=torch.__version__, trains_on=device.type, memory_bytes=total_memory_bytes(device),
                cuda=torch.cuda.is_available(), mps=torch.backends.mps.is_available(), threads=torch.get_num_threads())
    return info


def _memory(settings: Settings) -> dict[str, Any]:
    mem = settings.memory
    try:
        probe = make_probe(mem)
        reading = probe.read()
    except Exception as e:
        return {"probe": mem.probe, "error": f"{type(e).__name__}: {e}"}
    device = resolve_device(settings.train.device)
    info: dict[str, Any] = {"probe": type(probe).__name__, **reading.to_dict()}
    if device == "cpu" and reading.total_bytes:
        info["budget_bytes"] = budget_bytes(device_type="cpu", device_total=reading.total_bytes,
                                            cgroup_limit=reading.detail.get("cgroup_limit_bytes"),
                                            fraction=mem.budget_fraction)
    info["budget_fraction"] = mem.budget_fraction
    info["headroom"] = mem.headroom
    return info
