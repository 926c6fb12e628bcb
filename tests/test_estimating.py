"""The I/O side of the runtime model: plan summary like the trainer's (mtld.estimate.job), history from
the store and the stored probes (mtld.estimate.history), the probe, row counts (mtld.estimate.rowcounts), the table (mtld.cli.render)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from mtld.decide import runtime
from mtld.estimate import history
from mtld.estimate.job import plan_summary
from mtld.cli.render import estimate_json, estimate_table
from mtld.estimate.rowcounts import ExampleCounts, queued_estimate
from mtld.runs.files import Figures, Launch, parse, to_json
from mtld.store import Run


def test_summarize_counts_steps_tokens_evaluations_and_saves():
    from mtld.train.plan import Step, padded_tokens

    lengths = [np.array([5, 9, 17, 30])]
    plans = [[Step(0, np.array([0, 1, 2, 3]))], [Step(0, np.array([3, 2])), Step(0, np.array([1, 0]))]]
    train = SimpleNamespace(effective_batch_size=4, eval_every=0, checkpoint_every=2)
    s = runtime.summarize(plans, lengths, [np.array([3, 4])], train, padded_tokens)
    # widths pad to 8: 16 for (5, 9), 32 for (17, 30); a micro-batch of 4 pads all four to 32
    assert s.padded_tokens == {2: 96 + 96, 4: 128 + 96, 8: 128 + 96}
    assert (s.steps, s.evaluations, s.eval_tokens, s.saves) == (3, 2, 7, 2 + 1)  # checkpoints at 1, 2 (not the last); the export
    train_every = SimpleNamespace(effective_batch_size=4, eval_every=2, checkpoint_every=100)
    assert runtime.summarize(plans, lengths, [None], train_every, padded_tokens).evaluations == 0
    assert runtime.summarize(plans, lengths, [np.array([1])], train_every, padded_tokens).evaluations == 2


def test_plan_summary_matches_the_trainers_plan(jobs):
    from mtld.train.data import load_tasks
    from mtld.train.model import load_tokenizer
    from mtld.train.plan import epoch_plan, padded_tokens

    spec = jobs.spec([jobs.task("classification", 40, n_eval=10), jobs.task("tokens", 24)], epochs=2)
    s = plan_summary(spec)
    tasks = load_tasks(spec, load_tokenizer(spec.model, trust_remote_code=False))
    lengths = [t.train.lengths for t in tasks]
    plans = [epoch_plan(lengths, batch_size=8, seed=spec.train.seed, epoch=e) for e in range(2)]
    for m in (2, 4, 8):
        assert s.padded_tokens[m] == sum(padded_tokens(x.ids, lengths[x.task], m) for p in plans for x in p)
    assert (s.steps, s.evaluations) == (sum(len(p) for p in plans), 2)


def fake_store(figures_list):
    runs = [Run(id=i, job_id=1, attempt=1, started_at=0, ended_at=1, pid=None, micro_batch=4, micro_batch_end=4,
                family="f", outcome=outcome, exit_code=0, signal=None, figures=f)
            for i, (outcome, f) in enumerate(figures_list)]
    return SimpleNamespace(family_runs=lambda family: runs if family == "f" else [])


TIMING = {"4": {"steps": 10, "padded_tokens": 1000, "seconds": 2.0, "tokens_squared": 1.2e5, "tokens_seconds": 220.0}}


def test_family_records_reads_runs_and_stored_probes(tmp_path):
    store = fake_store([("succeeded", {"timing": TIMING}), ("failed", {"timing": TIMING}), ("succeeded", {})])
    assert len(history.family_records(store, "f")) == 1
    for i in range(history.PROBES_KEPT + 2):
        history.store_probe(tmp_path, "f", Figures(probe=True, timing=TIMING, samples=100 + i))
    kept = json.loads(history.probe_file(tmp_path, "f").read_text())["probes"]
    assert [p["samples"] for p in kept] == [100 + i for i in range(2, history.PROBES_KEPT + 2)]  # the newest kept
    records = history.family_records(store, "f", tmp_path)
    assert [r.probe for r in records] == [False] + [True] * history.PROBES_KEPT
    assert history.family_records(store, "other", tmp_path) == []


def test_table_and_json_carry_the_same_rows():
    plan = runtime.PlanSummary(steps=10, effective_batch=16, padded_tokens={2: 900, 4: 1000, 8: 1100},
                                evaluations=1, eval_tokens=10, saves=2)
    rows = runtime.predict(plan, [runtime.run_record(Figures(timing=TIMING))], available_bytes=None, chosen=4)
    text = estimate_table(plan, rows)
    assert "history of 1 run  <- mtld would choose this" in text and "extrapolated from 4" in text
    data = estimate_json(plan, rows)
    assert [r["micro_batch"] for r in data["rows"]] == [2, 4, 8]
    assert data["rows"][1]["basis"] == "history of 1 run" and data["rows"][1]["chosen"]


@pytest.mark.slow
def test_probe_measures_every_size(jobs):
    spec = jobs.spec([jobs.task("classification", 48, n_eval=8)], effective_batch_size=8)
    figures = history.run_probe(spec, "cpu")
    assert figures.probe and set(figures.timing) == {2, 4, 8} and set(figures.peaks_by_size) == {2, 4, 8}
    record = runtime.run_record(figures)
    assert record.probe
    rows = runtime.predict(plan_summary(spec), [record])
    assert all(r.seconds and r.seconds > 0 and r.basis == "probe" for r in rows)


def test_rough_seconds_and_queued_estimate(jobs):
    figures = Figures(timing={"4": {**TIMING["4"], "eval": {"count": 2, "seconds": 1.0, "tokens": 50}}}, samples=100,
                      train_seconds=10.0, duration_s=15.0, micro_batch_end=4)
    records = [runtime.run_record(figures)]
    assert runtime.rough_seconds(records, 4, 200, 3) == pytest.approx(200 * 0.1 + 3 * 0.5 + 4.0)
    assert runtime.rough_seconds([], 4, 200, 3) is None
    spec = jobs.spec([jobs.task("classification", 40, n_eval=10)], epochs=2)
    assert queued_estimate(spec, records, 4) == pytest.approx(80 * 0.1 + 2 * 0.5 + 4.0)


def test_family_figures_are_the_finished_runs_then_the_probes_and_travel_in_launch_json(tmp_path):
    store = fake_store([("succeeded", {"timing": TIMING, "duration_s": 5.0, "best_score": 0.9}), ("failed", {"timing": TIMING})])
    history.store_probe(tmp_path, "f", Figures(probe=True, timing=TIMING, peaks_by_size={2: 1}, device="cpu"))
    figures = history.family_figures(store, "f", tmp_path)
    assert [f.stored() for f in figures] == [  # the failed run left out; the size it ended at from the store
        {"timing": TIMING, "duration_s": 5.0, "best_score": 0.9, "micro_batch_end": 4},
        {"probe": True, "timing": TIMING, "peaks_by_size": {"2": 1}, "device": "cpu"},
    ]
    launch = Launch(micro_batch=4, history=figures)
    assert parse(Launch, json.loads(to_json(launch)), shown_as="launch.json").history == figures
    assert history.family_figures(fake_store([]), "f") == []


@pytest.mark.slow
def test_a_run_with_history_logs_its_prediction_and_a_blended_eta(jobs, read_events):
    from mtld.runs.rundir import RunDir
    from mtld.train import run_attempt

    spec = jobs.spec([jobs.task("classification", 96, n_eval=16)], epochs=2)
    first = jobs.run_dir(spec, micro_batch=4, name="first", progress_every_s=0.0)
    assert run_attempt(first) == 0
    second = jobs.run_dir(spec, micro_batch=4, name="second", progress_every_s=0.0)
    rd = RunDir(second)
    rd.write_launch(rd.read_launch().model_copy(update={"history": [RunDir(first).read_result().figures()]}))
    assert run_attempt(second) == 0
    (estimated,) = read_events(second, "run.estimate")
    assert estimated["predicted_s"] > 0 and estimated["basis"] == "history of 1 run"
    timing = rd.read_result().timing[4]
    assert timing.warmup.steps == 3 and timing.eval.count == 2
    assert timing.saves.count >= 2
    etas = [e["eta_s"] for e in read_events(second, "step.progress")]
    assert etas and all(e is not None and e >= 0 for e in etas)


@pytest.mark.slow
def test_a_resumed_attempt_predicts_only_what_is_left(jobs, read_events):
    from mtld.runs.rundir import RunDir
    from mtld.testing import ScriptedGuard
    from mtld.train import run_attempt

    spec = jobs.spec([jobs.task("classification", 96, n_eval=16)], epochs=2, checkpoint_every=1)  # 24 steps
    first = jobs.run_dir(spec, micro_batch=4, name="first", progress_every_s=0.0)
    assert run_attempt(first) == 0
    second = jobs.run_dir(spec, micro_batch=4, name="second", progress_every_s=0.0)
    rd = RunDir(second)
    rd.write_launch(rd.read_launch().model_copy(update={"history": [RunDir(first).read_result().figures()]}))
    assert run_attempt(second, guard=ScriptedGuard({18: "interrupt"})) == 75
    assert run_attempt(second) == 0
    whole, rest = read_events(second, "run.estimate")
    assert (whole["from_step"], rest["from_step"]) == (0, 18)
    # a quarter of the steps and one of the two evaluations are left; start-up is paid again
    assert rest["predicted_s"] < 0.75 * whole["predicted_s"]


@pytest.mark.parametrize("measured, kept", [
    ([(10, 5.0), (10, 5.0), (100, 1.0), (100, 1.1), (100, 9.0), (50, 0.5)], [(10, 5.0), (10, 5.0), (100, 1.0), (100, 1.1), (50, 0.5)]),
    ([(10, 5.0)], [(10, 5.0)]),
])
def test_probe_drops_disturbed_steps(measured, kept):
    from mtld.train.probe import kept_steps

    assert kept_steps(measured) == kept


def test_queued_estimate_counts_what_is_left_and_caches_row_counts(jobs, tmp_path):
    figures = Figures(timing={"4": {**TIMING["4"], "eval": {"count": 2, "seconds": 1.0, "tokens": 50}}}, samples=100,
                      train_seconds=10.0, duration_s=15.0, micro_batch_end=4)
    records = [runtime.run_record(figures)]
    spec = jobs.spec([jobs.task("classification", 40, n_eval=10)], epochs=2)
    # a resumed job that trained a quarter of its steps: 3/4 of the examples and evaluations, all the start-up
    assert queued_estimate(spec, records, 4, done_fraction=0.25) == pytest.approx(60 * 0.1 + 2 * 0.5 + 4.0)

    cache = tmp_path / "rows.json"
    counts = ExampleCounts(cache)
    train = Path(spec.tasks[0].train)
    assert counts.of(train) == 40
    counts.save()
    again = ExampleCounts(cache)
    assert again.known == counts.known and not again.changed  # read from the file, not the data
    with train.open("a") as f:
        f.write(json.dumps({"text": "one more", "label": "pos"}) + "\n")
    assert again.of(train) == 41 and again.changed  # the file changed: counted again
