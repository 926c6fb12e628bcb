"""Does returning freed heap to the OS (glibc's malloc_trim(0)) lower a CPU run's resident set after a
memory-guard scale-down? A benchmark program, not a test: it prints figures and writes them to
bench/trim.json and bench/trim.md, which docs/benchmarks.md quotes.

    python -m bench.trim [--repeats 3] [--steps 20] [--after-steps 40]

Each round builds a 4-layer, 256-wide BERT on the demo data (max length 128), trains `--steps`
optimizer steps at micro-batch 8 in a fresh process, then halves the micro-batch twice as the guard
would (8 → 4 → 2, mtld.train.step.StepRunner.scale_down) and trains `--after-steps` more at 2. The
resident set is read before the scale-down, right after it, and after the steps at 2, once with the
scale-down's clean-up without malloc_trim(0) (gc, the allocator cache) and once with it (what mtld
does); the two variants run in alternating processes and the medians are reported.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MiB = 2**20


def one_round(model: Path, *, trim: bool, steps: int, after_steps: int) -> dict[str, Any]:
    """In this (fresh) process: train at 8, scale down to 2, read the resident set around it."""
    import structlog
    import torch

    from mtld.config.jobspec import JobSpec
    from mtld.train import device as dev
    from mtld.train.guard import NoGuard
    from mtld.train.model import quiet_transformers
    from mtld.train.setup import build
    from mtld.train.signals import StopFlag

    torch.set_num_threads(1)
    quiet_transformers()
    data = ROOT / "examples" / "data"
    spec = JobSpec.model_validate({
        "name": "trim", "model": str(model), "max_length": 128,
        "tasks": [{"name": "sentiment", "type": "classification", "train": str(data / "sentiment.train.jsonl")},
                  {"name": "entities", "type": "token_classification", "train": str(data / "entities.train.jsonl"),
                   "text_field": "tokens", "label_field": "tags"}],
        "train": {"effective_batch_size": 8, "epochs": 1},
    })
    cpu = torch.device("cpu")
    parts = build(spec, cpu, 8, stop=StopFlag(), guard=NoGuard(), log=structlog.get_logger())
    plan = parts.plans[0]
    for i, step in enumerate(plan[:steps]):
        parts.runner.run(step, i)
    rss = dev.device_used_bytes
    before = rss(cpu)
    parts.runner.trim_heap = trim  # what a guard's scale-down does: the cache, gc and (or not) malloc_trim(0)
    started = time.perf_counter()
    parts.runner.scale_down("pressure", steps)
    parts.runner.scale_down("pressure", steps)
    scale_ms = (time.perf_counter() - started) * 1000 / 2
    after = rss(cpu)
    after_one = None
    for i, step in enumerate(plan[steps:steps + after_steps], steps):
        parts.runner.run(step, i)
        after_one = after_one or rss(cpu)
    return {"trim": trim, "scale_down_ms": scale_ms, "before_mib": before / MiB, "after_mib": after / MiB,
            "after_one_step_mib": after_one / MiB, "after_steps_mib": rss(cpu) / MiB}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--after-steps", type=int, default=40)
    parser.add_argument("--round", choices=["trim", "plain"], help=argparse.SUPPRESS)  # one round, in a child
    parser.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.round:
        print(json.dumps(one_round(args.model, trim=args.round == "trim", steps=args.steps,
                                   after_steps=args.after_steps)))
        return
    import platform

    import torch

    from mtld.train.tinymodel import build_tiny_model, texts_from_files

    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="mtld-bench-trim-") as tmp:
        model = Path(tmp) / "model"
        texts = texts_from_files(sorted((ROOT / "examples" / "data").glob("*.train.jsonl")))
        build_tiny_model(model, texts, layers=4, hidden=256, heads=4)
        for _ in range(args.repeats):
            for variant in ("plain", "trim"):
                done = subprocess.run([sys.executable, "-m", "bench.trim", "--round", variant, "--model", str(model),
                                       "--steps", str(args.steps), "--after-steps", str(args.after_steps)],
                                      cwd=ROOT, capture_output=True, text=True, check=True)
                rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
                print(rows[-1], flush=True)
    medians = {}
    for variant in (False, True):
        mine = [r for r in rows if r["trim"] is variant]
        medians["trim" if variant else "plain"] = {
            "before_mib": round(statistics.median(r["before_mib"] for r in mine), 1),
            "scale_down_ms": round(statistics.median(r["scale_down_ms"] for r in mine), 1),
            # each round against its own start: processes differ by tens of MiB before anything happens
            **{f"{key}_change_mib": round(statistics.median(r[f"{key}_mib"] - r["before_mib"] for r in mine), 1)
               for key in ("after", "after_one_step", "after_steps")},
        }
    report = {"measured": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "machine": f"{platform.system()} {platform.machine()}, {platform.libc_ver()[0]} "
                         f"{platform.libc_ver()[1]}, torch {torch.__version__}",
              "repeats": args.repeats, "steps": args.steps, "after_steps": args.after_steps,
              "medians": medians, "rounds": rows}
    (ROOT / "bench" / "trim.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    plain, trim = medians["plain"], medians["trim"]
    lines = [
        f"Measured {report['measured']} on {report['machine']}; {args.repeats} alternating rounds of each variant "
        f"(4x256 BERT, demo data, 1 thread, {args.steps} steps at 8, then 8 → 4 → 2 as the guard does it and "
        f"{args.after_steps} steps at 2). Each round's resident set is compared with its own before the "
        "scale-down (processes differ by tens of MiB from the start); medians.",
        "",
        f"| scale-down clean-up | resident set before | change right after | after 1 step at 2 | after "
        f"{args.after_steps} steps at 2 | one scale-down took |",
        "|---|---:|---:|---:|---:|---:|",
        *(f"| {label} | {m['before_mib']} MiB | {m['after_change_mib']:+} MiB | {m['after_one_step_change_mib']:+} MiB "
          f"| {m['after_steps_change_mib']:+} MiB | {m['scale_down_ms']} ms |"
          for label, m in (("cache and gc only", plain), ("with malloc_trim(0)", trim))),
    ]
    (ROOT / "bench" / "trim.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
