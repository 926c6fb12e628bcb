"""The runtime and memory model: figures of earlier runs in, expected duration and peak out.

Pure: no torch, no clock, no files. The I/O side (tokenizing a job into a
`PlanSummary`: mtld.estimate.job; the family's history and the probe:
mtld.estimate.history); the figures come typed (mtld.runs.figures.Figures).

Step time. At micro-batch m an optimizer step of p padded tokens takes about
`a_m + b_m × p` seconds. Each run's result.json keeps, per size, the running
sums (n, Σp, Σt, Σp², Σp·t) of its steps, with its first few steps (warm-up:
new shapes) summed apart. Per run and size, (a, b) is the exact least-squares
line through the steady steps (warm-up left out; their measured extra cost is
added once per run); across runs the median of each coefficient is taken, so
one disturbed run (a backup, a browser) cannot drag the model.

Sizes without history are extrapolated and flagged: the per-token cost b is
taken from the nearest measured size (the same arithmetic), and the
per-step overhead a is split into a fixed part plus a part per micro-step
(`a_m = o + u × ceil(E / m)`, E the effective batch), fitted when two or more
sizes are measured, else all of it per micro-step.

A job's expected duration = Σ over its planned steps (a × steps + b × padded
tokens at that size, known from the batch plan) + warm-up + evaluations
(seconds per evaluated token × tokens × evaluations) + saves (checkpoints and
exports) + the process's start-up (loading, tokenizing), all from history.

Peak memory: the highest peak measured at each size; other sizes from a line
through the measured sizes (flagged), or, with one size measured, that peak as
an upper bound for the smaller sizes only.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mtld import MICRO_BATCH_SIZES as SIZES
from mtld.config.durations import checkpoint_interval
from mtld.runs.figures import Figures, Sum

LIVE_PRIOR_WEIGHT = 0.05  # the model counts as much as the first 5 % of the run's own steps


@dataclass(frozen=True)
class Sums:
    """Running sums of (padded tokens x, seconds y) over steps."""

    n: int = 0
    x: float = 0.0
    y: float = 0.0
    xx: float = 0.0
    xy: float = 0.0

    @classmethod
    def of(cls, points: Iterable[tuple[float, float]]) -> Sums:
        n = x = y = xx = xy = 0.0
        for px, py in points:
            n, x, y, xx, xy = n + 1, x + px, y + py, xx + px * px, xy + px * py
        return cls(int(n), x, y, xx, xy)

    @classmethod
    def from_timing(cls, d: Sum) -> Sums:
        return cls(d.steps, float(d.padded_tokens), d.seconds, d.tokens_squared, d.tokens_seconds)

    def to_timing(self) -> dict[str, float]:
        """The fields of result.json's timing (mtld.runs.figures.Sum, what from_timing reads)."""
        return {"steps": self.n, "padded_tokens": int(self.x), "seconds": round(self.y, 6), "tokens_squared": self.xx,
                "tokens_seconds": round(self.xy, 6)}

    def plus(self, x: float, y: float) -> Sums:
        return Sums(self.n + 1, self.x + x, self.y + y, self.xx + x * x, self.xy + x * y)

    def __sub__(self, o: Sums) -> Sums:
        return Sums(self.n - o.n, self.x - o.x, self.y - o.y, self.xx - o.xx, self.xy - o.xy)


def fit_line(s: Sums) -> tuple[float, float] | None:
    """(a, b) minimising Σ(a + b·x − y)²; proportional (a = 0) when no valid line (b ≤ 0, a < 0)."""
    if s.n <= 0 or s.x <= 0:
        return None
    det = s.n * s.xx - s.x * s.x
    if s.n >= 3 and det > 1e-9 * s.n * s.xx:
        b = (s.n * s.xy - s.x * s.y) / det
        a = (s.y - b * s.x) / s.n
        if b > 0 and a >= 0:
            return a, b
    return 0.0, s.y / s.x


