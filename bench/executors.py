"""What a Ray cluster costs a run against the local executor, on this machine. A benchmark program, not a
test: it prints figures and writes bench/executors.json and bench/executors.md, which docs/benchmarks.md quotes.

    python -m bench.executors [--repeats 3]

Each round queues the same short job (examples/sentiment.toml on the demo's tiny model) in a fresh
MTLD_HOME and runs `mtld daemon --exit-when-idle`, once with `executor.kind = "local"` and once with
`"ray"` against a local Ray head on 127.0.0.1 (tests/raycluster.py; started here, stopped at the end),
alternating which goes first. The Ray run asks for every core (`num_cpus`), so both train with the same
thread count. From the logs:

- submit to first step: `job.submitted` in the daemon log to the run's first `step.progress`;
- per-run overhead: the daemon's `run.exited` `wall_s` (launch to recorded end) less the run's own
  `duration_s` (result.json: from the child's start to its end), i.e. what the executor adds around
  the child (a process spawn, or a Ray job's submission, runtime_env set-up, polling and log copy).
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
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
JOB = ROOT / "examples" / "sentiment.toml"


def events(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def stamp(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(event["ts"]).timestamp()


def one_round(kind: str, address: str | None, home: Path) -> dict[str, float]:
    env = {**os.environ, "MTLD_HOME": str(home), "MTLD_DAEMON__NOTIFY": "false", "MTLD_DAEMON__PREVENT_SLEEP": "false",
           "MTLD_DAEMON__POLL_INTERVAL_S": "0.5", "MTLD_TRAIN__PROGRESS_EVERY_S": "0", "MTLD_TRAIN__DEVICE": "cpu",
           "MTLD_EXECUTOR__KIND": kind}
    env.pop("MTLD_CONFIG", None)
    if kind == "ray":
        env.update({"MTLD_EXECUTOR__RAY__ADDRESS": address, "MTLD_EXECUTOR__RAY__PYTHON": sys.executable,
                    # the run may use every core, as a local run does (Ray sets OMP_NUM_THREADS to num_cpus)
                    "MTLD_EXECUTOR__RAY__NUM_CPUS": str(os.cpu_count()),
                    "MTLD_EXECUTOR__RAY__RUNTIME_ENV": json.dumps({"env_vars": {"PYTHONPATH": str(ROOT)}})})
    mtld = [sys.executable, "-m", "mtld"]
    subprocess.run([*mtld, "submit", str(JOB)], env=env, check=True, capture_output=True)
    subprocess.run([*mtld, "daemon", "--exit-when-idle", "--quiet"], env=env, check=True, capture_output=True,
                   timeout=600)
    daemon = events(home / "logs" / "mtld.jsonl")
    [run_dir] = (home / "runs").iterdir()
    run = events(run_dir / "run.jsonl")
    submitted = next(e for e in daemon if e["event"] == "job.submitted")
    exited = next(e for e in daemon if e["event"] == "run.exited")
    first_step = next(e for e in run if e["event"] == "step.progress")
    assert exited["outcome"] == "succeeded", exited
    return {"submit_to_first_step_s": round(stamp(first_step) - stamp(submitted), 3),
            "overhead_s": round(exited["wall_s"] - exited["duration_s"], 3),
            "wall_s": exited["wall_s"]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "bench")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from tests import raycluster

    model = ROOT / "examples" / "tiny-bert"
    if not (model / "config.json").exists():
        subprocess.run([sys.executable, "-m", "mtld.train.tinymodel", str(model),
                        *map(str, sorted((ROOT / "examples" / "data").glob("*.train.jsonl")))], check=True,
                       capture_output=True)
    load_before = os.getloadavg()
    rows: dict[str, list[dict[str, float]]] = {"local": [], "ray": []}
    ray_dir = Path(tempfile.mkdtemp(prefix="mtld-ray-", dir="/tmp"))
    try:
        address = raycluster.start(ray_dir)
        with tempfile.TemporaryDirectory(prefix="mtld-bench-exec-") as tmp:
            for r in range(args.repeats):
                for kind in (("local", "ray") if r % 2 == 0 else ("ray", "local")):
                    home = Path(tmp) / f"{kind}-{r}"
                    rows[kind].append(one_round(kind, address, home))
                    print(kind, rows[kind][-1], flush=True)
                    shutil.rmtree(home, ignore_errors=True)
    finally:
        raycluster.stop(ray_dir)
        shutil.rmtree(ray_dir, ignore_errors=True)
    medians = {kind: {key: round(statistics.median(r[key] for r in runs), 2) for key in runs[0]}
               for kind, runs in rows.items()}
    import platform

    report = {"measured": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
              "load_before": [round(x, 2) for x in load_before], "load_after": [round(x, 2) for x in os.getloadavg()],
              "repeats": args.repeats, "job": "examples/sentiment.toml on the demo's tiny model", "medians": medians,
              "runs": rows}
    (args.out / "executors.json").write_text(json.dumps(report, indent=2) + "\n")
    m = medians
    lines = [
        f"Measured {report['measured']} ({report['machine']}); medians of {args.repeats} alternating rounds; "
        f"load average {report['load_before']} before, {report['load_after']} after. "
        "Command: `python -m bench.executors`.",
        "",
        "| executor | submit to first step | per-run overhead (wall less the run's own time) | run wall time |",
        "|---|---|---|---|",
        *(f"| {kind} | {m[kind]['submit_to_first_step_s']} s | {m[kind]['overhead_s']} s | {m[kind]['wall_s']} s |"
          for kind in ("local", "ray")),
        f"| ray - local | {m['ray']['submit_to_first_step_s'] - m['local']['submit_to_first_step_s']:+.2f} s "
        f"| {m['ray']['overhead_s'] - m['local']['overhead_s']:+.2f} s | |",
    ]
    (args.out / "executors.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
