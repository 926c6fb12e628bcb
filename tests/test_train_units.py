"""Small units of the trainer: OOM classification, metrics, schedule, timings, signals, checkpoints."""

from __future__ import annotations

import math
import signal
import subprocess
import sys

import numpy as np
import pytest


# ---------------------------------------------------------------- OOM classification


@pytest.mark.parametrize(
    "exc",
    [
        "torch.OutOfMemoryError('CUDA out of memory. Tried to allocate 2.00 GiB')",
        "RuntimeError('CUDA out of memory. Tried to allocate 20.00 MiB (GPU 0; 7.93 GiB total capacity)')",
        "RuntimeError('HIP out of memory. Tried to allocate 1.00 GiB')",
        "RuntimeError('MPS backend out of memory (MPS allocated: 17.99 GB, other allocations: 1.20 GB, max allowed: 18.13 GB).')",
        "RuntimeError(\"[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: you tried to allocate 8589934592 bytes. Error code 12 (Cannot allocate memory)\")",
        "RuntimeError('Invalid buffer size: 12.50 GB')",
        "MemoryError()",
    ],
)
def test_allocation_failures_are_out_of_memory(exc):
    import torch  # noqa: F401  (used by eval)

    from mtld.train.device import is_oom

    assert is_oom(eval(exc))


@pytest.mark.parametrize(
    "exc",
    [
        "RuntimeError('mat1 and mat2 shapes cannot be multiplied (2x32 and 64x2)')",
        "RuntimeError('Expected all tensors to be on the same device')",
        "ValueError('out of memory')",  # the message alone is not enough outside RuntimeError
        "KeyError('memory')",
    ],
)
def test_other_errors_are_not_out_of_memory(exc):
    from mtld.train.device import is_oom

    assert not is_oom(eval(exc))


# ---------------------------------------------------------------- metrics


def test_classification_and_multilabel_metrics():
    from mtld.train.metrics import classification_metrics, multilabel_metrics

    m = classification_metrics(np.array([0, 1, 1, 2]), np.array([0, 1, 2, 2]))
    assert m["accuracy"] == 0.75
    assert m["macro_f1"] == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)
    gold = np.array([[1, 0], [1, 1], [0, 1]])
    pred = np.array([[1, 0], [1, 0], [0, 1]])
    ml = multilabel_metrics(pred, gold)
    assert ml["micro_f1"] == pytest.approx(2 * 3 / (2 * 3 + 1))
    assert ml["exact_match"] == pytest.approx(2 / 3)


def test_regression_metrics_and_constant_predictions():
    from mtld.train.metrics import regression_metrics

    m = regression_metrics(np.array([1.0, 2.0, 3.0, 5.0]), np.array([1.0, 2.0, 3.0, 4.0]))
    assert m["spearman"] == pytest.approx(1.0)
    assert m["rmse"] == pytest.approx(0.5)
    flat = regression_metrics(np.array([2.0, 2.0, 2.0]), np.array([1.0, 2.0, 3.0]))
    assert flat["pearson"] is None and flat["spearman"] is None
    assert flat["rmse"] == pytest.approx(math.sqrt(2 / 3))


def test_token_metrics_are_entity_level():
    from mtld.train.metrics import token_metrics

    gold = [["B-PER", "I-PER", "O", "B-LOC"]]
    half = [["B-PER", "O", "O", "B-LOC"]]  # the person is cut short: a wrong entity
    m = token_metrics(half, gold)
    assert m["entity_f1"] == pytest.approx(0.5)
    assert m["tag_accuracy"] == pytest.approx(0.75)
    assert token_metrics(gold, gold)["entity_f1"] == 1.0


def test_aggregate_score_is_the_mean_of_primary_metrics():
    from mtld.train.metrics import aggregate_score

    metrics = {"a": {"macro_f1": 0.5, "accuracy": 0.9}, "b": {"spearman": None, "rmse": 1.0}, "c": {"entity_f1": 1.0}}
    kinds = {"a": "classification", "b": "regression", "c": "token_classification"}
    assert aggregate_score(metrics, kinds) == pytest.approx(0.5)
    assert aggregate_score({}, kinds) is None


# ---------------------------------------------------------------- schedule and timings


def test_learning_rate_warms_up_then_decays_and_never_wastes_a_step():
    from mtld.train.optim import lr_factor

    factors = [lr_factor(s, warmup=4, total=20) for s in range(20)]
    assert factors[:4] == [0.25, 0.5, 0.75, 1.0]
    assert factors[4] == 1.0 and factors[5] < 1.0
    assert all(a >= b for a, b in zip(factors[3:], factors[4:]))
    assert min(factors) > 0
    assert [lr_factor(s, 0, 4) for s in range(4)] == [1.0, 0.75, 0.5, 0.25]


