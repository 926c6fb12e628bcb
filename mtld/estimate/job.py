"""`mtld estimate JOB.toml [--probe]`: one job file's expected duration and peak at each size.

`plan_summary` tokenizes the job's data exactly like the trainer and walks its
batch plan (it imports torch/transformers: only `mtld estimate` and the bench
call it, never the daemon or `mtld status`). `estimate_job` adds the family's
history (mtld.estimate.history), optionally a fresh probe, and the size the daemon would
start at now (mtld.decide.family.start_size), and asks the runtime model
(mtld.decide.runtime) for one row per size and mtld.decide.compile whether the run would compile. Rendering is mtld.cli.render's.
"""

from __future__ import annotations

from typing import Any

from mtld.config.jobspec import JobSpec
from mtld.config.settings import Settings
from mtld.decide import runtime
from mtld.decide.compile import compile_for_plan
from mtld.decide.family import pinned_size, planned_size, start_size
from mtld.decide.runtime import PlanSummary, Prediction, summarize
from mtld.estimate.history import family_history, family_records, job_family, probe_dir, run_probe, store_probe
from mtld.memory import Reading, make_probe


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


def estimate_job(spec: JobSpec, settings: Settings, store: Any, *, device: str, reading: Reading | None = None,
                 probe: bool = False, plan: PlanSummary | None = None
                 ) -> tuple[PlanSummary, list[Prediction], tuple[bool, str]]:
    """The plan, optionally a probe (stored with the family's probes), then one row per size, the
    row the daemon would start at now on `device` (the executor's; memory `reading`, else read now)
    marked chosen, and whether the run would compile its encoder there, and why (mtld.decide.compile,
    as the run child decides it). Raises RuntimeError when the probe child fails."""
    fam = job_family(spec, device)
    reading = reading if reading is not None else make_probe(settings.memory).read()
    history = family_history(store, fam)
    pinned = pinned_size(spec.train.batch_size)
    chosen = start_size(settings, history, pinned=pinned, effective_batch=spec.train.effective_batch_size,
                        reading=reading).micro_batch
    planned = chosen or planned_size(settings, history, pinned=pinned, effective_batch=spec.train.effective_batch_size)[0]
    plan = plan or plan_summary(spec)
    if probe:
        store_probe(probe_dir(settings), fam, run_probe(spec, device))
    records = family_records(store, fam, probe_dir(settings))
    compiled = compile_for_plan(spec.train.compile, device_type=device, plan=plan, records=records, micro_batch=planned)
    like = runtime.same_kind(records, compiled=compiled[0])
    return plan, runtime.predict(plan, like, available_bytes=reading.fit_bytes, chosen=chosen), compiled
