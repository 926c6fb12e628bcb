"""Pure decisions: records and numbers in, a decision out. No clock, no OS, no torch.

- `after_exit`: what a run's exit means for its job (done, retry when, fail why); `settle`: the same
  for a job whose run ended while its own move went unrecorded.
- `pressure_hold`: after memory-pressure interrupts, whether a job is held instead of requeued.
- `start_micro_batch`: the micro-batch the next attempt of a job starts at;
  `fit_effective_batch`: never more than one optimizer step holds.
- `place_run`: before a run, the pressure and free memory now (defer, step down).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from mtld import MICRO_BATCH_SIZES
from mtld.runs import exitcodes

# Outcomes that count against a job's attempts. Interruptions (checkpointed on
# request) and lost runs are not the job's fault (lost runs have a limit of their own: `lost`).
FAILED_OUTCOMES = frozenset({"out_of_memory", "killed", "crashed"})
SIGKILL = 9


@dataclass(frozen=True)
class ExitDecision:
    outcome: str  # recorded on the run: succeeded, interrupted, out_of_memory, disk_full, bad_input, killed, crashed,
    #               lost, cancelled, cannot_run, superseded, stalled
    job_state: str  # where the job goes: succeeded, queued, failed, cancelled
    reason: str  # said in the log, the store and `mtld show`
    retry_at: float | None = None  # a backed-off retry starts no earlier than this
    hold: str | None = None  # the job waits in the queue until this condition is gone (or `mtld retry` releases it)


def after_exit(
    *,
    exit_code: int | None,
    signal: int | None,
    earlier_failures: int,
    max_attempts: int,
    backoff_s: float,
    cancel_requested: bool,
    stop_reason: str | None,
    message: str | None,
    now: float,
    gpu_failure: str | None = None,
    detail: str | None = None,
    cannot_run: str | None = None,
    lost_in_a_row: int = 0,
    max_lost: int = 5,
    lost_backoff_s: float = 30.0,
) -> ExitDecision:
    """Classify a finished run.

    `earlier_failures` counts this job's earlier runs whose outcome is in
    FAILED_OUTCOMES; `stop_reason` is why the daemon asked the child to stop
    (cancel, pause, shutdown, stalled), if it did; `gpu_failure`: a line of the
    child's output that says the GPU failed a command buffer (`gpu_failure`);
    `message`: the run's own words (its result.json); `detail`: the executor's
    (the cluster's message), which says why a run that left no result ended;
    `cannot_run`: the executor found the run can never start as asked (a
    resource no node has). `lost_in_a_row`: the job's runs lost one after the
    other just before this one; a lost run waits `lost_backoff_s`, doubled each
    time, and the `max_lost`-th in a row fails the job: a run that can never
    start is not resubmitted forever.
    """
    settled = _finished_or_cancelled(exit_code == exitcodes.OK, cancel_requested)
    if settled is not None:
        return settled
    if cannot_run is not None:  # no retry can help until the cluster or the settings change
        return ExitDecision("cannot_run", "failed", cannot_run)
    if exit_code == exitcodes.SUPERSEDED:  # a newer attempt owns the folder: it is the job's run now
        return ExitDecision("superseded", "queued", "a newer attempt owns the run folder: this one stopped "
                            "without writing anything")
    if gpu_failure is not None:  # raised nothing, or hung: a smaller micro-batch asks less of the device
        failures = earlier_failures + 1
        what = f"the GPU failed a command buffer ({gpu_failure})"
        if failures >= max_attempts:
            return ExitDecision("out_of_memory", "failed", f"{what}; gave up after {failures} attempts")
        return ExitDecision("out_of_memory", "queued", f"{what}; retrying one micro-batch size down", retry_at=now)
    if stop_reason == "stalled":  # stopped by the watchdog; whether it still checkpointed does not matter
        return ExitDecision("stalled", "queued", f"{message or 'no progress within its allowance'}: stopped; "
                            "retrying one micro-batch size down", retry_at=now)
    if exit_code == exitcodes.INTERRUPTED:
        why = stop_reason or (message or "the run stopped itself")
        return ExitDecision("interrupted", "queued", f"interrupted with a checkpoint: {why}; it resumes")
    if exit_code == exitcodes.BAD_INPUT:
        return ExitDecision("bad_input", "failed", f"bad input: {message or 'see the run log'}")
    if exit_code == exitcodes.DISK_FULL:  # not the job's fault, and retrying before space is freed cannot help
        hold = message or "disk full: see the run log"
        return ExitDecision("disk_full", "queued", f"stopped for lack of disk space ({hold}); on hold until "
                            "there is room (mtld retry, or the daemon once it sees enough free space)", hold=hold)
    if exit_code == exitcodes.NOT_VISIBLE:  # the executor's set-up, not the job: retrying cannot help
        return ExitDecision("bad_input", "failed", "the run folder is not visible or not writable where the run "
                            f"started{f' ({message or detail})' if message or detail else ''}: the executor's run "
                            "folder must be one every machine that runs it sees and can write at the same path "
                            "(mtld doctor checks it)")
    if exit_code is None and signal is None:  # it left no result.json and no status: it resumes, up to a limit
        return lost(detail or message or "the run ended while no daemon was watching", lost_in_a_row + 1,
                    max_lost=max_lost, backoff_s=lost_backoff_s, now=now)

    if exit_code == exitcodes.OUT_OF_MEMORY:
        outcome, what = "out_of_memory", "out of memory even at micro-batch 2"
    elif signal == SIGKILL:
        outcome, what = "killed", "killed by signal 9 (the usual mark of the out-of-memory killer)"
    elif signal is not None:
        outcome, what = "crashed", f"killed by signal {signal}"
    else:
        words = message or detail
        outcome, what = "crashed", f"exited with status {exit_code}" + (f" ({words})" if words else "")
    failures = earlier_failures + 1
    if failures >= max_attempts:
        return ExitDecision(outcome, "failed", f"{what}; gave up after {failures} attempts")
    if outcome == "killed":  # a smaller micro-batch may well fit: no need to wait
        return ExitDecision(outcome, "queued", f"{what}; retrying one micro-batch size down", retry_at=now)
    delay = backoff_s * 2 ** (failures - 1)
    return ExitDecision(outcome, "queued", f"{what}; retrying in {delay:.0f} s", retry_at=now + delay)


def lost(why: str, in_a_row: int, *, max_lost: int, backoff_s: float, now: float) -> ExitDecision:
    """A run that ended with no status and no result (its node died, the cluster forgot it, no daemon was
    watching): `why` as the executor or the daemon saw it. It resumes from its checkpoint after
    `backoff_s` × 2^(n-1) for the n-th loss in a row; the `max_lost`-th fails the job."""
    if in_a_row >= max_lost:
        return ExitDecision("lost", "failed", f"{why}; lost {in_a_row} times in a row: gave up "
                            "(daemon.max_lost; `mtld retry` to try again)")
    delay = backoff_s * 2 ** (in_a_row - 1)
    return ExitDecision("lost", "queued", f"{why}; it resumes from its last checkpoint in {delay:.0f} s "
                        f"(lost {in_a_row} of at most {max_lost} times in a row)", retry_at=now + delay)


def settle(*, last_outcome: str | None, cancel_requested: bool) -> ExitDecision:
    """A job marked running whose last run was recorded as ended but whose own move was not (the store went
    out between the two): the same order as `after_exit`: done, then cancelled, else back in the queue."""
    settled = _finished_or_cancelled(last_outcome == "succeeded", cancel_requested)
    return settled or ExitDecision(last_outcome or "lost", "queued", "recovered with no live run")


def _finished_or_cancelled(succeeded: bool, cancel_requested: bool) -> ExitDecision | None:
    """First things first: a run that finished has finished, even when a cancel came too late."""
    if succeeded:
        return ExitDecision("succeeded", "succeeded", "the run finished")
    if cancel_requested:
        return ExitDecision("cancelled", "cancelled", "cancelled by the user")
    return None


def pressure_hold(interrupted_at: Sequence[float], *, now: float, limit: int, window_s: float,
                  job_id: int) -> str | None:
    """After a memory-pressure interrupt: the hold to put the job on, or None to requeue it as usual.

    `interrupted_at` are the times of the job's pressure interrupts (this one
    included) since it was last released. `limit` of them within `window_s`
    → hold: a job that keeps being interrupted is not restarted in a loop.
    """
    recent = sorted(t for t in interrupted_at if now - t <= window_s)
    if len(recent) < limit:
        return None
    minutes = max(1, round((now - recent[0]) / 60))
    return f"memory pressure: {len(recent)} interrupts in {minutes} min — `mtld retry {job_id}` to release"


# What MetalPerformanceShaders prints when a command buffer it committed fails: PyTorch's MPS backend raises
# nothing for it and the step goes on with garbage, NaN or a hang (pytorch/pytorch#123171, #125954). The
# reason is Apple's MTLCommandBufferError: "Insufficient Memory (00000008:kIOGPUCommandBufferCallbackError
# OutOfMemory)" for MTLCommandBufferErrorOutOfMemory, "Internal Error (0000000e...)" for a GPU fault.
GPU_FAILURE = "command buffer exited with error status"
GPU_REASONS = ("Insufficient Memory", "kIOGPUCommandBufferCallbackErrorOutOfMemory", "Internal Error",
               "kIOAccelCommandBufferCallbackErrorSubmissionsIgnored")


def gpu_failure(output: str) -> str | None:
    """The reason a failed Metal command buffer gave, from the end of a run child's output; None when it
    shows none. The first reason after the newest failure line, else the failure line itself."""
    at = output.rfind(GPU_FAILURE)
    if at < 0:
        return None
    after = output[at:at + 2000]
    found = [(after.find(r), r) for r in GPU_REASONS if r in after]
    if not found:
        return GPU_FAILURE
    start = min(found)[0]
    line = after[start:].splitlines()[0].strip()
    return line[:200]


@dataclass(frozen=True)
class EarlierRun:
    """What the next attempt needs to know about the job's previous run."""

    outcome: str | None
    micro_batch: int
    micro_batch_end: int | None
    pressure: bool = False  # it interrupted itself for memory pressure


