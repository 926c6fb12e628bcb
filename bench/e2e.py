"""Time to a model, end to end: `mtld submit` until `model/` is written, against a Trainer script doing the same.

    python -m bench.e2e [--repeats 3] [--epochs 10] [--contenders mtld mtld_next trainer] [--out bench]

The job (all-MiniLM-L6-v2 from the `bench` extra; the demo's sentiment, topic
and similarity tasks with their evaluation sets; effective batch 16, rate 5e-5,
10 % warm-up, an evaluation at each epoch's end) runs both ways, each in fresh
processes, as a user runs it:

- mtld, a family's first run: a fresh state folder, `mtld submit job.toml`,
  then `mtld daemon --exit-when-idle` (everything at its defaults: precision,
  attention dropout, compile, threads; the micro-batch starts at the safe 4,
  as it does with no history);
- mtld, the family's next run: the same after one untimed run of a one-epoch
  version of the job in that state folder (its headroom takes the next run
  one size up, to 8; its timings are the estimate's history);
- the Trainer: `python -m bench.trainer_script` (its best settings: bf16 where
  mtld picks it, `group_by_length`, fused AdamW, micro-batch 8 and gradient
  accumulation 2).

The clock starts just before the first process starts and stops at the newest
file in `model/` (the exported encoder); `wall_s` is until the last process
has exited. Rounds alternate the order; the ratio is the median of the ratios
within a round. The last evaluation's scores are shown beside the times: the
same work should score alike. Writes OUT/e2e.json and OUT/e2e.md.
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
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.real import real_model  # noqa: E402
from bench.run import load, machine, measured_on, ratio  # noqa: E402

DATA = ROOT / "examples" / "data"
CONTENDERS = ("mtld", "mtld_next", "trainer")
LABELS = {"mtld": "mtld, a family's first run (micro-batch 4)", "mtld_next": "mtld, the family's next run (8)",
          "trainer": "Trainer script (micro-batch 8, bf16 when mtld uses it, group_by_length)"}
NAMED = (("sentiment", "accuracy"), ("topic", "micro_f1"), ("similarity", "pearson"))  # as the Trainer script names them
METRICS = tuple(f"{task}_{metric}" for task, metric in NAMED)


def write_job(work: Path, model: Path, epochs: int, name: str = "e2e") -> Path:
    job = work / f"{name}.toml"
    job.write_text(f"""name = "{name}"
model = "{model}"
max_length = 128

[[tasks]]
name = "sentiment"
type = "classification"
train = "{DATA / 'sentiment.train.jsonl'}"
eval = "{DATA / 'sentiment.eval.jsonl'}"
labels = ["pos", "neg", "neutral"]

[[tasks]]
name = "topic"
type = "multilabel"
train = "{DATA / 'topic.train.jsonl'}"
eval = "{DATA / 'topic.eval.jsonl'}"
label_field = "topics"
labels = ["sports", "tech", "food", "travel", "finance"]

[[tasks]]
name = "similarity"
type = "regression"
train = "{DATA / 'similarity.train.jsonl'}"
eval = "{DATA / 'similarity.eval.jsonl'}"
text_field = "text_a"
text_pair_field = "text_b"
label_field = "score"

[train]
epochs = {epochs}
learning_rate = 5e-5
warmup_ratio = 0.1
weight_decay = 0.01
max_grad_norm = 1.0
effective_batch_size = 16
seed = 42
""")
    return job


def newest(folder: Path) -> float:
    return max(p.stat().st_mtime for p in folder.rglob("*") if p.is_file())


def run_mtld(work: Path, job: Path, earlier: Path | None = None) -> dict[str, Any]:
    """`earlier`: a job of the same family run first, untimed (the family's history)."""
    home = Path(tempfile.mkdtemp(prefix="home-", dir=work))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MTLD_")} | {"MTLD_HOME": str(home)}

    def mtld(*args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "mtld", *args], env=env, cwd=work, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"mtld {args[0]} exited {done.returncode}: {done.stderr[-2000:]}")
        return done.stdout

    if earlier is not None:
        mtld("submit", str(earlier))
        mtld("daemon", "--exit-when-idle", "--quiet")
    started = time.time()
    job_id = mtld("submit", str(job)).strip()
    mtld("daemon", "--exit-when-idle", "--quiet")
    wall = time.time() - started
    shown = json.loads(mtld("show", job_id, "--json"))
    run_dir = Path(shown["run_dir"])
    if shown["state"] != "succeeded":
        raise RuntimeError(f"the mtld job ended {shown['state']}")
    last = json.loads((run_dir / "metrics.json").read_text())["evals"][-1]["tasks"]
    scores = {f"{task}_{metric}": last[task][metric] for task, metric in NAMED}
    result = json.loads((run_dir / "result.json").read_text())
    return {"model_s": round(newest(run_dir / "model") - started, 1), "wall_s": round(wall, 1),
            "train_s": round(result["duration_s"], 1), "micro_batch": result["micro_batch_start"], "scores": scores}


