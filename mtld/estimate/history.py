"""A family's measured history: its finished runs (from the store) and its stored probes; a job's
earlier attempts. What the pure decisions (mtld.decide.family, mtld.decide.policy) read, as their records.

`family_figures` is what the daemon and `mtld train` hand the child
(Launch.history); `family_records` is the same history as the runtime model's
records (mtld.decide.runtime), for `mtld estimate` and `mtld status`. Probes live in
STATE/estimates/, one small JSON file per family, the last PROBES_KEPT kept;
`run_probe` makes one (`python -m mtld.train.probe` in a child process).

Torch-free: the probe's torch work happens in the child.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from mtld.config.jobspec import JobSpec
from mtld.disk import write_json_atomic
from mtld.config.settings import Settings
from mtld.decide import policy, runtime
from mtld.decide.family import family
from mtld.decide.runtime import RunRecord
from mtld.platform.machine import precision_for
from mtld.runs.figures import Figures
from mtld.runs.files import Launch
from mtld.runs.rundir import RunDir
from mtld.store import Job, Run, Store

PROBES_KEPT = 5


def job_family(spec: JobSpec, device: str) -> str:
    """The job's family on `device`, in the precision it trains in there (with this machine's facts)."""
    return family(spec, device, precision_for(spec.train.mixed_precision, device)[0])


def family_history(store: Store | None, fam: str) -> list[policy.FamilyRun]:
    """The family's finished runs, oldest first, as the policy reads them."""
    return [family_run(r) for r in store.family_runs(fam)] if store is not None else []


def family_run(run: Run) -> policy.FamilyRun:
    f = Figures.read(run.figures)
    return policy.FamilyRun(
        outcome=run.outcome, micro_batch=run.micro_batch, micro_batch_end=run.micro_batch_end,
        scaled_down=f.scaled_down, oom_count=f.oom_count, peak_bytes=f.peak_memory_bytes, budget_bytes=f.budget_bytes,
    )


def earlier_runs(store: Store, job: Job) -> list[policy.EarlierRun]:
    """The job's attempts so far, oldest first, as the policy reads them."""
    return [policy.EarlierRun(r.outcome, r.micro_batch, r.micro_batch_end, pressure_interrupt(r))
            for r in store.runs_for(job.id)]


def pressure_interrupt(run: Run) -> bool:
    """The run checkpointed and stopped itself because memory pressure stayed critical."""
    return run.outcome == "interrupted" and run.figures.get("stop_reason") == "memory_critical"


def probe_dir(settings: Settings) -> Path:
    """Where the stored probes live: STATE/estimates."""
    return settings.state_dir / "estimates"


def probe_file(probe_dir: Path, family: str) -> Path:
    return Path(probe_dir) / f"{hashlib.sha1(family.encode()).hexdigest()[:16]}.json"


def family_figures(store: Any, family: str, probe_dir: Path | None = None) -> list[Figures]:
    """What the family's finished runs (store.family_runs) and its stored probes measured, oldest
    first: the daemon hands it to the child (Launch.history) and `mtld estimate`/`status` model it."""
    history = []
    for run in store.family_runs(family) if store is not None else []:
        if run.outcome in ("succeeded", "interrupted") and run.figures.get("timing"):
            figures = Figures.read(run.figures)
            history.append(figures.model_copy(update={"micro_batch_end": run.micro_batch_end or run.micro_batch}))
    if probe_dir is not None:
        history += _read_probes(probe_file(probe_dir, family))
    return history


def family_records(store: Any, family: str, probe_dir: Path | None = None) -> list[RunRecord]:
    """The family's history as the runtime model's records (those with timings)."""
    return [r for r in map(runtime.run_record, family_figures(store, family, probe_dir)) if r is not None]


def _read_probes(path: Path) -> list[Figures]:
    try:
        probes = json.loads(path.read_text(encoding="utf-8")).get("probes", [])
        return [Figures.read(p) for p in probes]
    except (FileNotFoundError, ValueError):  # a cache of measurements: unreadable means none
        return []


def store_probe(probe_dir: Path, family: str, figures: Figures) -> None:
    """Keep a probe's figures with the family's last PROBES_KEPT - 1 probes."""
    path = probe_file(probe_dir, family)
    probes = (_read_probes(path) + [figures])[-PROBES_KEPT:]
    write_json_atomic(path, {"family": family, "probes": [p.stored() for p in probes]})


def run_probe(spec: JobSpec, device: str, *, timeout_s: float = 600) -> Figures:
    """The calibration child: a few timed steps per size on the job's longest steps. Raises on failure."""
    with tempfile.TemporaryDirectory(prefix="mtld-probe-") as tmp:
        rd = RunDir(tmp)
        rd.write_job(spec)
        rd.write_launch(Launch(micro_batch=2, device=device))
        done = subprocess.run([sys.executable, "-m", "mtld.train.probe", str(rd.path)], capture_output=True,
                              text=True, timeout=timeout_s, check=False)
        result = rd.read_result()
        if done.returncode != 0 or result is None:
            raise RuntimeError(f"the probe failed (exit {done.returncode}): {done.stderr.strip()[-500:]}")
        return result.figures()