def test_step_time_fit_recovers_overhead_and_per_token_cost():
    from mtld.train.timing import StepTimings, eta_seconds

    timings = StepTimings()
    for tokens in (64, 128, 256, 512, 1024):
        timings.record(4, tokens, 0.01 + 2e-5 * tokens)
    a, b = timings.fit(4)
    assert a == pytest.approx(0.01) and b == pytest.approx(2e-5)
    assert eta_seconds((a, b), 10, 1000) == pytest.approx(0.1 + 0.02)
    assert timings.fit(8) is None
    same = StepTimings()
    for _ in range(3):
        same.record(2, 100, 0.5)  # one length only: no line, fall back to seconds per token
    assert same.fit(2) == (0.0, 0.005)
    assert timings.as_dict()["4"]["steps"] == 5


# ---------------------------------------------------------------- signals, guard, errors


def test_first_signal_only_sets_the_flag():
    from mtld.train.signals import StopFlag

    flag = StopFlag()
    assert not flag.requested
    flag.handle_signal(signal.SIGTERM)
    assert flag.requested and flag.name == "SIGTERM"


@pytest.mark.slow
def test_second_signal_escalates_to_the_default_action():
    code = (
        "import signal; from mtld.train.signals import StopFlag\n"
        "f = StopFlag(); f.install(); f.handle_signal(signal.SIGTERM); f.handle_signal(signal.SIGTERM)\n"
        "print('survived')"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == -signal.SIGTERM
    assert "survived" not in done.stdout


def test_scripted_guard_gives_each_advice_once_at_its_step():
    from mtld.testing import ScriptedGuard

    guard = ScriptedGuard({2: "scale_down", 4: "interrupt"})
    seen = []
    for step in range(6):
        guard.at_step(step)
        seen.append([guard.advice(), guard.advice()])
    assert seen[2] == ["scale_down", "ok"] and seen[4] == ["interrupt", "ok"]
    assert guard.given == [(2, "scale_down"), (4, "interrupt")]


def test_missing_package_names_the_extra():
    from mtld.train.errors import missing_package_message

    exc = ModuleNotFoundError("You need to install fugashi to use MecabTokenizer.")
    assert "pip install 'mtld[ja]'" in missing_package_message(exc, "the tokenizer")
    other = ModuleNotFoundError("No module named 'foo'", name="foo")
    assert "foo" in missing_package_message(other, "the model")


@pytest.mark.slow
def test_importing_the_package_does_not_import_torch():
    code = "import sys, mtld.train; assert 'torch' not in sys.modules and 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# ---------------------------------------------------------------- checkpoints


def test_checkpoints_are_renamed_into_place_and_pruned(tmp_path):
    import torch

    from mtld.train.checkpoint import load_checkpoint, save_checkpoint

    (tmp_path / ".step-5.pt.tmp").write_bytes(b"half a checkpoint from a killed run")
    for step in (10, 20, 30):
        save_checkpoint(tmp_path, step, {"step": step, "w": torch.ones(3) * step}, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000020.pt", "step-00000030.pt"]
    state = load_checkpoint(tmp_path / "step-00000030.pt")
    assert state["step"] == 30 and torch.equal(state["w"], torch.full((3,), 30.0))


def test_a_failed_checkpoint_write_leaves_nothing_behind(tmp_path):
    from mtld.train.checkpoint import save_checkpoint

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    save_checkpoint(tmp_path, 1, {"ok": 1}, keep=3)
    with pytest.raises(RuntimeError):
        save_checkpoint(tmp_path, 2, {"bad": Unpicklable()}, keep=3)
    assert [p.name for p in tmp_path.iterdir()] == ["step-00000001.pt"]


# ---------------------------------------------------------------- the live ETA, alone


def hand_plan():
    """One task, two epochs of two steps of four examples; padded widths are multiples of 8."""
    from mtld.train.eta import PlanTokens
    from mtld.train.plan import Step

    lengths = np.array([5, 9, 17, 3, 20, 7, 8, 1])
    plans = [[Step(0, np.array([0, 1, 2, 3])), Step(0, np.array([4, 5, 6, 7]))],
             [Step(0, np.array([1, 3, 5, 7])), Step(0, np.array([0, 2, 4, 6]))]]
    return PlanTokens(plans, [lengths], [np.array([4, 6])])


# Padded tokens per step. Micro-batch 4: one micro-batch as wide as the step's longest example:
# 4×24, 4×24 | 4×16, 4×24. Micro-batch 2: (2×16 + 2×24), (2×24 + 2×8) | (2×16 + 2×8), (2×24 + 2×24).
AT_4 = [96, 96, 64, 96]
AT_2 = [80, 64, 48, 96]


def timings_on_a_line(micro_batch, a, b, points):
    from mtld.train.timing import StepTimings

    timings = StepTimings(warmup_steps=0)
    for tokens in points:
        timings.record(micro_batch, tokens, a + b * tokens)
    return timings


def test_plan_tokens_are_each_steps_padded_tokens_at_each_size():
    from mtld.train.plan import Position

    tokens = hand_plan()
    assert [t.tolist() for t in tokens.per_step(4)] == [AT_4[:2], AT_4[2:]]
    assert [t.tolist() for t in tokens.per_step(2)] == [AT_2[:2], AT_2[2:]]
    assert (tokens.total(4), tokens.total(2), tokens.eval_tokens, tokens.total_steps) == (352, 288, 10, 4)
    assert tokens.left(Position(0, 1, 1), 4) == 96 + 64 + 96 and tokens.left(Position(2, 0, 4), 4) == 0
    assert [[s.ids.tolist() for s in p] for p in tokens.plan_from(Position(1, 1, 3))] == [[[0, 2, 4, 6]]]


def test_without_a_prior_the_eta_is_the_runs_own_line_over_what_is_left():
    from mtld.train.eta import LiveEta
    from mtld.train.plan import Position

    eta = LiveEta(hand_plan(), eval_every=0, checkpoint_steps=None)
    timings = timings_on_a_line(4, 0.5, 0.01, [32, 64, 128])  # a = 0.5 s per step, b = 0.01 s per padded token
    assert eta.eta_s(Position(1, 0, 2), 4, timings) == pytest.approx(0.5 * 2 + 0.01 * (64 + 96))
    assert eta.eta_s(Position(0, 1, 1), 4, timings) == pytest.approx(round(0.5 * 3 + 0.01 * (96 + 64 + 96), 1))
    assert eta.eta_s(Position(1, 0, 2), 2, timings) is None  # nothing measured at 2 yet
    assert eta.eta_s(Position(2, 0, 4), 4, timings) == 0.0
    assert eta.planned_padded_tokens(4) == 352 and eta.planned_padded_tokens(2) == 288


def test_with_a_prior_the_eta_is_the_models_time_left_scaled_by_the_runs_pace_plus_evaluations_and_saves():
    from mtld.train.eta import LiveEta
    from mtld.train.plan import Position

    prior = {"sizes": {"4": {"a": 0.4, "b": 0.02, "warmup_s": 1.0}}, "eval_s_per_token": 0.1, "save_s": 2.0}
    timings = timings_on_a_line(4, 0.0, 3.0 / 96, [96, 96])  # the first epoch took 6 s
    at = Position(1, 0, 2)
    model_left = 0.4 * 2 + 0.02 * (64 + 96)
    model_done = 0.4 * 2 + 0.02 * (96 + 96) + 1.0
    # an evaluation at the epoch end; saves: steps 3 and 4 are left, a checkpoint by steps at 3 (none at the last
    # step: its epoch end and its step go straight to the export), the export
    other = 1 * 10 * 0.1 + (1 + 1) * 2.0
    eta = LiveEta(hand_plan(), eval_every=0, checkpoint_steps=1, prior=prior)
    w = 0.5 / (0.5 + 0.05)  # half the attempt done: its own pace counts that much
    assert eta.eta_s(at, 4, timings) == round(model_left * ((1 - w) + w * 6.0 / model_done) + other, 1)
    resumed = LiveEta(hand_plan(), eval_every=0, checkpoint_steps=1, prior=prior, start_step=2)
    assert resumed.eta_s(at, 4, timings) == round(model_left + other, 1)  # nothing of this attempt done: the model
    every_step = LiveEta(hand_plan(), eval_every=1, checkpoint_steps=None, prior=prior, start_step=2)
    assert every_step.eta_s(at, 4, timings) == round(model_left + 2 * 10 * 0.1 + 1 * 2.0, 1)  # the export only
    no_prior_at_2 = timings_on_a_line(2, 0.5, 0.01, [32, 64, 128])
    assert eta.eta_s(at, 2, no_prior_at_2) == round(0.5 * 2 + 0.01 * (48 + 96), 1)  # the run's own line


def test_the_attempts_prior_covers_the_plan_it_has_left():
    from mtld.config.sections import TrainSpec
    from mtld.runs.files import Figures
    from mtld.train.eta import LiveEta, attempt_plan, attempt_prior
    from mtld.train.plan import Position

    earlier = timings_on_a_line(4, 0.5, 0.01, [32, 64, 128, 256])
    history = [Figures(timing=earlier.as_dict())]
    train = TrainSpec(effective_batch_size=4, checkpoint_every=1000)

    def prior(start, history):
        return attempt_prior(attempt_plan(hand_plan(), train, start=start), micro_batch=4, history=history)

    whole = prior(Position(), history)
    rest = prior(Position(1, 0, 2), history)
    assert whole["predicted_s"] == pytest.approx(0.5 * 4 + 0.01 * 352)
    assert rest["predicted_s"] == pytest.approx(0.5 * 2 + 0.01 * (64 + 96))
    assert prior(Position(), []) is None
    assert prior(Position(), [Figures()]) == {}
    eta = LiveEta.for_attempt(hand_plan(), train, start=Position(1, 0, 2), micro_batch=4, history=history)
    assert (eta.start_step, eta.prior, eta.eval_every, eta.checkpoint_steps) == (2, rest, 0, 1000)
    assert eta.plan_left == attempt_plan(hand_plan(), train, start=Position(1, 0, 2)) and eta.plan_left.steps == 2