def run_trainer(work: Path, model: Path, epochs: int, bf16: bool) -> dict[str, Any]:
    out = Path(tempfile.mkdtemp(prefix="trainer-", dir=work))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MTLD_")}
    started = time.time()
    done = subprocess.run([sys.executable, "-m", "bench.trainer_script", str(model), str(DATA), str(out),
                           "--epochs", str(epochs), *(["--bf16"] if bf16 else [])],
                          env=env, cwd=ROOT, capture_output=True, text=True)
    wall = time.time() - started
    if done.returncode != 0:
        raise RuntimeError(f"the Trainer script exited {done.returncode}: {done.stderr[-2000:]}")
    final = json.loads(done.stdout.strip().splitlines()[-1])
    return {"model_s": round(newest(out / "model") - started, 1), "wall_s": round(wall, 1),
            "train_s": round(final["train_runtime"], 1), "scores": {m: final[m] for m in METRICS}}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.e2e", description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--contenders", nargs="+", default=list(CONTENDERS), choices=CONTENDERS)
    parser.add_argument("--out", type=Path, default=ROOT / "bench")
    args = parser.parse_args()
    contenders = tuple(k for k in CONTENDERS if k in args.contenders)
    model = real_model()
    if model is None:
        print("e2e: skipped (the bench extra is not installed: pip install -e '.[bench]')")
        return
    from mtld.platform.machine import precision_for

    precision, why = precision_for("auto", "cpu")
    results: dict[str, Any] = {"machine": machine(0), "epochs": args.epochs, "repeats": args.repeats,
                               "precision": precision, "precision_reason": why}
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in contenders}
    with tempfile.TemporaryDirectory(prefix="mtld-e2e-") as tmp:
        work = Path(tmp)
        job, earlier = write_job(work, model, args.epochs), write_job(work, model, 1, name="earlier")
        for r in range(args.repeats):
            for kind in contenders if r % 2 == 0 else tuple(reversed(contenders)):
                if kind == "trainer":
                    run = run_trainer(work, model, args.epochs, precision == "bf16")
                else:
                    run = run_mtld(work, job, earlier if kind == "mtld_next" else None)
                runs[kind].append(run)
                print(f"  round {r + 1} {kind:8} model/ after {run['model_s']:6.1f} s  {run['scores']}", flush=True)
    results["runs"] = runs
    for kind, rs in runs.items():
        results[kind] = {"model_s": statistics.median(x["model_s"] for x in rs),
                         "wall_s": statistics.median(x["wall_s"] for x in rs),
                         "scores": {m: statistics.median(x["scores"][m] for x in rs) for m in METRICS}}
    # time ratios, the Trainer's over mtld's: above 1, mtld has the model sooner
    if "trainer" in runs:
        for kind in runs.keys() - {"trainer"}:
            results[f"trainer/{kind}"] = ratio([x["model_s"] for x in runs["trainer"]], [x["model_s"] for x in runs[kind]])
    results["load_after"] = load()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "e2e.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "e2e.md").write_text(markdown(results))
    print(markdown(results))


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [measured_on(m, f"all-MiniLM-L6-v2, three tasks (sentiment, topic, similarity: 1,200 training and 300 "
                            f"evaluation examples), {results['epochs']} epochs with an evaluation after each, effective "
                            f"batch 16, {results['precision']} ({results['precision_reason']}); each contender in fresh "
                            f"processes, {results['repeats']} rounds alternating, medians", results["load_after"]), "",
             "| | submit to model/ written | all processes ended | sentiment accuracy | topic micro-F1 | "
             "similarity Pearson |", "|---|---:|---:|---:|---:|---:|"]
    for kind in CONTENDERS:
        if kind not in results:
            continue
        row = results[kind]
        scores = " | ".join(f"{row['scores'][k]:.3f}" for k in METRICS)
        versus = f" (the Trainer's time / this: {results[f'trainer/{kind}']:.2f})" if f"trainer/{kind}" in results else ""
        lines.append(f"| {LABELS[kind]}{versus} | {row['model_s']:.0f} s | {row['wall_s']:.0f} s | {scores} |")
    lines += ["", "Ratios: medians of the rounds' ratios. Scores: the last evaluation's, medians. mtld's clock starts "
              "at its `mtld submit` (the next run's earlier run is before it)."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
