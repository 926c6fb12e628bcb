"""The I/O side of the runtime model: a job's plan summary, the family's history, the probe.

`plan_summary` tokenizes the job's data exactly like the trainer and walks the
batch plan (imports torch/transformers: for `mtld estimate` in the CLI, never
in the daemon). `family_records` reads the family's finished runs from the
store plus the stored probes; `run_probe` starts `python -m mtld.train.probe`
in a child process and stores what it measured. `estimate_job` puts them
together for `mtld estimate`; `render_table` / `as_json` are the last step.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mtld import estimate
from mtld.estimate import PlanSummary, Prediction, RunRecord
from mtld.jobspec import JobSpec
from mtld.rundir import Launch, RunDir, write_json_atomic

PROBES_KEPT = 5


def plan_summary(spec: JobSpec) -> PlanSummary:
    """Steps, padded tokens per micro-batch size, evaluations and saves of the job's whole run."""
    from mtld.train.data import load_tasks
    from mtld.train.model import load_tokenizer, quiet_transformers
    from mtld.train.plan import epoch_plan, padded_tokens

    quiet_transformers()
    tokenizer = load_tokenizer(spec.tokenizer or spec.model, trust_remote_code=spec.trust_remote_code)
    tasks = load_tasks(spec, tokenizer)
    train = spec.train
    lengths = [t.train.lengths for t in tasks]
    plans = [epoch_plan(lengths, batch_size=train.effective_batch_size, seed=train.seed, epoch=e,
                        strategy=train.sampling, temperature=train.temperature) for e in range(train.epochs)]
    return summarize(plans, lengths, [t.eval.lengths if t.eval is not None else None for t in tasks], train,
                     padded_tokens)


def summarize(plans: Sequence[Sequence[Any]], lengths: Sequence[Any], eval_lengths: Sequence[Any], train: Any,
              padded_tokens: Any) -> PlanSummary:
    steps = sum(len(p) for p in plans)
    tokens = {m: int(sum(padded_tokens(s.ids, lengths[s.task], min(m, train.effective_batch_size))
                         for p in plans for s in p)) for m in estimate.SIZES}
    evaluations = evaluation_count(steps, len(plans), train.eval_every, any(x is not None for x in eval_lengths))
    boundaries, number = set(), 0
    for p in plans:
        number += len(p)
        boundaries.add(number)
    checkpoints = boundaries | set(range(train.checkpoint_every, steps + 1, train.checkpoint_every))
    return PlanSummary(
        steps=steps, effective_batch=train.effective_batch_size, padded_tokens=tokens,
        evaluations=evaluations, eval_tokens=int(sum(int(x.sum()) for x in eval_lengths if x is not None)),
        saves=len(checkpoints) + 1,
    )


