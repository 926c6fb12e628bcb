"""A job's family and the size its next attempt starts at: the one place that decides it.

The daemon (`start_size` before each run), `mtld status` (`planned_size` for
the queue's forecast), `mtld train`, `mtld estimate` and `mtld doctor` all call
these, so what they show is what the daemon will do. Pure: the family's
history, the job's earlier attempts and the memory reading come in as records
(mtld.estimate.history reads them); the rules are mtld.decide.policy's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mtld.decide import policy

if TYPE_CHECKING:
    from mtld.config.jobspec import JobSpec
    from mtld.config.settings import Settings
    from mtld.memory.levels import Reading


def family(spec: JobSpec, device: str, precision: str) -> str:
    """Runs of one family share memory and speed figures: (model, max length, device, precision).

    `precision`: what the job trains in there (mtld.decide.precision). fp32 ("off") keeps the key of old,
    three-part families, so their history counts as fp32 (runs stored before precision was part of the
    key with mixed_precision = true are counted as fp32 too).
    """
    key = f"{spec.model}|{spec.max_length}|{device}"
    return key if precision == "off" else f"{key}|{precision}"


def in_precision(key: str, precision: str) -> str:
    """The same family in another precision (a run whose autocast check fell back to fp32 belongs there)."""
    base = next((key.removesuffix(s) for s in ("|bf16", "|fp16") if key.endswith(s)), key)  # a model may hold "|"
    return base if precision == "off" else f"{base}|{precision}"


def pinned_size(batch_size: str | int) -> int | None:
    """A job's batch_size ("auto", or a size as the store or the spec spells it) as a pinned size."""
    return None if batch_size == "auto" else int(batch_size)


def planned_size(settings: Settings, history: Sequence[policy.FamilyRun], *, pinned: int | None,
                 effective_batch: int, earlier: Sequence[policy.EarlierRun] = ()) -> tuple[int, str]:
    """(micro-batch, reason) the next attempt starts at before the memory check: pinned, the family's
    decision for a first attempt, or where the job's previous attempt left off; never above what one
    optimizer step of the job sees (policy.fit_effective_batch)."""
    first = policy.family_start_size(history, settings.train.start_batch_size, settings.memory.headroom)
    size, why = policy.start_micro_batch(pinned, first, earlier)
    fitted = policy.fit_effective_batch(size, effective_batch)
    if fitted != size:
        why = f"{why}; {fitted}: the job's effective batch is {effective_batch}"
    return fitted, why


@dataclass(frozen=True)
class Start:
    """What the next attempt starts at now; micro_batch None: not now (deferred says why, briefly)."""

    micro_batch: int | None
    reason: str
    deferred: str | None = None


def start_size(settings: Settings, history: Sequence[policy.FamilyRun], *, pinned: int | None,
               effective_batch: int, earlier: Sequence[policy.EarlierRun] = (), reading: Reading | None,
               calm_for_s: float | None = None) -> Start:
    """The planned size, then the memory check against the pressure and the free memory now
    (`fit_bytes`: on macOS free + speculative + inactive pages, capped at the kernel's warn point:
    mtld.memory.macos.mac_fit). After a pressure interrupt the
    level must have been normal for `memory.resume_calm_s` (`calm_for_s`: for how long it has);
    an unreadable level never holds the queue. A remote run (`reading` None) is not checked here:
    the run's own guard watches the memory where it trains."""
    size, why = planned_size(settings, history, pinned=pinned, effective_batch=effective_batch, earlier=earlier)
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
