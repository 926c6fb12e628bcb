"""Threads next to a busy program: the demo job with torch's thread count pinned, and with train.threads = "auto".

    python -m bench.threads [--out bench] [--repeats 2]

The demo job (examples/demo.toml) runs at micro-batch 8 as the daemon starts
it (`python -m mtld.train RUN_DIR`), first on a quiet machine, then next to
one busy program (`python -c "while True: pass"`, one core's worth), with:
  - pinned: the thread count torch starts with (one per core), which is what
    mtld did before the governor and what a hand-written loop gets;
  - auto: the governor (mtld/train/threads.py), checking every 2 s;
  - 1: one thread, pinned.
Writes OUT/threads.json and OUT/threads.md.
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
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.run import demo_model  # noqa: E402
from mtld.config.jobspec import load_job  # noqa: E402
from mtld.runs.rundir import RunDir  # noqa: E402
from mtld.runs.files import Launch  # noqa: E402


def default_threads() -> int:
    out = subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"], env=child_env(),
                         capture_output=True, text=True, check=True)
    return int(out.stdout)


def child_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}


def one_run(work: Path, threads: int | str) -> dict[str, Any]:
    demo_model()
    rd = RunDir(work / "run")
    shutil.rmtree(rd.path, ignore_errors=True)
    rd.write_job(load_job(ROOT / "examples" / "demo.toml"))
    rd.write_launch(Launch(micro_batch=8, device="cpu", threads=threads))
    subprocess.run([sys.executable, "-m", "mtld.train", str(rd.path)], env=child_env(), check=True, capture_output=True)
    result = rd.read_result()
    if result is None:
        raise RuntimeError(f"{rd.path}: the run left no result.json")
    changes = [json.loads(line) for line in (rd.path / "run.jsonl").read_text().splitlines() if '"threads.changed"' in line]
    return {"samples_per_s": result.samples_per_s, "duration_s": result.duration_s,
            "threads_changed": [(c["from"], c["to"]) for c in changes]}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=ROOT / "bench")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    cores = default_threads()
    variants: dict[str, int | str] = {f"pinned at {cores} (torch's default)": cores, "auto": "auto", "pinned at 1": 1}
    rows = []
    work = Path(tempfile.mkdtemp(prefix="mtld-threads-"))
    try:
        for busy in (False, True):
            hog = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
            try:
                for name, threads in variants.items():
                    runs = [one_run(work, threads) for _ in range(args.repeats)]
                    row = {"machine": "one busy program" if busy else "quiet", "threads": name,
                           "samples_per_s": statistics.median(r["samples_per_s"] for r in runs),
                           "duration_s": statistics.median(r["duration_s"] for r in runs), "runs": runs}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
            finally:
                if hog is not None:
                    hog.kill()
                    hog.wait()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    lines = ["# Threads next to a busy program", "",
             f"The demo job at micro-batch 8 on {os.cpu_count()} CPU cores (Linux); medians of {args.repeats} runs.", "",
             "| machine | threads | samples/s | whole run | thread changes |", "|---|---|---:|---:|---|"]
    for r in rows:
        changed = "; ".join(" ".join(f"{a}→{b}" for a, b in run["threads_changed"]) or "none" for run in r["runs"])
        lines.append(f"| {r['machine']} | {r['threads']} | {r['samples_per_s']:.0f} | {r['duration_s']:.1f} s | {changed} |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "threads.json").write_text(json.dumps({"cores": cores, "rows": rows}, indent=2) + "\n")
    (args.out / "threads.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
