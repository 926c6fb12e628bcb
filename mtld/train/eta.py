"""The run's live ETA (`eta_s` in step.progress) and its planned padded tokens (run.started).

Two small objects with explicit inputs, built once per attempt by the trainer:

- `PlanTokens`: what the batch plan costs, from the plan and the tasks' token
  lengths alone: padded tokens of every planned step at a micro-batch size
  (worked out for a size the first time it is asked for: a run asks for its
  start size, then for each size it scales down to), and the real tokens of
  one evaluation.
- `LiveEta`: the plan's figures, the spec's evaluation and checkpoint cadence,
  the step this attempt started at and the family's runtime model (`prior`,
  mtld.decide.runtime.launch_prior over the plan this attempt has left; None
  without history). The trainer feeds it the position, the micro-batch and
  its step timings; it answers `eta_s`, and logs nothing (the trainer logs
  run.estimate from `prior` and `start_step`).

The arithmetic is mtld.decide.runtime's (pure); this module only gathers its
inputs. Torch-free.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from mtld.config.durations import checkpoint_interval
from mtld.config.sections import TrainSpec
from mtld.decide.runtime import PlanSummary, launch_prior, live_eta, run_record, same_kind, summarize
from mtld.runs.figures import Figures
from mtld.train.plan import Position, Step, padded_tokens
from mtld.train.timing import StepTimings, eta_seconds

TokenCounts = np.ndarray[Any, np.dtype[np.int64]]


class PlanTokens:
    """Token figures of a batch plan (epochs of steps) over tasks with these token lengths."""

    def __init__(self, plans: Sequence[Sequence[Step]], train_lengths: Sequence[np.ndarray],
                 eval_lengths: Sequence[np.ndarray | None]) -> None:
        self.plans, self.train_lengths, self.eval_lengths = plans, train_lengths, eval_lengths
        self.eval_tokens = sum(int(x.sum()) for x in eval_lengths if x is not None)  # real tokens of one evaluation
        self.total_steps = sum(len(p) for p in plans)
        self._per_step: dict[int, list[TokenCounts]] = {}

    @property
    def epochs(self) -> int:
        return len(self.plans)

    def per_step(self, micro_batch: int) -> list[TokenCounts]:
        """Per epoch, the padded tokens of each of its steps at this micro-batch, in plan order."""
        if micro_batch not in self._per_step:
            self._per_step[micro_batch] = [
                np.array([padded_tokens(s.ids, self.train_lengths[s.task], micro_batch) for s in plan], dtype=np.int64)
                for plan in self.plans
            ]
        return self._per_step[micro_batch]

    def total(self, micro_batch: int) -> int:
        return int(sum(int(t.sum()) for t in self.per_step(micro_batch)))

    def left(self, at: Position, micro_batch: int) -> int:
        """Padded tokens of the steps from `at` (the next step to take) to the end."""
        per_step = self.per_step(micro_batch)
        if at.epoch >= len(per_step):
            return 0
        return int(per_step[at.epoch][at.index:].sum()) + sum(int(t.sum()) for t in per_step[at.epoch + 1:])

    def plan_from(self, at: Position) -> list[Sequence[Step]]:
        """The part of the plan that is left at `at`, as epochs of steps."""
        if at.epoch >= self.epochs:
            return []
        return [self.plans[at.epoch][at.index:], *self.plans[at.epoch + 1:]]


def attempt_plan(tokens: PlanTokens, train: TrainSpec, *, start: Position) -> PlanSummary:
    """The plan left to this attempt from `start`, as the runtime model reads it."""
    return summarize(tokens.plan_from(start), tokens.train_lengths, tokens.eval_lengths, train, padded_tokens)


def attempt_prior(plan: PlanSummary, *, micro_batch: int, history: Sequence[Figures],
                  compiled: bool = False) -> dict[str, Any] | None:
    """The family's history (Launch.history) and the plan left to this attempt → the runtime model
    (mtld.decide.runtime.launch_prior over the runs that compiled as this attempt does; its `predicted_s`
    is this attempt's expected duration, from its start); {} when no earlier run has timings, None
    without history."""
    if not history:
        return None
    records = same_kind([r for r in map(run_record, history) if r is not None], compiled=compiled)
    return launch_prior(plan, records, micro_batch) or {}


class LiveEta:
    """Seconds left in an attempt: remaining steps × (a + b × padded tokens), plus evaluations and saves.

    With a prior for the size the run trains at, the prior's remaining time is
    scaled by this run's own pace so far (mtld.decide.runtime.live_eta);
    without one, the line fitted to this run's own steps at that size.
    """

    def __init__(self, tokens: PlanTokens, *, eval_every: int, checkpoint_steps: int | None, start_step: int = 0,
                 prior: Mapping[str, Any] | None = None, plan_left: PlanSummary | None = None) -> None:
        self.tokens = tokens
        self.plan_left = plan_left  # the plan from start_step on (mtld.decide.compile weighs its time)
        self.eval_every = eval_every  # 0: once per epoch
        self.checkpoint_steps = checkpoint_steps  # None: by time (counted at epoch ends only)
        self.start_step = start_step  # a resumed attempt starts at its checkpoint's step
        self.prior = prior

    @classmethod
    def for_attempt(cls, tokens: PlanTokens, train: TrainSpec, *, start: Position, micro_batch: int,
                    history: Sequence[Figures]) -> LiveEta:
        every_steps, _ = checkpoint_interval(train.checkpoint_every)
        plan = attempt_plan(tokens, train, start=start)
        prior = attempt_prior(plan, micro_batch=micro_batch, history=history)
        return cls(tokens, eval_every=train.eval_every, checkpoint_steps=every_steps, start_step=start.step, prior=prior,
                   plan_left=plan)

    def planned_padded_tokens(self, micro_batch: int) -> int:
        """Padded tokens of the whole plan at this micro-batch (run.started says it)."""
        return self.tokens.total(micro_batch)

    def eta_s(self, at: Position, micro_batch: int, timings: StepTimings) -> float | None:
        """Seconds left from `at` at this micro-batch, to 0.1 s; None before anything can be said."""
        if at.epoch >= self.tokens.epochs:
            return 0.0
        steps_left = self.tokens.total_steps - at.step
        tokens_left = self.tokens.left(at, micro_batch)
        observed = eta_seconds(timings.fit(micro_batch), steps_left, tokens_left)
        eta = self._blended(at, micro_batch, timings, steps_left, tokens_left, observed)
        return round(eta, 1) if eta is not None else None

    def _blended(self, at: Position, micro_batch: int, timings: StepTimings, steps_left: int, tokens_left: int,
                 observed: float | None) -> float | None:
        prior = self.prior or {}
        size = (prior.get("sizes") or {}).get(str(micro_batch))
        done = timings.sizes.get(micro_batch)
        if not size or done is None:
            return observed
        epochs_left = self.tokens.epochs - at.epoch
        evals_left = steps_left // self.eval_every if self.eval_every else epochs_left
        other = evals_left * self.tokens.eval_tokens * (prior.get("eval_s_per_token") or 0.0)
        by_steps = (steps_left - 1) // self.checkpoint_steps if self.checkpoint_steps else 0
        saves_left = by_steps + epochs_left  # checkpoints by step and at epoch ends but the last step, the export
        other += saves_left * (prior.get("save_s") or 0.0)
        a, b = float(size["a"]), float(size["b"])
        model_done = a * done.all.n + b * done.all.x + float(size.get("warmup_s", 0.0))
        return live_eta(model_left_s=a * steps_left + b * tokens_left, model_done_s=model_done,
                        elapsed_s=done.all.y, fraction_done=self.fraction_done(at), observed_left_s=observed,
                        other_left_s=other)

    def fraction_done(self, at: Position) -> float:
        """How much of this attempt's share of the plan is done (a resumed attempt starts at 0)."""
        return (at.step - self.start_step) / max(self.tokens.total_steps - self.start_step, 1)
