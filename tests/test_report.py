"""mtld report: the run's series from run.jsonl, and a PNG drawn from them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mtld.report.run import draw_report, run_series
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