def one_size_down(size: int) -> int:
    smaller = [s for s in MICRO_BATCH_SIZES if s < size]
    return smaller[-1] if smaller else MICRO_BATCH_SIZES[0]


def fit_effective_batch(size: int, effective_batch: int) -> int:
    """The largest micro-batch up to `size` that one optimizer step can hold (an effective batch of 4 trains
    at 4, not 8); the smallest size when even that is larger (accumulation then takes one micro-batch)."""
    fitting = [s for s in MICRO_BATCH_SIZES if s <= size and s <= effective_batch]
    return max(fitting) if fitting else MICRO_BATCH_SIZES[0]


def start_micro_batch(pinned: int | None, first: tuple[int, str], earlier: Sequence[EarlierRun]) -> tuple[int, str]:
    """(micro-batch, reason) for the next attempt of one job.

    A pinned size (job file or --batch-size) always wins. A first attempt
    takes `first` (the family's decision). A later attempt continues from where
    the previous one left off: the size that worked, one size down after an
    out-of-memory kill or a memory-pressure interrupt.
    """
    if pinned is not None:
        return pinned, "pinned by the job (adaptation off)"
    if not earlier or earlier[-1].outcome is None:
        return first
    last = earlier[-1]
    worked = last.micro_batch_end or last.micro_batch
    if last.outcome in ("killed", "stalled", "out_of_memory"):
        how = {"killed": "was killed", "stalled": "stalled", "out_of_memory": "ran out of memory"}[last.outcome]
        return one_size_down(worked), f"the last attempt {how} at {worked}: one size down"
    if last.outcome == "interrupted" and last.pressure:
        return one_size_down(worked), f"the last attempt was interrupted by memory pressure at {worked}: one size down"
    return worked, f"the size the last attempt ended at ({last.outcome})"


