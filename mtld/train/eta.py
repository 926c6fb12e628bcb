"""The run's live ETA and its planned tokens: what `step.progress` and `run.estimate` say.

A mixin of mtld.train.loop.Trainer (split out to keep each module readable):
it reads the trainer's plan (`plans`, `tasks`, `spec`, `position`,
`attempt_start`, `total_steps`), its `runner`, `timings`, `model` (the
family's runtime model, built once in `run`), `every_steps` and `log`. The
arithmetic itself is mtld.decide.runtime's (pure).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from mtld.runs.files import Figures
from mtld.train.plan import padded_tokens
from mtld.train.timing import eta_seconds


class LiveEta:
    def eta_s(self) -> float | None:
        """Remaining steps × (a + b × padded tokens), fitted on this run's steps at this micro-batch."""
        b = self.runner.micro_batch
        per_step = self.step_tokens(b)
        epoch, index = self.position.epoch, self.position.index
        if epoch >= len(self.plans):
            return 0.0
        tokens_left = int(per_step[epoch][index:].sum()) + sum(int(t.sum()) for t in per_step[epoch + 1 :])
        steps_left = self.total_steps - self.position.step
        observed = eta_seconds(self.timings.fit(b), steps_left, tokens_left)
        eta = self.blended_eta(b, steps_left, tokens_left, observed)
        return round(eta, 1) if eta is not None else None

    def blended_eta(self, b: int, steps_left: int, tokens_left: int, observed: float | None) -> float | None:
        """The family's model (built in `run`) scaled by this run's pace: mtld.decide.runtime.live_eta."""
        from mtld.decide.runtime import live_eta

        size = (self.model.get("sizes") or {}).get(str(b))
        done = self.timings.sizes.get(b)
        if not size or done is None:
            return observed
        evals_left = (steps_left // self.spec.eval_every) if self.spec.eval_every else (len(self.plans) - self.position.epoch)
        other = evals_left * self.eval_tokens() * (self.model.get("eval_s_per_token") or 0.0)
        by_steps = steps_left // self.every_steps if self.every_steps else 0  # by time: epoch ends only
        saves_left = by_steps + (len(self.plans) - self.position.epoch) + 1
        other += saves_left * (self.model.get("save_s") or 0.0)
        model_done = size["a"] * done.all.n + size["b"] * done.all.x + size.get("warmup_s", 0.0)
        return live_eta(model_left_s=size["a"] * steps_left + size["b"] * tokens_left, model_done_s=model_done,
                        elapsed_s=done.all.y, fraction_done=self.attempt_fraction(),
                        observed_left_s=observed, other_left_s=other)

    def attempt_fraction(self) -> float:
        """How much of this attempt's share of the plan is done (a resumed attempt starts at 0)."""
        start = self.attempt_start.step
        return (self.position.step - start) / max(self.total_steps - start, 1)

    def prior_from_history(self, history: Sequence[Figures]) -> dict[str, Any]:
        """The family's history (from the daemon) and the plan left to this attempt → the runtime model;
        logged once, as run.estimate: predicted_s is this attempt's expected duration (from_step on)."""
        from mtld.decide.runtime import launch_prior, run_record, summarize

        records = [r for r in map(run_record, history) if r is not None]
        start = self.attempt_start
        left = [self.plans[start.epoch][start.index:], *self.plans[start.epoch + 1:]] if start.epoch < len(self.plans) else []
        plan = summarize(left, [t.train.lengths for t in self.tasks],
                         [t.eval.lengths if t.eval is not None else None for t in self.tasks], self.spec, padded_tokens)
        prior = launch_prior(plan, records, self.runner.micro_batch) or {}
        self.log.info("run.estimate", predicted_s=round(prior["predicted_s"], 1) if prior.get("predicted_s") else None,
                      basis=prior.get("basis", "unknown"), micro_batch=self.runner.micro_batch, from_step=start.step)
        return prior

    def eval_tokens(self) -> int:
        """Real tokens of one evaluation over every task's eval split."""
        return sum(int(t.eval.lengths.sum()) for t in self.tasks if t.eval is not None)

    def step_tokens(self, micro_batch: int) -> list[np.ndarray]:
        if micro_batch not in self._tokens_cache:
            self._tokens_cache[micro_batch] = [
                np.array([padded_tokens(s.ids, self.tasks[s.task].train.lengths, micro_batch) for s in plan], dtype=np.int64)
                for plan in self.plans
            ]
        return self._tokens_cache[micro_batch]

    def planned_padded_tokens(self) -> int:
        return int(sum(t.sum() for t in self.step_tokens(self.runner.micro_batch)))
