"""Step timings: the seam for the runtime model (time per step ≈ a + b × padded tokens).

Per optimizer step the loop knows the padded tokens it pushed through the
encoder and the seconds between step boundaries (time.perf_counter, no device
sync: exact on CPU; on CUDA/MPS a single step's figure is skewed by the
asynchronous queue, but the sums over many steps are right because every
progress event syncs). Only running sums are kept, per micro-batch size, which
is enough for a least-squares fit and costs nothing per step.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Totals:
    steps: int = 0
    padded_tokens: int = 0
    seconds: float = 0.0
    tokens_squared: float = 0.0
    tokens_seconds: float = 0.0

    def add(self, tokens: int, seconds: float) -> None:
        self.steps += 1
        self.padded_tokens += tokens
        self.seconds += seconds
        self.tokens_squared += float(tokens) * tokens
        self.tokens_seconds += tokens * seconds


class StepTimings:
    def __init__(self) -> None:
        self.by_micro_batch: dict[int, Totals] = {}

    def record(self, micro_batch: int, padded_tokens: int, seconds: float) -> None:
        self.by_micro_batch.setdefault(micro_batch, Totals()).add(padded_tokens, seconds)

    def fit(self, micro_batch: int) -> tuple[float, float] | None:
        totals = self.by_micro_batch.get(micro_batch)
        return step_time_fit(totals) if totals else None

    def as_dict(self) -> dict[str, dict[str, float]]:
        out = {}
        for b, totals in sorted(self.by_micro_batch.items()):
            fit = step_time_fit(totals)
            out[str(b)] = {
                "steps": totals.steps,
                "padded_tokens": totals.padded_tokens,
                "seconds": round(totals.seconds, 6),
                "step_overhead_s": round(fit[0], 6) if fit else None,
                "s_per_padded_token": fit[1] if fit else None,
            }
        return out


def step_time_fit(t: Totals) -> tuple[float, float] | None:
    """(a, b) of seconds ≈ a + b × tokens; proportional (a = 0) when a line does not fit."""
    if t.steps == 0 or t.padded_tokens == 0:
        return None
    n, sx, sy = t.steps, float(t.padded_tokens), t.seconds
    denominator = n * t.tokens_squared - sx * sx
    if n >= 3 and denominator > 1e-9 * n * t.tokens_squared:
        slope = (n * t.tokens_seconds - sx * sy) / denominator
        intercept = (sy - slope * sx) / n
        if slope > 0 and intercept >= 0:
            return intercept, slope
    return 0.0, sy / sx


def eta_seconds(fit: tuple[float, float] | None, steps_left: int, tokens_left: int) -> float | None:
    if fit is None:
        return None
    return fit[0] * steps_left + fit[1] * tokens_left