# ------------------------------------------------------------------ the micro-batch across runs


@dataclass(frozen=True)
class FamilyRun:
    """One finished run of a family (model, max length, device), as the store keeps it."""

    outcome: str | None
    micro_batch: int  # the size it started at
    micro_batch_end: int | None  # the size it ended at (smaller after a scale-down)
    scaled_down: bool
    oom_count: int
    peak_bytes: int | None
    budget_bytes: int | None


def one_size_up(size: int) -> int:
    larger = [s for s in MICRO_BATCH_SIZES if s > size]
    return larger[0] if larger else MICRO_BATCH_SIZES[-1]


def family_start_size(history: Sequence[FamilyRun], default: int, headroom: float) -> tuple[int, str]:
    """Where the first attempt of a new job starts, from the family's last run.

    A clean run whose peak stayed under `headroom` × budget → one size up; any
    scale-down or out-of-memory → the size that worked; no history → `default`.
    """
    if not history:
        return default, f"no earlier run of this family: the configured start size {default}"
    last = history[-1]
    worked = last.micro_batch_end or last.micro_batch
    if last.outcome == "out_of_memory":
        return MICRO_BATCH_SIZES[0], "the last run of this family ran out of memory even at 2"
    if last.outcome in ("killed", "stalled"):
        how = "was killed" if last.outcome == "killed" else "stalled"
        return one_size_down(worked), f"the last run of this family {how} at {worked}: one size down"
    if last.scaled_down or last.oom_count:
        return worked, f"the last run of this family scaled down to {worked}: start there"
    if last.outcome != "succeeded" or not last.peak_bytes or not last.budget_bytes:
        return worked, f"the last run of this family ({last.outcome}) gives no headroom figure: stay at {worked}"
    share = last.peak_bytes / last.budget_bytes
    if share < headroom and worked < MICRO_BATCH_SIZES[-1]:
        return one_size_up(worked), (f"the last run at {worked} peaked at {share:.0%} of the budget "
                                     f"(under the {headroom:.0%} headroom): one size up")
    return worked, f"the last run at {worked} peaked at {share:.0%} of the budget: stay"


