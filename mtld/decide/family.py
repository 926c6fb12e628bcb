"""A job's family and the size its next attempt starts at: the one place that decides it.

The daemon (`start_size` before each run), `mtld status` (`planned_size` for
the queue's forecast), `mtld estimate` and `mtld doctor` all call these, so
what they show is what the daemon will do. Light to import: no scheduler, no
torch. The rules themselves are pure functions in mtld.decide.policy.
"""

from __future__ import annotations

import platform
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mtld.decide import policy
from mtld.config.jobspec import JobSpec
from mtld.memory import Reading
from mtld.decide.precision import precision_for
from mtld.runs.files import Figures
from mtld.config.settings import Settings
from mtld.store import Job, Run, Store


def family(spec: JobSpec, device: str, precision: str | None = None) -> str:
    """Runs of one family share memory and speed figures: (model, max length, device, precision).

    `precision`: what the job trains in (mtld.decide.precision), by default resolved for this machine. fp32
    ("off") keeps the key of old, three-part families, so their history counts as fp32 (runs stored
    before precision was part of the key with mixed_precision = true are counted as fp32 too).
    """
    if precision is None:
        precision = precision_for(spec.train.mixed_precision, device)[0]
    key = f"{spec.model}|{spec.max_length}|{device}"
    return key if precision == "off" else f"{key}|{precision}"


def family_history(store: Store | None, fam: str) -> list[policy.FamilyRun]:
    """The family's finished runs, oldest first, as the policy reads them."""
    return [family_run(r) for r in store.family_runs(fam)] if store is not None else []


def family_run(run: Run) -> policy.FamilyRun:
    f = Figures.model_validate(run.figures)
    return policy.FamilyRun(
        outcome=run.outcome, micro_batch=run.micro_batch, micro_batch_end=run.micro_batch_end,
        scaled_down=f.scaled_down, oom_count=f.oom_count, peak_bytes=f.peak_memory_bytes, budget_bytes=f.budget_bytes,
    )


def pinned_size(batch_size: str | int) -> int | None:
    """A job's batch_size ("auto", or a size as the store or the spec spells it) as a pinned size."""
    return None if batch_size == "auto" else int(batch_size)


def earlier_runs(store: Store, job: Job) -> list[policy.EarlierRun]:
    return [policy.EarlierRun(r.outcome, r.micro_batch, r.micro_batch_end, pressure_interrupt(r))
            for r in store.runs_for(job.id)]


def pressure_interrupt(run: Run) -> bool:
    """The run checkpointed and stopped itself because memory pressure stayed critical."""
    return run.outcome == "interrupted" and run.figures.get("stop_reason") == "memory_critical"


def planned_size(settings: Settings, history: Sequence[policy.FamilyRun], *, pinned: int | None,
                 earlier: Sequence[policy.EarlierRun] = ()) -> tuple[int, str]:
    """(micro-batch, reason) the next attempt starts at before the memory check: pinned, the family's
    decision for a first attempt, or where the job's previous attempt left off."""
    first = policy.family_start_size(history, settings.train.start_batch_size, settings.memory.headroom)
    return policy.start_micro_batch(pinned, first, earlier)


@dataclass(frozen=True)
class Start:
    """What the next attempt starts at now; micro_batch None: not now (deferred says why, briefly)."""

    micro_batch: int | None
    reason: str
    deferred: str | None = None


def start_size(settings: Settings, history: Sequence[policy.FamilyRun], *, pinned: int | None,
               earlier: Sequence[policy.EarlierRun] = (), reading: Reading | None,
               calm_for_s: float | None = None) -> Start:
    """The planned size, then the memory check against the pressure and the free memory now
    (`fit_bytes`: on macOS the kernel's figure, not psutil's). After a pressure interrupt the
    level must have been normal for `memory.resume_calm_s` (`calm_for_s`: for how long it has);
    an unreadable level never holds the queue."""
    size, why = planned_size(settings, history, pinned=pinned, earlier=earlier)
    settle = reading is not None and bool(earlier) and earlier[-1].pressure
    placement = policy.place_run(
        size, pressure=reading.level.value if reading else "normal",
        available_bytes=reading.fit_bytes if reading else None,
        peaks=policy.peaks_by_size(history), pinned=pinned is not None,
        calm_for_s=calm_for_s, calm_needed_s=settings.memory.resume_calm_s if settle else 0.0,
    )
    if placement.micro_batch is None:
        return Start(None, placement.reason, placement.deferred)
    return Start(placement.micro_batch, f"{why}; {placement.reason}" if placement.reason else why)


def run_device(settings: Settings) -> str:
    """The device the next run trains on: this machine's guess, or on a Ray cluster the workers' device
    (`executor.ray.device`; "auto": CUDA when each run asks for a GPU, else CPU). The family key and the
    start size use it, so a cluster's history never mixes with this machine's."""
    if settings.executor.kind != "ray":
        return resolve_device(settings.train.device)
    ray = settings.executor.ray
    if ray.device != "auto":
        return ray.device
    return "cuda" if ray.num_gpus > 0 else "cpu"


def resolve_device(setting: str) -> str:
    """The device "auto" will pick (MPS, then CUDA, then CPU), guessed without importing torch."""
    if setting != "auto":
        return setting
    if sys.platform == "darwin" and platform.machine() == "arm64":
        return "mps"
    if Path("/proc/driver/nvidia/version").exists() or shutil.which("nvidia-smi"):
        return "cuda"
    return "cpu"
