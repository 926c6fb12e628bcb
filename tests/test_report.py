"""mtld report: the run's series from run.jsonl, and a PNG drawn from them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mtld.report.figure import draw_figure, draw_report
from mtld.report.run import read_scores, run_series
from mtld.runs.rundir import RunDir
from mtld.runs.files import Launch, RunResult


def write_run(path: Path) -> Path:
    rd = RunDir(path)
    rd.path.mkdir(parents=True)
    rd.write_launch(Launch(micro_batch=4))
    rd.write_result(RunResult(outcome="succeeded", exit_code=0, duration_s=125.0, peak_memory_bytes=2**30))
    ts = lambda s: f"2026-01-01T00:{s // 60:02d}:{s % 60:02d}+00:00"  # noqa: E731
    events = [
        {"ts": ts(0), "event": "run.started"},  # an earlier attempt: left out
        {"ts": ts(1), "event": "step.progress", "loss": 9.0, "samples_per_s": 1, "micro_batch": 8, "eta_s": 5},
        {"ts": ts(5), "event": "run.started"},
        {"ts": ts(5), "event": "run.estimate", "predicted_s": 130.0, "basis": "history of 1 run"},
        {"ts": ts(35), "event": "step.progress", "loss": 1.0, "samples_per_s": 10.0, "micro_batch": 4, "eta_s": 90.0},
        {"ts": ts(45), "event": "memory.sample", "available_bytes": 2**31},
        {"ts": ts(65), "event": "step.progress", "loss": 0.5, "samples_per_s": 12.0, "micro_batch": 2, "eta_s": None},
        {"ts": ts(95), "event": "eval", "step": 10},
        {"ts": ts(125), "event": "run.finished", "outcome": "succeeded", "peak_memory_bytes": 2**30},
    ]
    rd.log_file.write_text("".join(json.dumps(e) + "\n" for e in events))
    return rd.path


def test_series_of_the_last_attempt(tmp_path):
    s = run_series(write_run(tmp_path / "run"))
    assert s.t == pytest.approx([0.5, 1.0]) and s.loss == [1.0, 0.5] and s.micro_batch == [4, 2]
    assert s.finish_predicted == [pytest.approx(0.5 + 1.5), None]
    assert (s.actual_s, s.outcome, s.peak_bytes) == (120.0, "succeeded", 2**30)
    assert s.predicted_before_s == pytest.approx(130.0 - 5.0)  # the set-up before run.started taken off
    assert s.memory_t == pytest.approx([40 / 60]) and s.eval_t == pytest.approx([1.5])


def test_an_unreadable_result_leaves_the_log_series(tmp_path):
    run = write_run(tmp_path / "run")
    (run / "result.json").write_text('{"version": 99}')  # from a newer mtld
    s = run_series(run)
    assert s.predicted_before_s == 130.0 and s.loss == [1.0, 0.5]


def test_draws_a_png(tmp_path):  # matplotlib is a hard dependency (pyproject.toml): no skip when it is missing
    out = draw_report(write_run(tmp_path / "run"), tmp_path / "pic" / "r.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_empty_run_still_draws(tmp_path):
    (tmp_path / "run").mkdir()
    assert draw_report(tmp_path / "run").exists()


# ---------------------------------------------------------------- every attempt's micro-batch, the scores


def write_log(path: Path, events: list[dict]) -> None:
    stamp = lambda s: f"2026-01-01T00:{s // 60:02d}:{s % 60:02d}+00:00"  # noqa: E731
    path.write_text("".join(json.dumps({"ts": stamp(s), **e}) + "\n" for s, e in events))


def test_each_micro_batch_change_is_labelled_with_its_reason_across_attempts(tmp_path):
    rd = RunDir(tmp_path / "run")
    rd.path.mkdir()
    write_log(rd.log_file, [
        (0, {"event": "run.started", "micro_batch": 8, "total_steps": 100, "resumed_from_step": None}),
        (1, {"event": "step.progress", "step": 10, "micro_batch": 8}),
        (2, {"event": "batch.scaled_down", "from": 8, "to": 4, "reason": "pressure", "step": 12}),
        (3, {"event": "batch.scaled_down", "from": 4, "to": 2, "reason": "out_of_memory", "step": 30}),
        (4, {"event": "run.interrupted", "step": 40}),
        (9, {"event": "run.started", "micro_batch": 4, "total_steps": 100, "resumed_from_step": 40}),
        (10, {"event": "step.progress", "step": 60, "micro_batch": 4}),
        (12, {"event": "run.started", "micro_batch": 4, "total_steps": 100, "resumed_from_step": 70}),  # same size
        (13, {"event": "run.finished", "outcome": "succeeded"}),
    ])
    s = run_series(rd.path)
    assert [(c.step, c.previous, c.size) for c in s.batch_changes] == [(0, None, 8), (12, 8, 4), (30, 4, 2), (40, 2, 4)]
    assert [c.why for c in s.batch_changes] == ["started at 8", "memory pressure: 8 → 4", "out of memory: 4 → 2",
                                                "resumed at 4 (attempt 2)"]
    assert list(zip(s.batch_steps, s.batch_sizes)) == [(0, 8), (10, 8), (12, 4), (30, 2), (40, 4), (60, 4)]
    assert (s.attempts, s.total_steps) == (3, 100)
    assert s.t == [] and s.actual_s == 1.0  # the timings are the last attempt's: it logged no progress


def write_metrics(path: Path, primary: bool = True) -> None:
    doc = {"best_score": 0.7, "best_step": 20, "evals": [
        {"step": 10, "score": 0.5, "tasks": {"a": {"accuracy": 0.6, "macro_f1": 0.5}, "b": {"pearson": None, "spearman": 0.5}}},
        {"step": 20, "score": 0.7, "tasks": {"a": {"accuracy": 0.8, "macro_f1": 0.7}, "b": {"pearson": 0.9, "spearman": 0.7}}},
        {"step": 30, "score": 0.6, "tasks": {"a": {"accuracy": 0.7, "macro_f1": 0.6}}},  # b not evaluated
    ]}
    if primary:
        doc["primary_metrics"] = {"a": "macro_f1", "b": "spearman"}
    path.write_text(json.dumps(doc))


def test_scores_are_each_tasks_primary_metric_from_metrics_json(tmp_path):
    write_metrics(tmp_path / "metrics.json")
    sc = read_scores(tmp_path / "metrics.json")
    assert sc.steps == [10, 20, 30] and sc.aggregate == [0.5, 0.7, 0.6]
    assert {t: (s.metric, s.values) for t, s in sc.tasks.items()} == {"a": ("macro_f1", [0.5, 0.7, 0.6]),
                                                                       "b": ("spearman", [0.5, 0.7, None])}
    assert (sc.best_step, sc.best_score, sc.best_metrics["b"]["pearson"]) == (20, 0.7, 0.9)


def test_a_metrics_file_from_before_primary_metrics_shows_each_tasks_first_metric(tmp_path):
    write_metrics(tmp_path / "metrics.json", primary=False)
    sc = read_scores(tmp_path / "metrics.json")
    assert {t: s.metric for t, s in sc.tasks.items()} == {"a": "accuracy", "b": "pearson"}  # named as what it is
    assert sc.tasks["b"].values == [None, 0.9, None]


@pytest.mark.parametrize("text", ["", "not json", "[1, 2]", '{"evals": [1, {"step": 3}]}'])
def test_a_missing_or_damaged_metrics_file_has_no_scores(tmp_path, text):
    path = tmp_path / "metrics.json"
    if text:
        path.write_text(text)
    assert read_scores(path).steps == []


def test_a_run_with_one_progress_point_and_one_evaluation_draws_every_point_with_a_marker(tmp_path):
    """Lines without markers draw nothing for a single point: the demo's 12-second run was four empty panels."""
    rd = RunDir(tmp_path / "run")
    rd.path.mkdir()
    write_log(rd.log_file, [
        (0, {"event": "run.started", "micro_batch": 4, "total_steps": 25, "resumed_from_step": None}),
        (5, {"event": "step.progress", "step": 20, "micro_batch": 4, "loss": 1.0, "samples_per_s": 300.0, "eta_s": 2.0}),
        (7, {"event": "run.finished", "outcome": "succeeded", "peak_memory_bytes": 2**29}),
    ])
    rd.metrics_file.write_text(json.dumps({"best_score": 0.4, "best_step": 25, "primary_metrics": {"a": "macro_f1"},
                                           "evals": [{"step": 25, "score": 0.4, "tasks": {"a": {"macro_f1": 0.4}}}]}))
    fig = draw_figure(run_series(rd.path))
    drawn = {ax.get_ylabel(): [ln for ln in ax.get_lines() if len(ln.get_xdata()) == 1 and ln.get_marker() not in ("", "None", None)]
             for ax in fig.axes}
    assert all(drawn[label] for label in ("score", "micro-batch", "loss", "samples/s", "finish (s)")), drawn
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels == ["a macro_f1", "aggregate score", "best: step 25, 0.400"]
    assert [t.get_text() for t in fig.axes[1].texts] == ["started at 4"]


def test_an_empty_panel_says_why(tmp_path):
    (tmp_path / "run").mkdir()
    fig = draw_figure(run_series(tmp_path / "run"))
    said = {ax.get_ylabel(): [t.get_text() for t in ax.texts] for ax in fig.axes}
    assert said["score"] == ["no evaluation yet"] and said["micro-batch"] == ["no run started yet"]
    assert said["loss"] == ["no progress event yet"]
