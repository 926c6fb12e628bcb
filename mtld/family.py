"""A job's family and the size its next attempt starts at: shared by the daemon, `mtld status`,
`mtld estimate` and `mtld doctor`, and light to import (no scheduler, no torch)."""

from __future__ import annotations

import platform
import shutil
import sys
from pathlib import Path

from mtld import policy
from mtld.jobspec import JobSpec
from mtld.settings import Settings
from mtld.store import Job, Run, Store


def family(spec: JobSpec, device: str) -> str:
    """Runs of one family share memory and speed figures: (model, max length, device)."""
    return f"{spec.model}|{spec.max_length}|{device}"


def next_size(store: Store, settings: Settings, job: Job, history: list[policy.FamilyRun]) -> tuple[int, str]:
    """(micro-batch, reason) the job's next attempt starts at, before the memory check: pinned, the
    family's decision for a first attempt, or where the previous attempt left off."""
    earlier = [policy.EarlierRun(r.outcome, r.micro_batch, r.micro_batch_end) for r in store.runs_for(job.id)]
    pinned = None if job.batch_size == "auto" else int(job.batch_size)
    first = policy.family_start_size(history, settings.train.start_batch_size, settings.memory.headroom)
    return policy.start_micro_batch(pinned, first, earlier)


def family_run(run: Run) -> policy.FamilyRun:
    f = run.figures
    return policy.FamilyRun(
        outcome=run.outcome, micro_batch=run.micro_batch, micro_batch_end=run.micro_batch_end,
        scaled_down=bool(f.get("scaled_down")), oom_count=int(f.get("oom_count") or 0),
        peak_bytes=f.get("peak_memory_bytes"), budget_bytes=f.get("budget_bytes"),
    )


def resolve_device(setting: str) -> str:
    """The device "auto" will pick (MPS, then CUDA, then CPU), guessed without importing torch."""
    if setting != "auto":
        return setting
    if sys.platform == "darwin" and platform.machine() == "arm64":
        return "mps"
    if Path("/proc/driver/nvidia/version").exists() or shutil.which("nvidia-smi"):
        return "cuda"
    return "cpu"