def least_squares(points: Sequence[tuple[float, float]]) -> tuple[float, float] | None:
    """Unconstrained (intercept, slope) through two or more points with distinct x."""
    s = Sums.of(points)
    det = s.n * s.xx - s.x * s.x
    if s.n < 2 or det <= 1e-12 * max(s.n * s.xx, 1e-300):
        return None
    b = (s.n * s.xy - s.x * s.y) / det
    return (s.y - b * s.x) / s.n, b


# ---------------------------------------------------------------- history


@dataclass(frozen=True)
class SizeRecord:
    """One run's figures at one micro-batch size."""

    steady: Sums
    warmup: Sums = Sums()
    eval_count: int = 0
    eval_seconds: float = 0.0
    eval_tokens: int = 0
    save_count: int = 0
    save_seconds: float = 0.0


@dataclass(frozen=True)
class RunRecord:
    """What one earlier run (or a probe) tells the model."""

    sizes: Mapping[int, SizeRecord]
    peak_bytes: int | None = None
    peak_size: int | None = None  # the size the peak belongs to (the size the run ended at)
    startup_s: float | None = None  # the attempt's time outside steps, evaluations and saves
    probe: bool = False
    peaks: Mapping[int, int] = field(default_factory=dict)  # a probe measures every size
    samples: int | None = None  # examples trained in the attempt (for the rough, plan-free estimate)
    train_s: float | None = None
    compiled: bool = False  # its encoder was compiled (torch.compile): mtld.decide.compile reads it


def run_record(figures: Figures, *, micro_batch: int | None = None) -> RunRecord | None:
    """A RunRecord from a run's (or a probe's) figures; None without timings."""
    sizes = {
        m: SizeRecord(Sums.from_timing(d) - Sums.from_timing(d.warmup), Sums.from_timing(d.warmup), d.eval.count,
                      d.eval.seconds, d.eval.tokens, d.saves.count, d.saves.seconds)
        for m, d in figures.timing.items()
    }
    if not sizes:
        return None
    startup, duration, train = figures.startup_s, figures.duration_s, figures.train_seconds
    if startup is None and duration is not None and train is not None:
        other = sum(s.eval_seconds + s.save_seconds for s in sizes.values())
        startup = max(duration - train - other, 0.0)
    end = figures.micro_batch_end or micro_batch
    return RunRecord(sizes, figures.peak_memory_bytes, end, startup, figures.probe, dict(figures.peaks_by_size),
                     figures.samples, figures.train_seconds, figures.compiled)


def same_kind(records: Sequence[RunRecord], *, compiled: bool) -> list[RunRecord]:
    """The runs whose steps were timed as a run that compiles (or not) will be: a compiled step is 1.5x
    faster once warm and its first steps far slower (mtld.decide.compile), so the two never share a step
    model. All of them while the family has none of that kind yet (its first compiled run is then estimated
    from eager ones: long by the speedup, short by the compile time)."""
    same = [r for r in records if r.compiled == compiled]
    return same or list(records)


# ---------------------------------------------------------------- the step model


@dataclass(frozen=True)
class StepModel:
    micro_batch: int
    a: float  # seconds per optimizer step
    b: float  # seconds per padded token
    warmup_s: float  # extra seconds of a run's first steps at this size
    runs: int  # runs (and probes) measured at this size; 0 when extrapolated
    extrapolated_from: tuple[int, ...] = ()

    def seconds(self, steps: int, padded_tokens: float) -> float:
        return self.a * steps + self.b * padded_tokens


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else 0.0


def measured_models(records: Sequence[RunRecord]) -> dict[int, StepModel]:
    """Per size with history: medians over runs of the per-run fits."""
    out = {}
    for m in SIZES:
        fits, extras = [], []
        for r in records:
            s = r.sizes.get(m)
            if s is None or s.steady.n < 1:
                continue
            fit = fit_line(s.steady)
            if fit is None:
                continue
            fits.append(fit)
            if s.warmup.n:
                extras.append(max(s.warmup.y - (fit[0] * s.warmup.n + fit[1] * s.warmup.x), 0.0))
        if fits:
            out[m] = StepModel(m, _median([f[0] for f in fits]), _median([f[1] for f in fits]), _median(extras), len(fits))
    return out