def peaks_by_size(history: Sequence[FamilyRun]) -> dict[int, int]:
    """The highest peak seen at each micro-batch size (runs that ended at that size)."""
    peaks: dict[int, int] = {}
    for run in history:
        size = run.micro_batch_end or run.micro_batch
        if run.peak_bytes:
            peaks[size] = max(peaks.get(size, 0), run.peak_bytes)
    return peaks


@dataclass(frozen=True)
class Placement:
    micro_batch: int | None  # None: do not start now
    reason: str
    deferred: str | None = None  # a short code when deferred: memory_critical, does_not_fit


def place_run(size: int, *, pressure: str, available_bytes: int | None, peaks: dict[int, int], pinned: bool,
              calm_for_s: float | None = None, calm_needed_s: float = 0.0) -> Placement:
    """Before a run: critical → defer; after a pressure interrupt, not normal for
    `calm_needed_s` yet (`calm_for_s`: how long it has been normal, None: not
    now) → defer; warn → one size down; a size whose peak exceeds what is
    available now → step down until one fits, else defer. A pinned size is
    never changed, only deferred."""
    if pressure == "critical":
        return Placement(None, "memory pressure is critical", "memory_critical")
    if calm_needed_s > 0 and (calm_for_s or 0.0) < calm_needed_s:
        return Placement(None, f"after a memory-pressure interrupt, waiting for the level to stay normal for "
                               f"{calm_needed_s:.0f} s (normal for {calm_for_s or 0.0:.0f} s now)", "memory_settling")
    reasons = []
    if pressure == "warn" and not pinned and size > MICRO_BATCH_SIZES[0]:
        reasons.append(f"memory pressure is warn: {size} → {one_size_down(size)}")
        size = one_size_down(size)
    if available_bytes is not None:
        while peaks.get(size, 0) > available_bytes:
            if pinned or size == MICRO_BATCH_SIZES[0]:
                return Placement(None, f"micro-batch {size} peaked at {peaks[size]:,} bytes; only "
                                       f"{available_bytes:,} are available now", "does_not_fit")
            reasons.append(f"{size} peaked at {peaks[size]:,} bytes > {available_bytes:,} available: "
                           f"{one_size_down(size)}")
            size = one_size_down(size)
    return Placement(size, "; ".join(reasons))


# ------------------------------------------------------------------ runs that stop making progress


@dataclass(frozen=True)
class Allowance:
    """How long a run may go without a sign of life (a step, an evaluation's end, a checkpoint) before the
    watchdog stops it, by what it is doing."""

    training_s: float  # between two signs of life while it trains
    starting_s: float  # from its start to its first step (loading, tokenizing, the warm-up steps)
    evaluating_s: float  # one evaluation

    def of(self, phase: str) -> float:
        return {"starting": self.starting_s, "evaluating": self.evaluating_s}.get(phase, self.training_s)


def stall_allowance(*, floor_s: float, start_floor_s: float, step_factor: float, step_s: float | None,
                    startup_s: float | None, first_steps_s: float | None, eval_s: float | None,
                    margin: float = 3.0) -> Allowance:
    """The watchdog's allowances: training: the larger of `floor_s` and `step_factor` times the family's
    median step; evaluating: that, plus `margin` times one evaluation of the family's runs (the floor again
    where none was measured); starting: the larger of `start_floor_s` and the training allowance plus
    `margin` times the family's start and first steps."""
    training = max(floor_s, step_factor * step_s) if step_s else floor_s
    start = (startup_s or 0.0) + (first_steps_s or 0.0)
    return Allowance(training_s=training, starting_s=max(start_floor_s, training + margin * start),
                     evaluating_s=training + (margin * eval_s if eval_s else floor_s))


def stall_hold(stalled_in_a_row: int, *, limit: int, job_id: int) -> str | None:
    """After `stalled_in_a_row` attempts of a job stalled one after the other (this one included): the hold to
    put it on, or None to retry it (one size down). A run that hangs again and again is a fault to look at."""
    if stalled_in_a_row < limit:
        return None
    return (f"stalled {stalled_in_a_row} times in a row (no progress within its allowance) — look at the run log, "
            f"then `mtld retry {job_id}` to release")


def calm_since(previous: float | None, pressure: str | None, now: float) -> float | None:
    """Since when the pressure level has been normal without a break (None: it is not normal now).
    An unreadable level (None) leaves it as it was."""
    if pressure is None:
        return previous
    if pressure != "normal":
        return None
    return now if previous is None else previous
