"""The runtime model on synthetic histories: exact without noise, bounded with noise, extrapolation flagged."""

from __future__ import annotations

import random

import pytest

from mtld.decide.runtime import (
    PlanSummary, RunRecord, SizeRecord, Sums, extras, fit_line, launch_prior, live_eta, peak_by_size, predict,
    run_record, step_models,
)
from mtld.runs.files import Figures


def steps(a: float, b: float, tokens: list[int], noise: float = 0.0, seed: int = 0) -> list[tuple[float, float]]:
    rng = random.Random(seed)
    return [(t, (a + b * t) * (1 + rng.uniform(-noise, noise))) for t in tokens]


TOKENS = [64 * k for k in range(1, 41)]


@pytest.mark.parametrize("a, b", [(0.01, 2e-5), (0.0, 1e-4), (0.5, 1e-6), (0.02, 3e-4)])
def test_fit_line_recovers_a_and_b_exactly(a, b):
    fa, fb = fit_line(Sums.of(steps(a, b, TOKENS)))
    assert fa == pytest.approx(a, abs=1e-12) and fb == pytest.approx(b, rel=1e-9)


@pytest.mark.parametrize("points, expected", [
    ([], None),
    ([(100, 0.5)] * 3, (0.0, 0.005)),  # one length: no line, seconds per token
    ([(100, 1.0), (200, 0.5), (300, 0.2)], (0.0, 1.7 / 600)),  # falling line: proportional
    ([(100, 1.0), (200, 1.2)], (0.0, 2.2 / 300)),  # two points are not enough for a line
])
def test_fit_line_falls_back_to_proportional(points, expected):
    assert fit_line(Sums.of(points)) == (pytest.approx(expected) if expected else None)


@pytest.mark.parametrize("noise", [0.05, 0.2])
def test_fit_with_noise_predicts_totals_within_bound(noise):
    a, b = 0.02, 5e-5
    fa, fb = fit_line(Sums.of(steps(a, b, TOKENS * 5, noise=noise, seed=1)))
    plan = [64 * k for k in range(3, 30)]
    truth = sum(a + b * t for t in plan)
    assert abs(sum(fa + fb * t for t in plan) / truth - 1) < noise / 2


def record(per_size: dict[int, tuple[float, float]], *, noise: float = 0.0, seed: int = 0, warmup_extra: float = 0.0,
           peak: int | None = None, peak_size: int | None = None, probe: bool = False) -> RunRecord:
    sizes = {}
    for m, (a, b) in per_size.items():
        warm = Sums.of((t, s + warmup_extra / 3) for t, s in steps(a, b, TOKENS[:3]))
        sizes[m] = SizeRecord(Sums.of(steps(a, b, TOKENS, noise, seed + m)), warm, eval_count=2, eval_seconds=2.0,
                              eval_tokens=1000, save_count=4, save_seconds=1.0)
    return RunRecord(sizes, peak, peak_size, startup_s=3.0, probe=probe)


def test_median_over_runs_ignores_one_disturbed_run():
    good = [record({4: (0.01, 2e-5)}, seed=s) for s in range(2)]
    bad = record({4: (0.2, 1e-4)})
    model = step_models([good[0], bad, good[1]], 16)[4]
    assert (model.a, model.b) == (pytest.approx(0.01), pytest.approx(2e-5)) and model.runs == 3


def test_warmup_is_left_out_of_the_fit_and_added_once():
    model = step_models([record({4: (0.01, 2e-5)}, warmup_extra=1.5)], 16)[4]
    assert (model.a, model.b, model.warmup_s) == (pytest.approx(0.01), pytest.approx(2e-5), pytest.approx(1.5))


@pytest.mark.parametrize("known, m, expected_a, expected_b, source", [
    # one size known: all of a is per micro-step (E=16: 8, 4, 2 micro-steps at 2, 4, 8)
    ({4: (0.04, 2e-5)}, 2, 0.08, 2e-5, (4,)),
    ({4: (0.04, 2e-5)}, 8, 0.02, 2e-5, (4,)),
    # two sizes: a = o + u × micro-steps through them; b of the nearest size
    ({2: (0.09, 3e-5), 4: (0.05, 2e-5)}, 8, 0.03, 2e-5, (2, 4)),
    ({2: (0.09, 3e-5), 8: (0.03, 1e-5)}, 4, 0.05, 3e-5, (2, 8)),  # a tie in distance goes to the smaller size
])
def test_extrapolation_across_sizes_is_flagged(known, m, expected_a, expected_b, source):
    models = step_models([record(known)], 16)
    model = models[m]
    assert model.a == pytest.approx(expected_a) and model.b == pytest.approx(expected_b)
    assert model.extrapolated_from == source and model.runs == 0
    assert all(not models[k].extrapolated_from for k in known)


