"""`python -m mtld.train.probe RUN_DIR`: a short calibration of the runtime model.

Builds the job like a run (same tokenizing, same model, same plan), then at
each micro-batch size, smallest first, takes a few optimizer steps: the two
longest steps of the plan first (warm-up, and the worst case for memory),
then steps spread over the plan's range of padded tokens, so the line
a + b × tokens is well determined. The process's peak memory after each size
is that size's peak (peaks only grow, and a larger size needs more). One
evaluation pass over a slice of the eval data and one checkpoint-sized save
are timed too. Writes RUN_DIR/result.json: {"probe": true, "timing",
"peaks_by_size", "startup_s", ...}, readable by mtld.decide.runtime.run_record.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mtld.runs.files import RunResult

STARTED = time.monotonic()
WARMUP, SPREAD = 2, 6


def probe(run_dir: Path) -> RunResult:
    import numpy as np
    import structlog
    import torch

    from mtld import MICRO_BATCH_SIZES
    from mtld.runs.rundir import RunDir
    from mtld.runs.files import RunResult
    from mtld.train import device as dev
    from mtld.train.guard import NoGuard
    from mtld.train.inference import infer_split
    from mtld.train.loop import EVAL_BATCH_FACTOR
    from mtld.train.model import quiet_transformers
    from mtld.train.plan import padded_tokens
    from mtld.train.setup import build
    from mtld.train.signals import StopFlag
    from mtld.train.timing import StepTimings

    # The heap as the run child has it (mtld.train.attempt): without this every probe step pays page faults
    # that the run's steps do not, and the probe's line came out up to a fifth too slow.
    dev.tune_malloc()
    rd = RunDir(run_dir)
    spec, launch = rd.read_job(), rd.read_launch()
    quiet_transformers()
    device = dev.pick_device(launch.device)
    dev.prepare(device, launch.memory_fraction)
    meter = dev.MemoryMeter(device)
    log = structlog.get_logger()
    parts = build(spec, device, MICRO_BATCH_SIZES[0], stop=StopFlag(), guard=NoGuard(), log=log)
    startup = time.monotonic() - STARTED
    timings = StepTimings(warmup_steps=WARMUP)
    peaks: dict[str, int] = {}
    plan = parts.plans[0]
    sizes = [m for m in MICRO_BATCH_SIZES if m <= spec.train.effective_batch_size] or [MICRO_BATCH_SIZES[0]]
    for m in sizes:
        parts.runner.micro_batch = m
        tokens = np.array([padded_tokens(s.ids, parts.tasks[s.task].train.lengths, m) for s in plan])
        order = np.argsort(-tokens, kind="stable")
        picks = list(order[:WARMUP]) + [order[int(q)] for q in np.linspace(0, len(order) - 1, SPREAD)]
        measured = []
        for i, index in enumerate(picks):
            started = time.perf_counter()
            result = parts.runner.run(plan[index], i)
            dev.synchronize(device)
            if result.outcome != "done":
                break
            measured.append((result.padded_tokens, time.perf_counter() - started))
        for tokens_, seconds in kept_steps(measured):
            timings.record(m, tokens_, seconds)
        meter.sample()
        peaks[str(m)] = meter.peak_bytes()
    with_eval = [(i, t) for i, t in enumerate(parts.tasks) if t.eval is not None]
    if with_eval:
        i, task = with_eval[0]
        started = time.perf_counter()
        split = task.eval
        infer_split(parts.model, i, task.info, split, batch_size=EVAL_BATCH_FACTOR * sizes[-1], amp=parts.amp)
        seconds = time.perf_counter() - started
        timings.record_eval(sizes[-1], int(split.lengths.sum()), seconds)
    with tempfile.TemporaryDirectory(dir=rd.path) as tmp:
        started = time.perf_counter()
        torch.save({"model": parts.model.state_dict(), "optimizer": parts.optimizer.state_dict()}, Path(tmp) / "probe.pt")
        timings.record_save(time.perf_counter() - started)
    return RunResult(probe=True, outcome="succeeded", exit_code=0, device=device.type, timing=timings.as_dict(),
                     peaks_by_size=peaks, startup_s=round(startup, 3), duration_s=round(time.monotonic() - STARTED, 3))


def kept_steps(measured: list[tuple[int, float]], limit: float = 2.0) -> list[tuple[int, float]]:
    """Warm-up steps, then the timed steps whose seconds per token stay within `limit` × their median:
    with a handful of steps, one disturbed by another process (or by OpenMP threads spinning against
    it on a busy machine) would otherwise decide the line."""
    warm, timed = measured[:WARMUP], measured[WARMUP:]
    rates = sorted(s / t for t, s in timed if t)
    if not rates:
        return warm
    median = rates[len(rates) // 2]
    return warm + [(t, s) for t, s in timed if t and s / t <= limit * median]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        sys.stderr.write("usage: python -m mtld.train.probe RUN_DIR\n")
        return 2
    from mtld.runs.rundir import RunDir

    RunDir(args[0]).write_result(probe(Path(args[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
