"""Does torch.compile pay for mtld's training loop? Eager against a compiled encoder, side by side.

    python -m bench.compile [--threads 1] [--repeats 3] [--out bench]

Two runs of a demo's length (the demo job: 3 epochs of its 1,600 examples at
effective batch 16 = 300 optimizer steps, bucketed lengths, micro-batch 8):
the tiny model, all four tasks; and the real encoder (all-MiniLM-L6-v2, the
`bench` extra) on the sentiment task, bucketed, with fewer steps (`--real-steps`).
The compiled contender is the same model compiled as `compile = true` in a job
does it (mtld.train.model.compile_encoder: inductor on CPU, dynamic shapes, in
place, so state_dict keys and checkpoints do not change).
Its first steps pay for compiling: the whole run's time counts them, and the
time after warm-up (the second half of the run) shows the steady state.

Then the figures `compile = "auto"` decides on (mtld.decide.compile: the cost
up front and the speedup once warm), measured as every run is: `python -m
mtld.train` in a fresh process each time, on bench.fresh's job (the real
encoder, every micro-batch 192 tokens wide: one shape to compile), the job's
default precision, a step.progress line per step. Three contenders alternate:
eager, compiled with an empty inductor cache (TORCHINDUCTOR_CACHE_DIR: a
family's first compiled run on a machine), and compiled with the cache such a
run left (the runs after it). The speedup is the eager step over the compiled
one in each run's second half; the cost, the compiled run's time to its last
step over its steady pace, less the eager run's own warm-up excess. Writes
OUT/compile.json and OUT/compile.md. mtld adopts compiling only if the whole
run is at least 10 % faster; otherwise it stays behind the job setting, off by default.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from bench.contenders import first_steps, make_parts
from bench.fresh import fresh_run_dir, write_job
from bench.run import DEMO, ROOT, demo_model, load, machine, ratio, with_model
from mtld.train.model import compile_encoder

ADOPT_AT = 1.10


def timed_run(spec: Any, micro_batch: int, steps: int, compiled: bool) -> dict[str, float]:
    """Train `steps` steps with mtld's step runner; seconds of the whole run and of its second half."""
    parts = make_parts(spec, micro_batch)
    if compiled:
        compile_encoder(parts.model)
    plan = first_steps(parts, steps)
    marks = []
    started = time.perf_counter()
    for number, step in enumerate(plan):
        result = parts.runner.run(step, number)
        if result.outcome != "done":
            raise RuntimeError(f"step {number}: {result.outcome}")
        marks.append(time.perf_counter())
    half = len(marks) // 2
    samples = sum(len(s.ids) for s in plan)
    late = sum(len(s.ids) for s in plan[half + 1:])
    torch._dynamo.reset()  # the next contender compiles afresh
    return {"seconds": marks[-1] - started, "samples_per_s": samples / (marks[-1] - started),
            "late_samples_per_s": late / (marks[-1] - marks[half]), "first_step_s": marks[0] - started}


def compare(label: str, spec: Any, micro_batch: int, steps: int, repeats: int) -> dict[str, Any]:
    runs: dict[str, list[dict[str, float]]] = {"eager": [], "compiled": []}
    for r in range(repeats):
        for name in (("eager", "compiled") if r % 2 == 0 else ("compiled", "eager")):
            runs[name].append(timed_run(spec, micro_batch, steps, name == "compiled"))
    row: dict[str, Any] = {"label": label, "micro_batch": micro_batch, "steps": steps}
    for name, rs in runs.items():
        row[name] = {k: round(statistics.median(r[k] for r in rs), 3) for k in rs[0]}
    row["whole_run_ratio"] = ratio([r["samples_per_s"] for r in runs["compiled"]], [r["samples_per_s"] for r in runs["eager"]])
    row["after_warm_up_ratio"] = ratio([r["late_samples_per_s"] for r in runs["compiled"]],
                                       [r["late_samples_per_s"] for r in runs["eager"]])
    print(f"{label}: whole run compiled/eager {row['whole_run_ratio']:.3f}, after warm-up {row['after_warm_up_ratio']:.3f}; "
          f"first step {row['compiled']['first_step_s']:.1f} s compiled vs {row['eager']['first_step_s']:.2f} s", flush=True)
    return row


FRESH = ("eager", "compiled_cold", "compiled_warm")


