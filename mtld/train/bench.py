"""Throughput of a job at micro-batch 2, 4 and 8, and the step loop's own overhead.

    python -m mtld.train.bench JOB.toml --out DIR [--batch-sizes 2 4 8] [--device cpu] [--overhead-steps 60] [--repeats 3]

1. Runs the whole job once per micro-batch size exactly as the daemon would
   (`python -m mtld.train RUN_DIR`, one at a time) and reports samples/s,
   tokens/s and the run's duration, from each run's result.json.
2. Times the same optimizer steps through StepRunner and through a minimal
   hand-written loop (same tensors, same maths, no bookkeeping), side by side
   in this process, so the loop's overhead is a ratio, not a guess.

Figures go to stdout and DIR/bench.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from mtld import MICRO_BATCH_SIZES
from mtld.config.jobspec import load_job
from mtld.runs.rundir import RunDir
from mtld.runs.files import Launch, RunResult


def whole_runs(job: Path, out: Path, sizes: list[int], device: str) -> list[dict[str, Any]]:
    spec = load_job(job)
    rows = []
    for b in sizes:
        rd = RunDir(out / f"b{b}")
        shutil.rmtree(rd.path, ignore_errors=True)
        rd.write_job(spec)
        rd.write_launch(Launch(micro_batch=b, device=device))
        started = time.monotonic()
        code = subprocess.run([sys.executable, "-m", "mtld.train", str(rd.path)], check=False).returncode
        wall = time.monotonic() - started
        result = rd.read_result() or RunResult(outcome="failed", exit_code=code)
        rows.append({
            "micro_batch": b, "exit_code": code, "samples_per_s": result.samples_per_s,
            "tokens_per_s": result.tokens_per_s, "train_s": result.train_seconds,
            "run_s": result.duration_s, "process_s": round(wall, 2), "best_score": result.best_score,
            "peak_memory_bytes": result.peak_memory_bytes,
        })
        print(_row(rows[-1]), flush=True)
    return rows


def loop_overhead(job: Path, micro_batch: int, device_name: str, steps: int, repeats: int = 3) -> dict[str, float]:
    """Seconds for the same `steps` optimizer steps: StepRunner vs a bare loop (best of `repeats`)."""
    import structlog
    import torch

    from mtld.train.device import pick_device, synchronize
    from mtld.train.guard import NoGuard
    from mtld.train.model import loss_sum, quiet_transformers
    from mtld.train.plan import micro_batches
    from mtld.train.setup import build
    from mtld.train.signals import StopFlag

    quiet_transformers()
    spec = load_job(job)
    device = pick_device(device_name)

    def parts():
        return build(spec, device, micro_batch, stop=StopFlag(), guard=NoGuard(), log=structlog.get_logger())

    def bare(p) -> None:
        for step in p.plans[0][:steps]:
            task = p.tasks[step.task]
            scale = task.info.weight / max(int(task.train.units[step.ids].sum()), 1)
            for ids in micro_batches(step.ids, micro_batch):
                inputs, targets = task.train.batch(ids)
                (loss_sum(task.info.type, p.model(step.task, inputs), targets) * scale).backward()
            if spec.train.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(p.model.parameters(), spec.train.max_grad_norm)
            p.optimizer.step()
            p.scheduler.step()
            p.optimizer.zero_grad(set_to_none=True)

    def runner(p) -> None:
        for i, step in enumerate(p.plans[0][:steps]):
            p.runner.run(step, i)

    best = {"bare": float("inf"), "step_runner": float("inf")}
    for _ in range(repeats):  # alternate, keep the best of each: other processes only ever add time
        for name, loop in (("bare", bare), ("step_runner", runner)):
            p = parts()
            started = time.perf_counter()
            loop(p)
            synchronize(device)
            best[name] = min(best[name], time.perf_counter() - started)
    return {"bare_s": round(best["bare"], 3), "step_runner_s": round(best["step_runner"], 3),
            "overhead_ratio": round(best["step_runner"] / best["bare"], 3)}


def _row(r: dict[str, Any]) -> str:
    return (f"micro-batch {r['micro_batch']}: {r['samples_per_s']} samples/s, {r['tokens_per_s']} tokens/s, "
            f"training {r['train_s']} s, run {r['run_s']} s, process {r['process_s']} s (exit {r['exit_code']})")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("job", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=list(MICRO_BATCH_SIZES))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--overhead-steps", type=int, default=60, help="0 skips the overhead comparison")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-runs", action="store_true", help="only the overhead comparison")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"job": str(args.job), "device": args.device}
    if not args.skip_runs:
        report["runs"] = whole_runs(args.job, args.out, args.batch_sizes, args.device)
    if args.overhead_steps:
        report["loop_overhead"] = {}
        for b in args.batch_sizes:
            report["loop_overhead"][str(b)] = loop_overhead(args.job, b, args.device, args.overhead_steps, args.repeats)
            print(f"micro-batch {b}: loop overhead {report['loop_overhead'][str(b)]}", flush=True)
    (args.out / "bench.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
