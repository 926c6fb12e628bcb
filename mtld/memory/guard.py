"""The run's memory guard: turns the sampler's latest sample into the step loop's advice.

`Advice` is declared here, once; mtld.train.guard (the step loop's seam)
imports it. `budget_bytes` and `guard_advice` are pure functions.
"""

from __future__ import annotations

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


class GuardDecision(NamedTuple):
    advice: Advice
    reason: str | None  # "pressure" or "budget" when the advice is not "ok"
    scaled_this_episode: bool  # carry into the next call


def guard_advice(level: Level, used_bytes: int | None, budget_bytes: int | None,
                 scaled_this_episode: bool) -> GuardDecision:
    """The memory guard's decision on one sample.

    Critical → interrupt (checkpoint and requeue). Warn, or the device's (CPU:
    the process's) memory over the budget → scale down, once per episode: an
    episode lasts while the level is warn or the use is over budget, and ends
    at the first sample that is normal and within budget. One halving per
    episode because PSI averages over 10 s and allocators keep what they
    reserved: the next samples still look troubled whatever the loop did, and
    asking again would take 8 to 2 in a second. Critical remains the backstop.
    """
    over_budget = used_bytes is not None and budget_bytes is not None and used_bytes > budget_bytes
    if level is Level.CRITICAL:
        return GuardDecision("interrupt", "pressure", scaled_this_episode)
    if level is Level.WARN or over_budget:
        if scaled_this_episode:
            return GuardDecision("ok", None, True)
        return GuardDecision("scale_down", "pressure" if level is Level.WARN else "budget", True)
    return GuardDecision("ok", None, False)


class MemoryGuard:
    """The step loop's guard (mtld.train.guard.Guard) over a sampler's latest sample.

    Critical → "interrupt"; warn or over budget → "scale_down" once per
    episode (see `guard_advice`). After a non-ok advice, `last_reason` is
    "pressure" or "budget" and `last_detail` the figures behind it, for the
    `batch.scaled_down` / `run.interrupted` events. No sample yet → "ok".
    """

    def __init__(self, sampler: Any, budget_bytes: int | None):
        self.sampler = sampler  # anything with a `latest: Sample | None`
        self.budget_bytes = budget_bytes
        self.scaled_this_episode = False
        self.step = 0
        self.last_reason: str | None = None
        self.last_detail: dict[str, Any] = {}

    def at_step(self, step: int) -> None:
        self.step = step

    def advice(self) -> Advice:
        sample: Sample | None = self.sampler.latest
        if sample is None:
            return "ok"
        used = sample.device.get("used_bytes")
        decision = guard_advice(sample.reading.level, used, self.budget_bytes, self.scaled_this_episode)
        self.scaled_this_episode = decision.scaled_this_episode
        if decision.advice != "ok":
            self.last_reason = decision.reason
            self.last_detail = {"pressure": sample.reading.level.value, "used_bytes": used,
                                "budget_bytes": self.budget_bytes, "step": self.step}
        return decision.advice