PLAN = PlanSummary(steps=100, effective_batch=16, padded_tokens={2: 100_000, 4: 110_000, 8: 130_000},
                   evaluations=2, eval_tokens=1000, saves=3)


def test_prediction_sums_steps_evaluation_saves_and_startup():
    rows = predict(PLAN, [record({4: (0.01, 2e-5)}, peak=500, peak_size=4)], available_bytes=400, chosen=4)
    by = {r.micro_batch: r for r in rows}
    r4 = by[4]
    assert r4.train_s == pytest.approx(100 * 0.01 + 110_000 * 2e-5)
    assert r4.eval_s == pytest.approx(2 * 1000 * (2.0 / 1000))
    assert r4.other_s == pytest.approx(3 * 0.25 + 3.0)
    assert r4.seconds == pytest.approx(r4.train_s + r4.eval_s + r4.other_s)
    assert (r4.basis, r4.extrapolated, r4.chosen, r4.fits, r4.peak_bytes) == ("history of 1 run", False, True, False, 500)
    assert by[8].extrapolated and by[8].basis == "extrapolated from 4" and by[8].peak_bytes is None and by[8].fits is None
    assert by[2].peak_extrapolated and by[2].peak_bytes == 500


def test_no_history_is_unknown():
    rows = predict(PLAN, [])
    assert [(r.seconds, r.basis) for r in rows] == [(None, "unknown")] * 3
    assert launch_prior(PLAN, [], 4) is None


def test_probe_and_history_bases():
    rows = predict(PLAN, [record({4: (0.01, 2e-5)}), record({2: (0.02, 2e-5), 4: (0.01, 2e-5)}, probe=True)])
    assert [r.basis for r in rows] == ["probe", "history of 1 run + probe", "extrapolated from 2/4"]


@pytest.mark.parametrize("measured, expected", [
    ({2: 100, 4: 140}, {2: (100, False), 4: (140, False), 8: (220, True)}),
    ({2: 100, 8: 220}, {2: (100, False), 4: (140, True), 8: (220, False)}),
    ({8: 300}, {2: (300, True), 4: (300, True), 8: (300, False)}),
    ({}, {}),
])
def test_peak_per_size(measured, expected):
    records = [RunRecord({}, v, k) for k, v in measured.items()]
    assert peak_by_size(records) == expected


def test_run_record_reads_result_timing():
    figures = {"duration_s": 20.0, "train_seconds": 12.0, "micro_batch_end": 4, "peak_memory_bytes": 900,
               "timing": {"4": {"steps": 10, "padded_tokens": 1000, "seconds": 5.0, "tokens_squared": 1e5,
                                "tokens_seconds": 500.0, "warmup": {"steps": 3, "padded_tokens": 300, "seconds": 2.0,
                                                                     "tokens_squared": 3e4, "tokens_seconds": 200.0},
                                "eval": {"count": 1, "seconds": 1.5, "tokens": 300}, "saves": {"count": 2, "seconds": 0.5}}}}
    r = run_record(Figures.model_validate(figures))
    assert r.sizes[4].steady == Sums(7, 700, 3.0, 7e4, 300.0)
    assert (r.startup_s, r.peak_bytes, r.peak_size) == (pytest.approx(6.0), 900, 4)
    assert extras([r]).eval_s_per_token == pytest.approx(0.005)
    assert run_record(Figures()) is None


@pytest.mark.parametrize("kw, expected", [
    (dict(model_left_s=90, model_done_s=10, elapsed_s=10, fraction_done=0.1, observed_left_s=50), 90),
    (dict(model_left_s=90, model_done_s=10, elapsed_s=20, fraction_done=0.05, observed_left_s=50), 135),  # w = 0.5
    (dict(model_left_s=90, model_done_s=10, elapsed_s=20, fraction_done=0.1, observed_left_s=50), 90 * (1 + 2 / 3)),
    (dict(model_left_s=10, model_done_s=90, elapsed_s=180, fraction_done=0.95, observed_left_s=5), 10 * (0.05 + 0.95 * 2)),
    (dict(model_left_s=None, model_done_s=None, elapsed_s=10, fraction_done=0.1, observed_left_s=50, other_left_s=5), 55),
    (dict(model_left_s=None, model_done_s=None, elapsed_s=0, fraction_done=0, observed_left_s=None), None),
])
def test_live_eta_blends_model_and_pace(kw, expected):
    assert live_eta(**kw) == (pytest.approx(expected) if expected is not None else None)


def test_launch_prior_is_json_safe():
    import json

    prior = launch_prior(PLAN, [record({4: (0.01, 2e-5)})], 4)
    assert json.loads(json.dumps(prior))["sizes"]["8"]["b"] == pytest.approx(2e-5)
    assert prior["basis"] == "history of 1 run" and prior["predicted_s"] > 0