def micro_steps(m: int, effective_batch: int) -> int:
    return -(-effective_batch // m)


def step_models(records: Sequence[RunRecord], effective_batch: int) -> dict[int, StepModel]:
    """A model for every size: measured where there is history, else extrapolated (flagged)."""
    known = measured_models(records)
    if not known:
        return {}
    out = dict(known)
    ks = sorted(known)
    line = least_squares([(micro_steps(k, effective_batch), known[k].a) for k in ks])
    if line is not None:  # a_m = o + u × micro-steps(m) through the measured sizes, neither part negative
        o, u = line
        if u < 0 or o < 0:
            o, u = (_median([known[k].a for k in ks]), 0.0) if u < 0 else (0.0, _median(
                [known[k].a / micro_steps(k, effective_batch) for k in ks]))
    else:
        o, u = 0.0, known[ks[0]].a / micro_steps(ks[0], effective_batch)
    for m in SIZES:
        if m in known:
            continue
        nearest = min(ks, key=lambda k: (abs(math.log2(k / m)), k))
        base = known[nearest]
        out[m] = StepModel(m, o + u * micro_steps(m, effective_batch), base.b, base.warmup_s, 0, tuple(ks))
    return out


# ---------------------------------------------------------------- evaluation, saves, start-up


@dataclass(frozen=True)
class Extras:
    eval_s_per_token: float | None
    save_s: float | None
    startup_s: float | None


def extras(records: Sequence[RunRecord]) -> Extras:
    ev_s = sum(s.eval_seconds for r in records for s in r.sizes.values())
    ev_t = sum(s.eval_tokens for r in records for s in r.sizes.values())
    sv_n = sum(s.save_count for r in records for s in r.sizes.values())
    sv_s = sum(s.save_seconds for r in records for s in r.sizes.values())
    startups = [r.startup_s for r in records if r.startup_s is not None]
    return Extras(ev_s / ev_t if ev_t else None, sv_s / sv_n if sv_n else None, _median(startups) if startups else None)


@dataclass(frozen=True)
class Pace:
    """How long a run of the family takes between signs of life, by its history (None: not measured)."""

    step_s: float | None  # one optimizer step, past the warm-up (the median over runs)
    first_steps_s: float | None  # the warm-up steps together (compilation, allocator growth)
    startup_s: float | None  # from the child's start to its first step
    eval_s: float | None  # one evaluation


def pace(records: Sequence[RunRecord], micro_batch: int) -> Pace:
    """The family's pace at `micro_batch` (the size's own runs; the step time of any size when it has none:
    the watchdog wants an order of magnitude, not the estimate's precision)."""
    own = [r.sizes[micro_batch] for r in records if micro_batch in r.sizes]
    sizes = own or [s for r in records for s in r.sizes.values()]
    steps = [s.steady.y / s.steady.n for s in sizes if s.steady.n > 0]
    warmups = [s.warmup.y for s in sizes if s.warmup.n > 0]
    evals = [s.eval_seconds / s.eval_count for s in sizes if s.eval_count > 0]
    startups = [r.startup_s for r in records if r.startup_s is not None]
    return Pace(step_s=_median(steps) if steps else None, first_steps_s=_median(warmups) if warmups else None,
                startup_s=_median(startups) if startups else None, eval_s=_median(evals) if evals else None)


# ---------------------------------------------------------------- peaks


def peak_by_size(records: Sequence[RunRecord]) -> dict[int, tuple[int, bool]]:
    """(expected peak bytes, extrapolated) per size."""
    measured: dict[int, int] = {}
    for r in records:
        pairs = dict(r.peaks)
        if r.peak_bytes and r.peak_size and not r.probe:
            pairs[r.peak_size] = max(pairs.get(r.peak_size, 0), int(r.peak_bytes))
        for k, v in pairs.items():
            measured[k] = max(measured.get(k, 0), v)
    out = {k: (v, False) for k, v in measured.items()}
    if len(measured) >= 2:
        line = least_squares(sorted(measured.items()))
        for m in SIZES:
            if m not in measured and line:
                below = [v for k, v in measured.items() if k < m]
                value = line[0] + line[1] * m
                out[m] = (int(max([value, *below])), True)
    elif len(measured) == 1:
        (k, v), = measured.items()
        for m in SIZES:
            if m < k:
                out[m] = (v, True)  # an upper bound: a smaller micro-batch needs less
    return out


# ---------------------------------------------------------------- a job's plan and the table


@dataclass(frozen=True)
class PlanSummary:
    """What the runtime model needs from a job's batch plan (mtld.estimate.job.plan_summary)."""

    steps: int
    effective_batch: int
    padded_tokens: Mapping[int, int]  # Σ over the run's steps of padded tokens, per micro-batch size
    evaluations: int
    eval_tokens: int  # real tokens of one evaluation (all tasks' eval examples)
    saves: int  # checkpoints and exports


@dataclass(frozen=True)
class Prediction:
    micro_batch: int
    seconds: float | None
    train_s: float | None = None
    eval_s: float | None = None
    other_s: float | None = None  # saves and start-up
    peak_bytes: int | None = None
    peak_extrapolated: bool = False
    fits: bool | None = None
    basis: str = "unknown"
    extrapolated: bool = False
    chosen: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {k: (round(v, 1) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


def basis_text(model: StepModel | None, records: Sequence[RunRecord]) -> str:
    if model is None:
        return "unknown"
    if model.extrapolated_from:
        return f"extrapolated from {'/'.join(map(str, model.extrapolated_from))}"
    runs = sum(1 for r in records if model.micro_batch in r.sizes and not r.probe)
    probes = sum(1 for r in records if model.micro_batch in r.sizes and r.probe)
    parts = [f"history of {runs} run{'s' if runs != 1 else ''}"] if runs else []
    return " + ".join(parts + (["probe"] if probes else []))


def predict(plan: PlanSummary, records: Sequence[RunRecord], *, available_bytes: int | None = None,
            chosen: int | None = None) -> list[Prediction]:
    """One row per size 2, 4, 8: expected duration and peak, whether it fits now, the basis."""
    models = step_models(records, plan.effective_batch)
    ex = extras(records)
    peaks = peak_by_size(records)
    rows = []
    for m in SIZES:
        model = models.get(m)
        peak, peak_x = peaks.get(m, (None, False))
        fits = None if peak is None or available_bytes is None else peak <= available_bytes
        row = dict(micro_batch=m, peak_bytes=peak, peak_extrapolated=peak_x, fits=fits,
                   basis=basis_text(model, records), chosen=m == chosen)
        if model is None or m not in plan.padded_tokens:
            rows.append(Prediction(seconds=None, **row))
            continue
        train = model.seconds(plan.steps, plan.padded_tokens[m]) + model.warmup_s
        ev = plan.evaluations * plan.eval_tokens * (ex.eval_s_per_token or 0.0)
        other = plan.saves * (ex.save_s or 0.0) + (ex.startup_s or 0.0)
        rows.append(Prediction(seconds=train + ev + other, train_s=train, eval_s=ev, other_s=other,
                               extrapolated=bool(model.extrapolated_from), **row))
    return rows


def launch_prior(plan: PlanSummary, records: Sequence[RunRecord], micro_batch: int) -> dict[str, Any] | None:
    """What the child needs for its live ETA (Trainer.model, from Launch.history): JSON-safe."""
    models = step_models(records, plan.effective_batch)
    if not models:
        return None
    ex = extras(records)
    rows = {r.micro_batch: r for r in predict(plan, records)}
    return {
        "sizes": {str(m): {"a": s.a, "b": s.b, "warmup_s": s.warmup_s} for m, s in models.items()},
        "eval_s_per_token": ex.eval_s_per_token,
        "save_s": ex.save_s,
        "predicted_s": rows[micro_batch].seconds if micro_batch in rows else None,
        "basis": rows[micro_batch].basis if micro_batch in rows else "unknown",
    }


def rough_seconds(records: Sequence[RunRecord], micro_batch: int, samples: int, evaluations: int) -> float | None:
    """Without a plan (mtld status, the queue): seconds per trained example at this size (else any size)
    from history, plus start-up and evaluations. Coarser than `predict`: padding is averaged in."""
    runs = [r for r in records if r.samples and r.train_s and not r.probe]
    at_size = [r for r in runs if r.peak_size == micro_batch] or runs
    if not at_size:
        return None
    per_sample = _median([r.train_s / r.samples for r in at_size])
    per_eval = [sum(s.eval_seconds for s in r.sizes.values()) / n for r in runs
                if (n := sum(s.eval_count for s in r.sizes.values()))]
    ex = extras(records)
    return samples * per_sample + evaluations * _median(per_eval) + (ex.startup_s or 0.0)


# ---------------------------------------------------------------- live ETA


def live_eta(*, model_left_s: float | None, model_done_s: float | None, elapsed_s: float, fraction_done: float,
             observed_left_s: float | None, other_left_s: float = 0.0) -> float | None:
    """Seconds left: the model's remaining time scaled by how fast this run actually goes.

    The ratio actual/model over the steps done so far is trusted with weight
    f / (f + LIVE_PRIOR_WEIGHT) (f: fraction of the run done), so the model
    dominates at the start and the run's own pace by the end. Without a model:
    the run's own fit (observed_left_s).
    """
    if model_left_s is None:
        return None if observed_left_s is None else observed_left_s + other_left_s
    factor = 1.0
    if model_done_s and model_done_s > 0 and elapsed_s > 0:
        w = fraction_done / (fraction_done + LIVE_PRIOR_WEIGHT)
        factor = (1 - w) + w * (elapsed_s / model_done_s)
    return max(model_left_s * factor, 0.0) + other_left_s


# ---------------------------------------------------------------- a plan's summary


def summarize(plans: Sequence[Sequence[Any]], lengths: Sequence[Any], eval_lengths: Sequence[Any], train: Any,
              padded_tokens: Callable[..., int]) -> PlanSummary:
    """Steps, padded tokens per size, evaluations and saves of a batch plan (epochs of steps with
    `.task` and `.ids`). `padded_tokens` is mtld.train.plan's, passed in to keep this module torch-free.
    Saves: every `checkpoint_every` steps (for a duration: none besides) and each epoch's end, but not at the
    last step (the export follows it at once: mtld.train.loop), and the export."""
    steps = sum(len(p) for p in plans)
    tokens = {m: int(sum(padded_tokens(s.ids, lengths[s.task], min(m, train.effective_batch_size))
                         for p in plans for s in p)) for m in SIZES}
    evaluations = evaluation_count(steps, len(plans), train.eval_every, any(x is not None for x in eval_lengths))
    boundaries, number = set(), 0
    for p in plans:
        number += len(p)
        boundaries.add(number)
    every_steps, _ = checkpoint_interval(train.checkpoint_every)
    # Checkpoints by time (a duration) are counted at epoch ends only: a few more in a long epoch are
    # a small share of the run, and the run's duration is what is being estimated.
    checkpoints = (boundaries | set(range(every_steps, steps + 1, every_steps) if every_steps else ())) - {steps}
    return PlanSummary(
        steps=steps, effective_batch=train.effective_batch_size, padded_tokens=tokens,
        evaluations=evaluations, eval_tokens=int(sum(int(x.sum()) for x in eval_lengths if x is not None)),
        saves=len(checkpoints) + 1,
    )


def evaluation_count(steps: int, epochs: int, eval_every: int, has_eval: bool) -> int:
    """Evaluations of a run: every `eval_every` steps and after the last step, else one per epoch."""
    if not has_eval:
        return 0
    return -(-steps // eval_every) if eval_every else epochs
