"""How good is the runtime model? Predicted against actual duration, and the live ETA's error.

    python -m bench.estimate_accuracy [--out bench] [--threads 1] [--quick] [--rounds 3]

For each model (the demo's tiny BERT, and a larger local one: 4 layers,
hidden 256, built here from the demo data, no downloads):

1. one earlier run of the family: micro-batch 4 on data set "small" (seed 1);
2. a probe (`python -m mtld.train.probe`, what `mtld estimate --probe` runs);
3. for sizes 2, 4, 8 and data sets "small" (another seed, so another plan)
   and "large" (twice the examples): the prediction from (a) the earlier run
   alone (sizes 2 and 8 are then extrapolated) and (b) the earlier run plus
   the probe; then the real run (`python -m mtld.train`, exactly as the
   daemon starts it, with the prior in launch.json), and its live ETA at 10 %
   of the steps against the time that was actually left.

Every row is run --rounds times, each round with its own earlier run and
probe, and the table has the medians, next to how much the very same run's
duration varied between rounds: on a shared machine that spread (the
machine's noise) can be larger than any model error.

Actual duration = result.json duration_s (what the store keeps). Every child
runs with OMP_NUM_THREADS=--threads (same for all, so the figures compare).
Writes OUT/estimate_accuracy.json and OUT/estimate_accuracy.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mtld.decide import runtime  # noqa: E402
from mtld.estimate.history import run_probe  # noqa: E402
from mtld.estimate.job import plan_summary  # noqa: E402
from mtld.config.jobspec import spec_from_dict  # noqa: E402
from mtld.runs.rundir import RunDir  # noqa: E402
from mtld.runs.files import Figures, Launch, RunResult  # noqa: E402

DATA = ROOT / "examples" / "data"
PICTURE_DIR: Path | None = None
TASKS = [
    {"name": "sentiment", "type": "classification", "text_field": "text", "label_field": "label",
     "labels": ["pos", "neg", "neutral"]},
    {"name": "entities", "type": "token_classification", "text_field": "tokens", "label_field": "tags",
     "labels": ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"]},
]


def write_data(base: Path, n: int, seed: int) -> list[dict[str, Any]]:
    """The first/shuffled `n` train rows and 50 eval rows of two demo tasks."""
    import random

    tasks = []
    for t in TASKS:
        rows = (DATA / f"{t['name']}.train.jsonl").read_text(encoding="utf-8").splitlines()
        random.Random(seed).shuffle(rows)
        train = base / f"{t['name']}-{n}-{seed}.train.jsonl"
        train.write_text("\n".join((rows * 4)[:n]) + "\n", encoding="utf-8")
        ev = base / f"{t['name']}.eval.jsonl"
        ev.write_text("\n".join((DATA / f"{t['name']}.eval.jsonl").read_text(encoding="utf-8").splitlines()[:50]) + "\n")
        tasks.append({**t, "train": str(train), "eval": str(ev)})
    return tasks


def job(base: Path, model: Path, n: int, seed: int, epochs: int) -> Any:
    raw = {"name": f"acc-{n}-{seed}", "model": str(model), "max_length": 128, "tasks": write_data(base, n, seed),
           "train": {"epochs": epochs, "learning_rate": 1e-3, "effective_batch_size": 16, "seed": seed,
                     "checkpoint_every": 1000, "keep_checkpoints": 1}}
    return spec_from_dict(raw, base_dir=base, shown_as="bench.toml", check_data=False)


def run(spec: Any, micro_batch: int, where: Path, history: list[Figures]) -> tuple[RunResult, dict[str, Any] | None]:
    """One run at `micro_batch` with the family's `history` (what the daemon hands a run: Launch.history):
    its result and its live ETA at 10 %."""
    rd = RunDir(where)
    shutil.rmtree(where, ignore_errors=True)
    rd.write_job(spec)
    rd.write_launch(Launch(micro_batch=micro_batch, device="cpu", progress_every_s=0.25, history=history))
    subprocess.run([sys.executable, "-m", "mtld.train", str(where)], check=True, capture_output=True)
    result = rd.read_result()
    if result is None:
        raise RuntimeError(f"{where}: the run left no result.json")
    return result, eta_at(where / "run.jsonl", 0.10)


def eta_at(log: Path, fraction: float) -> dict[str, Any] | None:
    """The first progress event at or past `fraction` of the steps: its eta_s and the time actually left."""
    events = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines() if line.strip()]
    end = next((e for e in reversed(events) if e["event"] == "run.finished"), None)
    at = next((e for e in events if e["event"] == "step.progress" and e["step"] >= fraction * e["total"]), None)
    if end is None or at is None or at.get("eta_s") is None:
        return None
    left = (datetime.fromisoformat(end["ts"]) - datetime.fromisoformat(at["ts"])).total_seconds()
    return {"step": at["step"], "total": at["total"], "eta_s": at["eta_s"], "actual_left_s": round(left, 2),
            "error": round(at["eta_s"] / left - 1, 4) if left > 0 else None}


def one_model(name: str, model: Path, work: Path, sizes: list[int], data: dict[str, int], epochs: int,
              rounds: int) -> list[dict]:
    """Every row `rounds` times (each round with its own earlier run and probe), then the medians."""
    started = time.monotonic()
    plans = {label: plan_summary(job(work, model, n, 2, epochs)) for label, n in data.items()}
    seen: dict[tuple[str, int], list[dict]] = {}
    for round_ in range(rounds):
        first_spec = job(work, model, data["small"], 1, epochs)
        first, _ = run(first_spec, 4, work / f"{name}-first", [])
        history = [runtime.run_record(first.figures())]
        probe_figures = run_probe(first_spec, "cpu")  # probe=True: the model reads it as a probe
        probed = runtime.run_record(probe_figures)
        prior = [first.figures(), probe_figures]  # what the daemon gives a run: Launch.history
        print(f"{name}, round {round_ + 1}: earlier run at 4: {first.duration_s} s; probe done", flush=True)
        for label, n in data.items():
            spec, plan = job(work, model, n, 2, epochs), plans[label]
            only = {r.micro_batch: r for r in runtime.predict(plan, history)}
            both = {r.micro_batch: r for r in runtime.predict(plan, history + [probed])}
            for m in sizes:
                result, live = run(spec, m, work / f"{name}-{label}-{m}", prior)
                if label == "large" and m == 4 and round_ == 0 and PICTURE_DIR is not None:  # for docs/estimates.md
                    from mtld.report.figure import draw_report

                    draw_report(work / f"{name}-{label}-{m}", PICTURE_DIR / f"estimate_report_{name.split()[0]}.png")
                actual = result.duration_s
                row = {
                    "model": name, "data": label, "examples": n * len(TASKS), "steps": plan.steps, "micro_batch": m,
                    "actual_s": actual, "predicted_history_s": round(only[m].seconds, 2), "basis_history": only[m].basis,
                    "error_history": round(only[m].seconds / actual - 1, 4),
                    "predicted_probe_s": round(both[m].seconds, 2), "error_probe": round(both[m].seconds / actual - 1, 4),
                    "live": live,
                }
                seen.setdefault((label, m), []).append(row)
                print(json.dumps(row), flush=True)
    print(f"{name}: {time.monotonic() - started:.0f} s", flush=True)
    return [combined(rows) for rows in seen.values()]


def combined(rows: list[dict]) -> dict:
    """One row from its rounds: medians, and how much the same run's duration varied between rounds."""
    med = lambda key: statistics.median(r[key] for r in rows)  # noqa: E731
    lives = [r["live"]["error"] for r in rows if r["live"] and r["live"]["error"] is not None]
    actuals = [r["actual_s"] for r in rows]
    return {**{k: rows[0][k] for k in ("model", "data", "examples", "steps", "micro_batch", "basis_history")},
            "rounds": len(rows), "actual_s": med("actual_s"), "spread": round(max(actuals) / min(actuals) - 1, 4),
            "predicted_history_s": med("predicted_history_s"), "error_history": med("error_history"),
            "predicted_probe_s": med("predicted_probe_s"), "error_probe": med("error_probe"),
            "live_error": statistics.median(lives) if lives else None, "each_round": rows}


