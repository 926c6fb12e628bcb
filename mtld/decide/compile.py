"""torch.compile: whether a run compiles its encoder. The one place that decides it.

`train.compile` is "auto" (the default), true or false. Compiling pays per step once warm and costs
seconds up front, so "auto" compiles only when the run's training time is well past the break-even:

    break-even = cost / (1 - 1/speedup)      (eager seconds after which the compiled run has caught up)
    compile when eager training time > MARGIN x break-even

Why, and the figures (docs/benchmarks.md, "torch.compile"; bench/compile.md): whether compiling pays
depends on the machine. On 2026-12-01 (a 2-core EPYC, torch 2.13.0+cpu, in one process) a compiled step
was 1.48x (all-MiniLM-L6-v2) to 1.65x (a 2x64 tiny model) faster once warm; on 2026-12-04 (another
2-core EPYC, the same torch) it was 0.89x (MiniLM, each run a fresh `python -m mtld.train`) to 0.94-0.95x (in
one process, with the checkpoint's attention dropout or without): slower. Compiling costs 47 s up front
with an empty inductor cache and 12 s with a filled one, and every new shape (micro-batches come in many
widths) costs more again. DEFAULT is the fresh-process measurement: no faster, so "auto" compiles
nothing until a family's own runs show it pays. `compile = true` on one long run gives the family that
figure; from then on "auto" decides by it. MARGIN (3x) covers the recompilations for new shapes, which
the first steps' cost leaves out, and an estimate that is wrong by half.

A family's own figures replace the defaults once its history holds a compiled run and an eager one (a
probe is eager) at the same micro-batch size (`family_figures`): the speedup is the eager step time over
the compiled one (the runtime model's per-size step lines, mtld.decide.runtime, at the compiled runs'
mean padded tokens per step), the cost the compiled runs' warm-up excess (their first steps' time over
their own steady line: compilation, and the first new shapes) less the eager runs'. A family whose
compiled runs were no faster never compiles on "auto".

Never on MPS: inductor's MPS backend is a prototype (torch/_inductor/codegen/mps.py, torch 2.13: "Just an
early prototype that shows that one can compile elementwise ops into a Metal shader"); where it fails,
dynamo falls back to eager piece by piece (mtld.train.model.compile_encoder). CUDA is
not measured here: the CPU's figures stand until the family has its own. Without an estimate (no
history at the size, no probe) there is no run time to weigh the cost against: no compilation.

Pure: the run child (mtld.train.attempt, with the plan left to the attempt and Launch.history) and
`mtld estimate` (mtld.estimate.job, with the whole plan and the same history) both ask `decide_compile`,
so what the estimate shows is what the child does.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from mtld.decide.runtime import PlanSummary, RunRecord, measured_models, step_models

CompileSetting = Literal["auto"] | bool
MARGIN = 3.0  # compile when the eager training time is past this many break-evens
NEVER_DEVICES = ("mps",)


@dataclass(frozen=True)
class CompileFigures:
    """What compiling costs and gains on a family (or by default)."""

    cost_s: float  # seconds compiling adds to a run's first steps
    speedup: float  # an eager step's time over a compiled one's, once warm
    source: str

    @property
    def break_even_s(self) -> float:
        """Eager seconds of training after which the compiled run has made up its cost (inf: it never does)."""
        if self.speedup <= 1.0:
            return math.inf
        return self.cost_s / (1.0 - 1.0 / self.speedup)


# bench/compile.md, 2026-12-04: MiniLM in fresh processes, an empty inductor cache (the speedup is < 1: never on auto)
DEFAULT = CompileFigures(cost_s=46.5, speedup=0.894, source="bench/compile.md: MiniLM, fresh processes")


def decide_compile(setting: CompileSetting, *, device_type: str, eager_train_s: float | None,
                   figures: CompileFigures = DEFAULT) -> tuple[bool, str]:
    """(compile, why) for a run on `device_type` whose training is expected to take `eager_train_s` eager
    seconds (None: no estimate), with `figures` (the family's, else DEFAULT)."""
    if setting is True:
        return True, "compile = true (asked for)"
    if setting is False:
        return False, "compile = false (asked for)"
    if setting != "auto":
        raise ValueError(f"unknown compile setting {setting!r}: use auto, true or false")
    if device_type in NEVER_DEVICES:
        return False, f"auto: not on {device_type} (inductor's {device_type} backend is a prototype)"
    if eager_train_s is None:
        return False, "auto: no measured time yet for this family at this size"
    needed = MARGIN * figures.break_even_s
    if math.isinf(needed):
        return False, f"auto: compiled steps were no faster ({figures.speedup:.2f}x, {figures.source})"
    about = (f"~{_minutes(eager_train_s)} of training, break-even {_minutes(figures.break_even_s)} "
             f"({figures.cost_s:.0f} s to compile, {figures.speedup:.2f}x per step: {figures.source})")
    if eager_train_s > needed:
        return True, f"auto: {about}"
    return False, f"auto: a short run: {about}; compiles past {MARGIN:g}x break-even"


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def family_figures(records: Sequence[RunRecord]) -> CompileFigures:
    """The family's own figures from its compiled and eager runs at the size they share most; DEFAULT
    until it has both."""
    compiled = [r for r in records if r.compiled and not r.probe]
    eager = [r for r in records if not r.compiled]
    if not compiled or not eager:
        return DEFAULT
    fast, slow = measured_models(compiled), measured_models(eager)
    shared = [m for m in fast if m in slow]
    if not shared:
        return DEFAULT
    size = max(shared, key=lambda m: (fast[m].runs, m))
    per_step = [s.steady.x / s.steady.n for r in compiled if (s := r.sizes.get(size)) is not None and s.steady.n > 0]
    tokens = statistics.mean(per_step)
    compiled_step = fast[size].seconds(1, tokens)
    if compiled_step <= 0:
        return DEFAULT
    speedup = slow[size].seconds(1, tokens) / compiled_step
    cost = max(fast[size].warmup_s - slow[size].warmup_s, 0.0)
    return CompileFigures(cost_s=cost, speedup=speedup,
                          source=f"this family's {fast[size].runs} compiled and {slow[size].runs} eager "
                                 f"run{'s' if slow[size].runs != 1 else ''} at micro-batch {size}")


def eager_train_seconds(plan: PlanSummary, records: Sequence[RunRecord], micro_batch: int,
                        figures: CompileFigures = DEFAULT) -> float | None:
    """Seconds the plan's steps take eager at `micro_batch` (warm-up included), by the family's eager
    runs and probes; with compiled runs only, their steady time times the speedup (else the first
    compiled run would make the next run eager: nothing eager to estimate from). None without history."""
    if micro_batch not in plan.padded_tokens:
        return None
    eager = [r for r in records if not r.compiled]
    if eager:
        model = step_models(eager, plan.effective_batch).get(micro_batch)
        return None if model is None else model.seconds(plan.steps, plan.padded_tokens[micro_batch]) + model.warmup_s
    model = step_models(records, plan.effective_batch).get(micro_batch)
    if model is None:
        return None
    return model.seconds(plan.steps, plan.padded_tokens[micro_batch]) * max(figures.speedup, 1.0)


def compile_for_plan(setting: CompileSetting, *, device_type: str, plan: PlanSummary | None,
                     records: Sequence[RunRecord], micro_batch: int | None) -> tuple[bool, str]:
    """decide_compile for `plan` at `micro_batch` with the family's `records`: the figures and the eager
    estimate from them. What the run child and `mtld estimate` both call."""
    figures = family_figures(records)
    eager = (None if plan is None or micro_batch is None
             else eager_train_seconds(plan, records, micro_batch, figures))
    return decide_compile(setting, device_type=device_type, eager_train_s=eager, figures=figures)