def fresh_run(work: Path, job: Path, threads: int, cache: Path) -> dict[str, float]:
    """One `python -m mtld.train` of `job` in a fresh process: its steady step and its excess over that pace."""

    run_dir = fresh_run_dir(work, job, threads, progress_every_s=0.0)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MTLD_")} | {
        "OMP_NUM_THREADS": str(threads), "TORCHINDUCTOR_CACHE_DIR": str(cache)}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "mtld.train", str(run_dir)], env=env, cwd=ROOT, capture_output=True,
                          text=True)
    process_s = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"mtld.train exited {done.returncode}: {done.stderr[-2000:]}")
    events = [json.loads(line) for line in (run_dir / "run.jsonl").read_text().splitlines()]
    at = {e["event"] if e["event"] != "step.progress" else e["step"]: datetime.fromisoformat(e["ts"]).timestamp()
          for e in events if e["event"] in ("run.started", "step.progress")}
    steps = max(k for k in at if isinstance(k, int))
    gaps = [at[k] - at[k - 1] for k in range(steps // 2 + 1, steps + 1)]
    steady = statistics.median(gaps)
    started_event = [e for e in events if e["event"] == "run.started"][0]
    return {"step_s": steady, "excess_s": at[steps] - at["run.started"] - steps * steady,
            "process_s": process_s, "compiled": bool(started_event.get("compile"))}


def fresh_compare(model: Path, steps: int, threads: int, repeats: int) -> dict[str, Any]:

    work = Path(tempfile.mkdtemp(prefix="bench-compile-"))
    jobs = {}
    for name in FRESH:
        (work / name).mkdir()
        jobs[name] = write_job(work / name, model, "auto", steps, extra=f"compile = {str(name != 'eager').lower()}")
    warm_cache = work / "inductor-warm"
    fresh_run(work / "compiled_warm", jobs["compiled_warm"], threads, warm_cache)  # fills it, not counted
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in FRESH}
    for r in range(repeats):
        for name in FRESH if r % 2 == 0 else tuple(reversed(FRESH)):
            cache = work / f"inductor-cold-{r}" if name == "compiled_cold" else warm_cache
            runs[name].append(fresh_run(work / name, jobs[name], threads, cache))
            print(f"  fresh round {r + 1} {name:13} step {runs[name][-1]['step_s']:.3f} s, excess "
                  f"{runs[name][-1]['excess_s']:5.1f} s, process {runs[name][-1]['process_s']:5.1f} s", flush=True)
    row: dict[str, Any] = {"label": "all-MiniLM-L6-v2, one 192-token shape, micro-batch 8",
                           "steps": steps, "runs": runs}
    for name in FRESH:
        row[name] = {k: round(statistics.median(x[k] for x in runs[name]), 3) for k in ("step_s", "excess_s", "process_s")}
    for name in FRESH[1:]:  # within each round: the eager run of the same round is the reference
        row[name]["speedup"] = round(statistics.median(e["step_s"] / c["step_s"] for e, c in zip(runs["eager"], runs[name])), 3)
        row[name]["cost_s"] = round(statistics.median(c["excess_s"] - e["excess_s"] for e, c in zip(runs["eager"], runs[name])), 1)
    row["all_compiled"] = all(x["compiled"] for name in FRESH[1:] for x in runs[name]) and not any(
        x["compiled"] for x in runs["eager"])
    return row


def fresh_markdown(row: dict[str, Any]) -> list[str]:
    lines = ["", f"Each run a fresh `python -m mtld.train` ({row['label']}, {row['steps']} steps; medians of "
             f"{len(row['runs']['eager'])} rounds, each compiled run against the eager run of its round):", "",
             "| contender | steady step | excess over its pace | process | speedup once warm | cost up front |",
             "|---|---:|---:|---:|---:|---:|"]
    for name in FRESH:
        r = row[name]
        extra = f"{r['speedup']:.3f}x | {r['cost_s']:.1f} s" if name != "eager" else "1 | 0"
        lines.append(f"| {name.replace('_', ', ')} cache | {r['step_s']:.3f} s | {r['excess_s']:.1f} s | "
                     f"{r['process_s']:.1f} s | {extra} |".replace("eager cache", "eager"))
    return lines


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [f"Measured {m['date']} on {m['cpu']} ({m['cores']} cores, torch threads {m['torch_threads']}), torch {m['torch']}; "
             f"medians of {results['repeats']} alternating runs; load average {m['load_before']} before, {m['load_after']} after.",
             "", "| run | steps | eager samples/s | compiled samples/s | whole run compiled / eager | after warm-up | "
             "first step eager / compiled |", "|---|---:|---:|---:|---:|---:|---|"]
    for row in results["rows"]:
        e, c = row["eager"], row["compiled"]
        lines.append(f"| {row['label']}, micro-batch {row['micro_batch']} | {row['steps']} | {e['samples_per_s']} | "
                     f"{c['samples_per_s']} | {row['whole_run_ratio']:.3f} | {row['after_warm_up_ratio']:.3f} | "
                     f"{e['first_step_s']:.2f} s / {c['first_step_s']:.1f} s |")
    lines += ["", f"On by default (whole run >= {ADOPT_AT:.2f}x on every row): {'yes' if results['adopt'] else 'no'}; "
              "a job can ask for it with `compile = true`."]
    if results.get("fresh"):
        lines += fresh_markdown(results["fresh"])
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "bench")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=300, help="tiny model: the demo's 300 steps")
    parser.add_argument("--real-steps", type=int, default=40)
    parser.add_argument("--fresh-steps", type=int, default=40, help="the fresh-process runs (0: none)")
    args = parser.parse_args(argv)
    from mtld.config.jobspec import load_job
    from mtld.train.model import quiet_transformers

    from bench.real import real_model, real_spec

    torch.set_num_threads(args.threads)
    quiet_transformers()
    demo_model()
    spec = load_job(DEMO)
    results: dict[str, Any] = {"machine": machine(args.threads), "repeats": args.repeats, "rows": []}
    results["rows"].append(compare("demo job, tiny model (2x64), 4 tasks", with_model(spec, demo_model()), 8, args.steps, args.repeats))
    if (model := real_model()) is not None:
        real = real_spec(spec, model).model_copy(update={"max_length": 128})
        results["rows"].append(compare("all-MiniLM-L6-v2, sentiment, bucketed", real, 8, args.real_steps, args.repeats))
        if args.fresh_steps:
            results["fresh"] = fresh_compare(model, args.fresh_steps, args.threads, args.repeats)
    results["adopt"] = all(row["whole_run_ratio"] >= ADOPT_AT for row in results["rows"])
    results["machine"]["load_after"] = load()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "compile.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    table = markdown(results)
    (args.out / "compile.md").write_text(table, encoding="utf-8")
    print("\n" + table)
    return results


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