def pct(x: float | None) -> str:
    return "?" if x is None else f"{x:+.1%}"


def markdown(rows: list[dict], meta: dict[str, Any]) -> str:
    lines = [
        "# Runtime estimates: predicted against actual duration",
        "",
        f"{meta['machine']}; torch threads per child: {meta['threads']}; every row run {meta['rounds']} times, "
        "each round with its own earlier run (micro-batch 4, data set 'small' with another seed) and probe; "
        "the figures are the medians over the rounds. 'same run, spread' is how much the duration of the very "
        "same run varied between rounds (max/min − 1): the machine's own noise, which no estimate can beat. "
        "Each column is its own median, so an error is not the row's predicted/actual. "
        "'probe' adds `mtld estimate --probe`'s calibration. Live ETA: the run's eta_s at the first progress "
        "event past 10 % of the steps against the time actually left.",
        "",
        "| model | data | steps | size | actual | same run, spread | predicted (1 run) | error | "
        "predicted (1 run + probe) | error | live ETA error at 10 % |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['data']} ({r['examples']}) | {r['steps']} | {r['micro_batch']} | {r['actual_s']:.1f} s | "
            f"{r['spread']:.0%} | {r['predicted_history_s']:.1f} s ({r['basis_history']}) | {pct(r['error_history'])} | "
            f"{r['predicted_probe_s']:.1f} s | {pct(r['error_probe'])} | {pct(r['live_error'])} |")
    within = lambda key, limit: sum(1 for r in rows if r[key] is not None and abs(r[key]) <= limit)  # noqa: E731
    worst = lambda key: max(abs(r[key]) for r in rows if r[key] is not None)  # noqa: E731
    n = len(rows)
    lines += ["", f"Within target: 1 run {within('error_history', 0.15)}/{n} rows (worst {worst('error_history'):.1%}), "
                  f"1 run + probe {within('error_probe', 0.15)}/{n} (worst {worst('error_probe'):.1%}), "
                  f"live at 10 % {within('live_error', 0.10)}/{n} (worst {worst('live_error'):.1%}); "
                  f"targets 15 % before the run, 10 % live. The same run's spread between rounds: "
                  f"median {statistics.median(r['spread'] for r in rows):.0%}, worst {max(r['spread'] for r in rows):.0%}."]
    each = [x for r in rows for x in r["each_round"]]
    lives = [abs(x["live"]["error"]) for x in each if x["live"] and x["live"]["error"] is not None]
    single = lambda errors, limit: f"{sum(e <= limit for e in errors)}/{len(errors)} (worst {max(errors):.1%})"  # noqa: E731
    lines += ["", f"Single rounds, each run against its own prediction: 1 run {single([abs(x['error_history']) for x in each], 0.15)}, "
                  f"1 run + probe {single([abs(x['error_probe']) for x in each], 0.15)}, live at 10 % {single(lives, 0.10)} "
                  "within target."]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=ROOT / "bench")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="tiny model only")
    ap.add_argument("--rounds", type=int, default=3, help="runs of every row; the table has the medians")
    args = ap.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    global PICTURE_DIR
    PICTURE_DIR = args.out
    from mtld.train.tinymodel import build_tiny_model, texts_from_files

    work = Path(tempfile.mkdtemp(prefix="mtld-acc-"))
    rows = []
    try:
        from bench.run import demo_model

        rows += one_model("tiny (2x64)", demo_model(), work, [2, 4, 8],
                          {"small": 300, "large": 600}, epochs=3, rounds=args.rounds)
        if not args.quick:
            larger = build_tiny_model(work / "bert-4x256", texts_from_files(sorted(DATA.glob("*.train.jsonl"))),
                                      layers=4, hidden=256, heads=4, vocab_size=3000)
            rows += one_model("4x256", larger, work, [2, 4, 8], {"small": 200, "large": 400}, epochs=2,
                              rounds=args.rounds)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    meta = {"machine": f"{os.cpu_count()} CPU cores, Linux, CPU device", "threads": args.threads, "rounds": args.rounds}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "estimate_accuracy.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    (args.out / "estimate_accuracy.md").write_text(markdown(rows, meta))
    print(markdown(rows, meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
