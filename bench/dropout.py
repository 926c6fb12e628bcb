"""Attention dropout: the checkpoint's (0.1) against none, for speed and for the final score.

Speed: fresh `python -m mtld.train` runs of the all-MiniLM-L6-v2 job of
bench.fresh (every micro-batch 192 tokens wide, micro-batch 8), in fp32 and in
bf16, `attention_dropout = "model"` and `0.0` alternating, `repeats` rounds;
the ratio is the median of the within-round ratios of samples/s.

Score: whole runs, seeds 1, 2 and 3 each way: the demo job (tiny model, 3
epochs, micro-batch 8) and the real encoder on the demo's four tasks (2
epochs, rate 5e-5, micro-batch 8, the default precision). The score is the
final evaluation's (the mean over tasks of each task's primary metric). The
tolerance, as for bf16: no seed's score more than 0.01 below the model's own
setting.

    python -m bench.dropout [--repeats 3] [--steps 16] [--seeds 1 2 3] [--skip speed demo real]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.fresh import BATCH, fresh_run_dir, write_job  # noqa: E402
from bench.real import real_model  # noqa: E402
from bench.run import demo_model, load, machine, ratio  # noqa: E402

SETTINGS = {"model": '"model"', "none": "0.0"}
TOLERANCE = 0.01


def run(run_dir: Path, threads: int) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MTLD_")} | {"OMP_NUM_THREADS": str(threads)}
    done = subprocess.run([sys.executable, "-m", "mtld.train", str(run_dir)], env=env, cwd=ROOT, capture_output=True,
                          text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{run_dir}: exited {done.returncode}: {done.stderr[-2000:]}")
    result = json.loads((run_dir / "result.json").read_text())
    metrics = run_dir / "metrics.json"  # none when the job has no evaluation data
    history = json.loads(metrics.read_text())["evals"] if metrics.exists() else []
    return {"samples_per_s": result["samples_per_s"], "score": history[-1]["score"] if history else None}


def speed(work: Path, model: Path, steps: int, repeats: int, threads: int) -> list[dict[str, Any]]:
    rows = []
    for precision in ("off", "bf16"):
        jobs = {}  # write_job names its file by the precision: one per setting here
        for name, value in SETTINGS.items():
            job = write_job(work, model, precision, steps, f"attention_dropout = {value}")
            jobs[name] = job.rename(job.with_name(f"job-{precision}-{name}.toml"))
        runs: dict[str, list[float]] = {name: [] for name in SETTINGS}
        for r in range(repeats):
            for name in (SETTINGS if r % 2 == 0 else list(SETTINGS)[::-1]):
                runs[name].append(run(fresh_run_dir(work, jobs[name], threads), threads)["samples_per_s"])
                print(f"  speed {precision} round {r + 1} {name:5} {runs[name][-1]:6.2f} samples/s", flush=True)
        rows.append({"precision": precision, "runs": runs,
                     **{name: round(statistics.median(v), 2) for name, v in runs.items()},
                     "ratio": ratio(runs["none"], runs["model"])})
    return rows


def scores(work: Path, spec: Any, seeds: list[int], threads: int, label: str, **train: Any) -> dict[str, Any]:
    from mtld.config.settings import Settings
    from mtld.runs.files import launch_for
    from mtld.runs.rundir import RunDir

    out: dict[str, Any] = {"seeds": seeds}
    for name, value in SETTINGS.items():
        out[name] = []
        for seed in seeds:
            settings = {**train, "seed": seed, "attention_dropout": json.loads(value)}
            s = spec.model_copy(update={"train": spec.train.model_copy(update=settings)})
            rd = RunDir(Path(tempfile.mkdtemp(prefix="run-", dir=work)))
            rd.write_job(s)
            rd.write_launch(launch_for(Settings(), micro_batch=BATCH, device="cpu").model_copy(update={"threads": threads}))
            out[name].append(run(rd.path, threads))
            print(f"  score {label} {name:5} seed {seed}: {out[name][-1]['score']:.4f} "
                  f"({out[name][-1]['samples_per_s']} samples/s)", flush=True)
    out["worst_drop"] = round(max(m["score"] - n["score"] for m, n in zip(out["model"], out["none"])), 4)
    out["within_tolerance"] = out["worst_drop"] <= TOLERANCE
    return out


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [f"Measured {m['date']} on {m['cpu']} ({m['cores']} cores, torch threads {m['torch_threads']}), torch "
             f"{m['torch']}; load average {m['load_before']} before, {results['load_after']} after.", ""]
    if "speed" in results:
        lines += [f"Speed: all-MiniLM-L6-v2, every micro-batch 192 tokens wide, micro-batch 8, {results['steps']} "
                  f"steps, each run a fresh `python -m mtld.train`, {results['repeats']} rounds alternating, medians.",
                  "", "| precision | attention dropout 0.1 (the model's): samples/s | none: samples/s | none / model's |",
                  "|---|---|---|---|"]
        lines += [f"| {'fp32' if r['precision'] == 'off' else r['precision']} | {r['model']} | {r['none']} | "
                  f"{r['ratio']:.3f} |" for r in results["speed"]]
        lines.append("")
    for key, label in (("demo", "the demo job (tiny model, 3 epochs)"),
                       ("real", "all-MiniLM-L6-v2 on the demo's four tasks (2 epochs, rate 5e-5)")):
        if key not in results:
            continue
        r = results[key]
        model_s, none_s = (" / ".join(f"{x['score']:.4f}" for x in r[name]) for name in ("model", "none"))
        lines += [f"Final score, {label}, seeds {', '.join(map(str, r['seeds']))}: the model's "
                  f"{model_s}, none {none_s}; the worst seed "
                  f"{'lost' if r['worst_drop'] > 0 else 'gained'} {abs(r['worst_drop']):.4f} "
                  f"({'within' if r['within_tolerance'] else 'OUTSIDE'} the tolerance of {TOLERANCE}).", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.dropout", description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip", nargs="*", default=[], choices=["speed", "demo", "real"])
    parser.add_argument("--out", type=Path, default=ROOT / "bench")
    args = parser.parse_args()
    from bench.run import with_model
    from mtld.config.jobspec import load_job

    model = real_model()
    results: dict[str, Any] = {"machine": machine(args.threads), "steps": args.steps, "repeats": args.repeats}
    with tempfile.TemporaryDirectory(prefix="mtld-dropout-") as tmp:
        work = Path(tmp)
        if "speed" not in args.skip and model is not None:
            results["speed"] = speed(work, model, args.steps, args.repeats, args.threads)
        if "demo" not in args.skip:
            demo_model()
            results["demo"] = scores(work, load_job(ROOT / "examples" / "demo.toml"), args.seeds, args.threads, "demo")
        if "real" not in args.skip and model is not None:
            spec = with_model(load_job(ROOT / "examples" / "demo.toml"), model, "auto")
            results["real"] = scores(work, spec, args.seeds, args.threads, "real", epochs=2, learning_rate=5e-5)
    results["load_after"] = load()
    (args.out / "dropout.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "dropout.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
