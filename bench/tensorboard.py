"""Does writing TensorBoard event files slow the training loop? The demo job with logging.tensorboard off and on.

    python -m bench.tensorboard [--out bench] [--repeats 4]

Each run is the demo job (examples/demo.toml: 300 optimizer steps, four tasks) at micro-batch 8, one
torch thread, started as the daemon starts it (`python -m mtld.train RUN_DIR`), so every contender is a
fresh process; off and on alternate run by run (off, on, on, off, ...). The rate is the run's own
training samples/s (result.json: evaluation, checkpoints and export left out), the ratio the median of
the ratios of the runs taken side by side; and, less moved by other load on the machine, the whole child's
CPU seconds. Two rows: progress events every 5 s (the default:
train.progress_every_s, where the board writes), and every step (its worst case: a write per step).
Writes OUT/tensorboard.json and OUT/tensorboard.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.run import demo_model, load, machine, ratio  # noqa: E402
from mtld.config.jobspec import load_job  # noqa: E402
from mtld.runs.files import Launch  # noqa: E402
from mtld.runs.rundir import RunDir  # noqa: E402

SETTINGS = {"progress every 5 s (the default)": 5.0, "progress every step (worst case)": 0.0}


def one_run(work: Path, *, tensorboard: bool, progress_every_s: float) -> dict[str, Any]:
    rd = RunDir(work / "run")
    shutil.rmtree(rd.path, ignore_errors=True)
    rd.write_job(load_job(ROOT / "examples" / "demo.toml"))
    rd.write_launch(Launch(micro_batch=8, device="cpu", threads=1, progress_every_s=progress_every_s,
                           tensorboard=tensorboard))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MTLD_")} | {"OMP_NUM_THREADS": "1"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, "-m", "mtld.train", str(rd.path)], env=env, check=True, capture_output=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)  # the whole child: imports too
    result = rd.read_result()
    if result is None or result.samples_per_s is None:
        raise RuntimeError(f"{rd.path}: the run left no result.json with its rate")
    wrote = list((rd.path / "tb").glob("events.out.tfevents.*"))
    if tensorboard != bool(wrote):
        raise RuntimeError(f"tensorboard={tensorboard}, but event files: {wrote}")
    return {"samples_per_s": result.samples_per_s, "duration_s": result.duration_s, "cpu_s": cpu_s,
            "event_bytes": sum(f.stat().st_size for f in wrote)}


def compare(work: Path, progress_every_s: float, repeats: int) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
    for r in range(repeats):
        for name in (("off", "on") if r % 2 == 0 else ("on", "off")):
            runs[name].append(one_run(work, tensorboard=name == "on", progress_every_s=progress_every_s))
    row: dict[str, Any] = {"progress_every_s": progress_every_s, "runs": runs}
    for name, rs in runs.items():
        row[name] = {"samples_per_s": round(statistics.median(x["samples_per_s"] for x in rs), 1),
                     "duration_s": round(statistics.median(x["duration_s"] for x in rs), 2),
                     "cpu_s": round(statistics.median(x["cpu_s"] for x in rs), 2)}
    row["ratio"] = ratio([x["samples_per_s"] for x in runs["on"]], [x["samples_per_s"] for x in runs["off"]])
    # the same work per run: CPU seconds off / on is on's rate per CPU-second against off's (load on the
    # machine inflates the wall clock, much less the CPU time a one-thread run uses)
    row["cpu_ratio"] = ratio([x["cpu_s"] for x in runs["off"]], [x["cpu_s"] for x in runs["on"]])
    row["event_bytes"] = statistics.median(x["event_bytes"] for x in runs["on"])
    return row


def write_cost(calls: int = 2000) -> dict[str, float]:
    """The writes alone, in this process: one progress event's scalars (7), one evaluation's (4 tasks of 3
    metrics and the score), and closing the writer (what is still queued goes to the file)."""
    import time

    from mtld.train.board import Board

    fields = {"loss": 1.25, "lr": 1e-3, "samples_per_s": 500.0, "tokens_per_s": 1.5e4, "micro_batch": 8, "eta_s": 3.0}
    record = {"score": 0.5, "tasks": {f"task{k}": {"a": 0.5, "b": 0.6, "c": 0.7} for k in range(4)}}
    with tempfile.TemporaryDirectory() as folder:
        board = Board(Path(folder), hparams={"epochs": 3})
        started = time.perf_counter()
        for step in range(calls):
            board.progress(step, fields, 2**30)
        progress_s = (time.perf_counter() - started) / calls
        started = time.perf_counter()
        for step in range(calls // 10):
            board.eval(step, record)
        eval_s = (time.perf_counter() - started) / (calls // 10)
        started = time.perf_counter()
        board.close()
        close_s = time.perf_counter() - started
    return {"progress_us": round(progress_s * 1e6, 1), "eval_us": round(eval_s * 1e6, 1),
            "close_ms": round(close_s * 1e3, 2)}


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [f"Measured {m['date']} on {m['cpu']} ({m['cores']} cores, torch threads 1), torch {m['torch']}; the demo "
             f"job at micro-batch 8, each run a fresh `python -m mtld.train`, off and on alternating; medians of "
             f"{results['repeats']} runs each; load average {m['load_before']} before, {m['load_after']} after.", "",
             "| progress events | off: samples/s | on: samples/s | on / off (wall) | off: CPU s | on: CPU s | "
             "on / off (per CPU-second) | event file |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for label, row in results["rows"].items():
        lines.append(f"| {label} | {row['off']['samples_per_s']} | {row['on']['samples_per_s']} | {row['ratio']:.3f} | "
                     f"{row['off']['cpu_s']} | {row['on']['cpu_s']} | {row['cpu_ratio']:.3f} | "
                     f"{row['event_bytes'] / 1024:.0f} KiB |")
    lines += ["", "Wall: the run's own training samples/s (result.json; evaluation and checkpoints left out), the median "
              "of the ratios of runs taken side by side. Per CPU-second: the whole child's CPU time, imports and set-up "
              "included (with TensorBoard on, importing it costs a fraction of a second of that)."]
    cost = results["write_cost"]
    step_ms = 1000 * 16 / results["rows"]["progress every step (worst case)"]["off"]["samples_per_s"]  # 16 a step
    lines += ["", f"The writes alone (in one process, {cost['progress_us']} µs per progress event, {cost['eval_us']} µs "
              f"per evaluation of 4 tasks, {cost['close_ms']} ms to close the writer) against a demo step of "
              f"{step_ms:.1f} ms: {cost['progress_us'] / 10 / step_ms:.2f} % of a step with a progress event at "
              "every step, nothing at the default of one every 5 s."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "bench")
    parser.add_argument("--repeats", type=int, default=4)
    args = parser.parse_args(argv)
    demo_model()
    results: dict[str, Any] = {"machine": machine(1), "repeats": args.repeats, "rows": {}}
    work = Path(tempfile.mkdtemp(prefix="mtld-tensorboard-"))
    try:
        for label, every in SETTINGS.items():
            row = results["rows"][label] = compare(work, every, args.repeats)
            print(f"{label}: on / off {row['ratio']:.3f} ({row['on']['samples_per_s']} vs {row['off']['samples_per_s']} "
                  "samples/s)", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results["write_cost"] = write_cost()
    results["machine"]["load_after"] = load()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "tensorboard.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    table = markdown(results)
    (args.out / "tensorboard.md").write_text(table, encoding="utf-8")
    print("\n" + table)
    return results


if __name__ == "__main__":
    main()
