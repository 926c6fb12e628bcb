"""Step timings: the seam for the runtime model (time per step ≈ a + b × padded tokens).

Per optimizer step the loop knows the padded tokens it pushed through the
encoder and the seconds between step boundaries (time.perf_counter, no device
sync: exact on CPU; on CUDA/MPS a single step's figure is skewed by the
asynchronous queue, but the sums over many steps are right because every
progress event syncs). Only running sums are kept, per micro-batch size, which
is enough for a least-squares fit and costs nothing per step.

Warm-up: the first `WARMUP_STEPS` steps at a size in an attempt (a new size
means new shapes: allocator growth, kernel selection, MPS graph builds) are
counted in the totals but also summed apart under "warmup", so the fit in
`mtld.decide.runtime` can leave them out and add their measured extra cost once.
Evaluation and saves (checkpoints, exports) are summed per size too: the
runtime model adds them to the steps' time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mtld.decide.runtime import Sums, fit_line

WARMUP_STEPS = 3


@dataclass
class SizeTimings:
    all: Sums = Sums()
    warmup: Sums = Sums()  # the first steps at this size: new shapes (also counted in `all`)
    eval_count: int = 0
    eval_seconds: float = 0.0
    eval_tokens: int = 0  # real tokens of the evaluated examples
    save_count: int = 0
    save_seconds: float = 0.0


class StepTimings:
    def __init__(self, warmup_steps: int = WARMUP_STEPS) -> None:
        self.sizes: dict[int, SizeTimings] = {}
        self.warmup_steps = warmup_steps
        self.current: int | None = None

    def _size(self, micro_batch: int) -> SizeTimings:
        self.current = micro_batch
        return self.sizes.setdefault(micro_batch, SizeTimings())

    def record(self, micro_batch: int, padded_tokens: int, seconds: float) -> None:
        size = self._size(micro_batch)
        if size.all.n < self.warmup_steps:
            size.warmup = size.warmup.plus(padded_tokens, seconds)
        size.all = size.all.plus(padded_tokens, seconds)

    def record_eval(self, micro_batch: int, tokens: int, seconds: float) -> None:
        size = self._size(micro_batch)
        size.eval_count += 1
        size.eval_seconds += seconds
        size.eval_tokens += tokens

    def record_save(self, seconds: float) -> None:
        """A checkpoint or an export, counted at the size of the last step."""
        if self.current is None:
            return
        size = self.sizes[self.current]
        size.save_count += 1
        size.save_seconds += seconds

    def fit(self, micro_batch: int) -> tuple[float, float] | None:
        size = self.sizes.get(micro_batch)
        if size is None:
            return None
        steady = size.all - size.warmup
        return fit_line(steady if steady.n >= 3 else size.all)

    def as_dict(self) -> dict[str, dict[str, Any]]:
        out = {}
        for b, size in sorted(self.sizes.items()):
            fit = self.fit(b)
            out[str(b)] = {
                **size.all.to_timing(),
                "step_overhead_s": round(fit[0], 6) if fit else None,
                "s_per_padded_token": fit[1] if fit else None,
                "warmup": size.warmup.to_timing(),
                "eval": {"count": size.eval_count, "seconds": round(size.eval_seconds, 6), "tokens": size.eval_tokens},
                "saves": {"count": size.save_count, "seconds": round(size.save_seconds, 6)},
            }
        return out


def eta_seconds(fit: tuple[float, float] | None, steps_left: int, tokens_left: int) -> float | None:
    if fit is None:
        return None
    return fit[0] * steps_left + fit[1] * tokens_left
