"""The run's memory guard: turns the sampler's samples into the step loop's advice, with hysteresis.

`Advice` is declared here, once; mtld.train.guard (the step loop's seam)
imports it. `budget_bytes`, `used_bytes` and `guard_advice` are pure
functions; `guard_advice` takes the time of the sample, so a table of
(time, level, used) rows tests it without a clock.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal, NamedTuple

from mtld.memory.levels import Level
from mtld.memory.sampler import Sample

Advice = Literal["ok", "scale_down", "interrupt"]


def budget_bytes(*, device_type: str, device_total: int, cgroup_limit: int | None, fraction: float) -> int:
    """The memory a run may use: `fraction` of what the device can use.

    MPS: recommended_max_memory; CUDA: the device's memory; CPU: RAM, or the
    cgroup limit when lower. A cgroup limits host memory only, so it is
    ignored for CUDA and MPS.
    """
    usable = device_total
    if device_type == "cpu" and cgroup_limit is not None:
        usable = min(usable, cgroup_limit)
    return int(usable * fraction)


def used_bytes(device_type: str, *, footprint: int | None, device: int | None) -> int | None:
    """What the guard compares with the budget: the run's memory as the platform accounts it.

    CPU: the process's footprint (macOS: phys_footprint, the kernel's ledger
    that memory limits are checked against; Linux: the resident set). CUDA:
    the caching allocator's reserve (the budget is the card's memory). MPS:
    the larger of phys_footprint and the Metal driver's allocation, never
    their sum. torch.mps.driver_allocated_memory counts only GPU buffers
    (PyTorch's MPSAllocator.h: "total GPU memory allocated in the process by
    Metal driver"), while phys_footprint (XNU osfmk/kern/task.c, "Task
    ledgers") adds iokit_mapped and ledger-tagged graphics memory, which on
    arm64 Macs appears to include those very buffers (Chromium's
    docs/memory/graphics_metrics.md); adding the two would count them twice.
    """
    if device_type == "cuda":
        return device
    if device_type == "mps":
        known = [x for x in (footprint, device) if x is not None]
        return max(known) if known else None
    return footprint


# ------------------------------------------------------------------ hysteresis


@dataclass(frozen=True)
class Hysteresis:
    """How long trouble must last before the guard acts, and how long calm must last to end an episode."""

    dwell_s: float = 5.0  # trouble this long in an episode → halve; critical this long → interrupt
    quiet_s: float = 30.0  # normal this long ends an episode; also the least time between two halvings
    max_gap_s: float = 5.0  # a longer gap between samples (a machine asleep) counts as this much


@dataclass(frozen=True)
class GuardState:
    """What the guard remembers between samples. The default is calm (no episode)."""

    episode_since: float | None = None  # when the episode began (its first trouble sample); None: calm
    trouble_s: float = 0.0  # seconds of trouble in the episode (a normal sample does not reset it)
    critical_s: float = 0.0  # seconds of critical in the episode
    trouble_run_since: float | None = None  # the first sample of the current unbroken run of trouble
    normal_since: float | None = None  # the first sample of the current unbroken run of normal
    halved_at: float | None = None  # the episode's last halving
    last_at: float | None = None
    last_trouble: bool = False
    last_critical: bool = False


class GuardDecision(NamedTuple):
    advice: Advice
    reason: str | None  # "pressure" or "budget" when the advice is not "ok"
    state: GuardState  # carry into the next call


def guard_advice(state: GuardState, level: Level, used: int | None, budget: int | None, now: float,
                 rules: Hysteresis = Hysteresis()) -> GuardDecision:
    """The memory guard's decision on one sample taken at `now`.

    Trouble is warn, critical, or the run's memory over the budget. An
    episode begins at the first trouble sample and ends only when the level
    has been normal (and within budget) for `quiet_s`. Each sample's verdict
    holds until the next one (at most `max_gap_s`).

    - Critical → interrupt (checkpoint and requeue), once critical has lasted
      `dwell_s` within the episode: a spike shorter than that is not acted on.
    - The first halving of an episode needs `dwell_s` of trouble within it,
      normal samples in between included: warn flapping with normal at 1 Hz
      halves once, not at every flip.
    - A further halving needs trouble without a break for `dwell_s`, counted
      from `quiet_s` after the previous halving: so a sustained warn halves
      once per dwell + quiet, and flapping never twice. Quiet first, because
      PSI averages over 10 s and allocators keep what they reserved: right
      after a halving the figures still look troubled, whatever the loop did.

    Whether a halving is possible (the size is already 2) is the loop's
    business: it ignores the advice there.
    """
    over_budget = used is not None and budget is not None and used > budget
    critical = level is Level.CRITICAL
    trouble = critical or level is Level.WARN or over_budget
    if state.episode_since is None:
        if not trouble:
            return GuardDecision("ok", None, GuardState(last_at=now))
        state = GuardState(episode_since=now, trouble_run_since=now, last_at=now, last_trouble=True,
                           last_critical=critical)
    else:
        held = min(max(now - state.last_at, 0.0), rules.max_gap_s) if state.last_at is not None else 0.0
        if trouble:
            run_since, normal_since = (state.trouble_run_since if state.last_trouble else now), None
        else:
            run_since, normal_since = None, (state.normal_since if state.normal_since is not None else now)
        state = replace(
            state,
            trouble_s=state.trouble_s + (held if state.last_trouble else 0.0),
            critical_s=state.critical_s + (held if state.last_critical else 0.0),
            trouble_run_since=run_since, normal_since=normal_since,
            last_at=now, last_trouble=trouble, last_critical=critical,
        )
        if not trouble:
            if now - normal_since >= rules.quiet_s:
                return GuardDecision("ok", None, GuardState(last_at=now))  # the episode is over
            return GuardDecision("ok", None, state)
    reason = "pressure" if level >= Level.WARN else "budget"
    if critical and state.critical_s >= rules.dwell_s:
        return GuardDecision("interrupt", "pressure", state)
    if state.halved_at is None:
        due = state.trouble_s >= rules.dwell_s
    else:
        due = now - max(state.trouble_run_since, state.halved_at + rules.quiet_s) >= rules.dwell_s
    if due:
        return GuardDecision("scale_down", reason, replace(state, halved_at=now))
    return GuardDecision("ok", None, state)


class MemoryGuard:
    """The step loop's guard (mtld.train.guard.Guard) over a sampler's latest sample.

    Each new sample is decided once, at its own time (`guard_advice`):
    "scale_down" is given once, "interrupt" until the next sample. After a
    non-ok advice, `last_reason` is "pressure" or "budget" and `last_detail`
    the figures behind it, for the `batch.scaled_down` / `run.interrupted`
    events. No sample yet → "ok". Between samples the loop pays one identity
    check per micro-step.
    """

    def __init__(self, sampler: Any, budget_bytes: int | None, rules: Hysteresis = Hysteresis()):
        self.sampler = sampler  # anything with a `latest: Sample | None`
        self.budget_bytes = budget_bytes
        self.rules = rules
        self.state = GuardState()
        self.step = 0
        self.last_reason: str | None = None
        self.last_detail: dict[str, Any] = {}
        self._seen: Sample | None = None
        self._pending: Advice = "ok"

    def at_step(self, step: int) -> None:
        self.step = step

    def advice(self) -> Advice:
        sample: Sample | None = self.sampler.latest
        if sample is not self._seen and sample is not None:
            self._seen = sample
            used = sample.device.get("used_bytes")
            decision = guard_advice(self.state, sample.reading.level, used, self.budget_bytes, sample.at, self.rules)
            self.state, self._pending = decision.state, decision.advice
            if decision.advice != "ok":
                self.last_reason = decision.reason
                self.last_detail = {"pressure": sample.reading.level.value, "used_bytes": used,
                                    "budget_bytes": self.budget_bytes, "step": self.step}
        advice = self._pending
        if advice == "scale_down":
            self._pending = "ok"
        return advice