def evaluation_count(steps: int, epochs: int, eval_every: int, has_eval: bool) -> int:
    """Evaluations of a run: every `eval_every` steps and after the last step, else one per epoch."""
    if not has_eval:
        return 0
    return -(-steps // eval_every) if eval_every else epochs


# ---------------------------------------------------------------- history


def probe_file(probe_dir: Path, family: str) -> Path:
    return Path(probe_dir) / f"{hashlib.sha1(family.encode()).hexdigest()[:16]}.json"


def family_records(store: Any, family: str, probe_dir: Path | None = None) -> list[RunRecord]:
    """The family's finished runs with timings (store.family_runs), then its stored probes."""
    records = []
    for run in store.family_runs(family) if store is not None else []:
        if run.outcome not in ("succeeded", "interrupted"):
            continue
        r = estimate.run_record(run.figures, micro_batch=run.micro_batch_end or run.micro_batch)
        if r is not None:
            records.append(r)
    if probe_dir is not None:
        for figures in _read_probes(probe_file(probe_dir, family)):
            r = estimate.run_record(figures, probe=True)
            if r is not None:
                records.append(r)
    return records


def _read_probes(path: Path) -> list[dict[str, Any]]:
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("probes", [])
    except (FileNotFoundError, ValueError):
        return []


def store_probe(probe_dir: Path, family: str, figures: dict[str, Any]) -> None:
    path = probe_file(probe_dir, family)
    probes = (_read_probes(path) + [figures])[-PROBES_KEPT:]
    write_json_atomic(path, {"family": family, "probes": probes})


def run_probe(spec: JobSpec, device: str, *, timeout_s: float = 600) -> dict[str, Any]:
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
        return result


HISTORY_FIELDS = ("timing", "duration_s", "train_seconds", "peak_memory_bytes", "micro_batch_end", "samples",
                  "probe", "peaks_by_size", "startup_s")


def launch_history(store: Any, family: str, probe_dir: Path | None = None) -> dict[str, Any] | None:
    """Launch.timing_prior for the daemon (torch-free): the family's compact history; the child,
    which knows its plan, turns it into the model (mtld.train.loop.Trainer.blended_eta)."""
    history = []
    for run in store.family_runs(family):
        if run.outcome in ("succeeded", "interrupted") and run.figures.get("timing"):
            history.append({k: run.figures.get(k) for k in HISTORY_FIELDS if k in run.figures}
                           | {"micro_batch_end": run.micro_batch_end or run.micro_batch})
    if probe_dir is not None:
        history += [{k: p.get(k) for k in HISTORY_FIELDS if k in p} for p in _read_probes(probe_file(probe_dir, family))]
    return {"history": history} if history else None


def queued_estimate(spec: JobSpec, records: Sequence[RunRecord], micro_batch: int, *, done_fraction: float = 0.0,
                    counts: ExampleCounts | None = None) -> float | None:
    """Rough expected seconds of a queued job for `mtld status` (counts rows, no tokenizing);
    a job that already trained `done_fraction` of its steps has that much less to do."""
    counts = counts or ExampleCounts()
    try:
        examples = [counts.of(Path(t.train)) for t in spec.tasks]
    except (OSError, ValueError):
        return None
    train, left = spec.train, 1.0 - min(max(done_fraction, 0.0), 1.0)
    steps = sum(-(-n // train.effective_batch_size) for n in examples) * train.epochs
    evaluations = evaluation_count(steps, train.epochs, train.eval_every, any(t.eval for t in spec.tasks))
    return estimate.rough_seconds(records, micro_batch, round(sum(examples) * train.epochs * left),
                                  round(evaluations * left))


class ExampleCounts:
    """Rows per data file, remembered in a JSON file by (path, size, mtime) so that `mtld status`
    reads a large data set once, not on every call."""

    def __init__(self, cache: Path | None = None) -> None:
        self.cache = cache
        self.known: dict[str, list[int]] = {}
        self.changed = False
        if cache is not None:
            try:
                self.known = json.loads(cache.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                self.known = {}

    def of(self, path: Path) -> int:
        from mtld.records import read_rows

        st = path.stat()
        key, stamp = str(path.resolve()), [st.st_size, st.st_mtime_ns]
        hit = self.known.get(key)
        if hit is not None and hit[:2] == stamp:
            return hit[2]
        rows = sum(1 for _ in read_rows(path))
        self.known[key], self.changed = [*stamp, rows], True
        return rows

    def save(self) -> None:
        if self.cache is not None and self.changed:
            try:
                write_json_atomic(self.cache, {k: v for k, v in self.known.items() if Path(k).exists()})
            except OSError:
                pass  # a cache: status works without it


# ---------------------------------------------------------------- mtld estimate


def estimate_job(spec: JobSpec, *, store: Any, family: str, probe_dir: Path | None, available_bytes: int | None,
                 chosen: int | None, probe: bool = False, device: str = "cpu",
                 plan: PlanSummary | None = None) -> tuple[PlanSummary, list[Prediction]]:
    """`mtld estimate JOB.toml [--probe]`: the plan, optionally a probe (stored), then one row per size."""
    plan = plan or plan_summary(spec)
    if probe:
        figures = run_probe(spec, device)
        if probe_dir is not None:
            store_probe(probe_dir, family, figures)
        extra = [] if probe_dir is not None else [estimate.run_record(figures, probe=True)]
    else:
        extra = []
    records = family_records(store, family, probe_dir) + [r for r in extra if r is not None]
    return plan, estimate.predict(plan, records, available_bytes=available_bytes, chosen=chosen)


def chosen_size(store: Any, family: str, settings: Any, *, pressure: str, available_bytes: int | None,
                batch_size: str = "auto") -> int | None:
    """The size the daemon would start this job at now (same calls as the daemon)."""
    from mtld import policy
    from mtld.family import family_run

    history = [family_run(r) for r in store.family_runs(family)] if store is not None else []
    pinned = batch_size != "auto"
    size = int(batch_size) if pinned else policy.family_start_size(
        history, settings.train.start_batch_size, settings.memory.headroom)[0]
    return policy.place_run(size, pressure=pressure, available_bytes=available_bytes,
                            peaks=policy.peaks_by_size(history), pinned=pinned).micro_batch


def duration_text(seconds: float | None) -> str:
    """1m05s, 2h03m; ? when unknown."""
    if seconds is None:
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _bytes(n: int | None) -> str:
    return "?" if n is None else f"{n / 2**20:,.0f} MiB"


def render_table(plan: PlanSummary, rows: Sequence[Prediction]) -> str:
    lines = [f"{plan.steps} optimizer steps, {plan.evaluations} evaluations, {plan.saves} saves",
             f"{'size':>4}  {'duration':>9}  {'peak memory':>12}  {'fits now':>8}  basis"]
    for r in rows:
        fits = {True: "yes", False: "no", None: "?"}[r.fits]
        peak = _bytes(r.peak_bytes) + ("*" if r.peak_extrapolated else "")
        mark = "  <- mtld would choose this" if r.chosen else ""
        lines.append(f"{r.micro_batch:>4}  {duration_text(r.seconds):>9}  {peak:>12}  {fits:>8}  {r.basis}{mark}")
    if any(r.extrapolated or r.peak_extrapolated for r in rows):
        lines.append("extrapolated rows (basis 'extrapolated from', peaks marked *) are less certain; "
                     "`mtld estimate --probe` measures every size")
    return "\n".join(lines)


def as_json(plan: PlanSummary, rows: Sequence[Prediction]) -> dict[str, Any]:
    return {"plan": {"steps": plan.steps, "evaluations": plan.evaluations, "saves": plan.saves,
                     "padded_tokens": {str(k): v for k, v in plan.padded_tokens.items()}},
            "rows": [r.as_dict() for r in rows]}
