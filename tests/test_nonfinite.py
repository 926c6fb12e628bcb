"""A non-finite loss never reaches the weights, a checkpoint or best/.

The real runs are child processes (`python -m mtld.train RUN_DIR`) with the
test hook MTLD_TEST_NAN_STEPS, read only in the child, which makes the loss
of the named optimizer steps NaN.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from mtld.train.attempt import NAN_STEPS_ENV, nan_steps_for_tests
from tests.conftest import REPO, child_env, events


@pytest.mark.parametrize(("text", "steps"), [
    ("", set()), ("5", {5}), ("5,9", {5, 9}), ("5-8", {5, 6, 7, 8}), (" 3 , 10-11 ", {3, 10, 11}),
])
def test_nan_steps_for_tests(text, steps):
    assert nan_steps_for_tests(text) == frozenset(steps)


def test_nonfinite_names_what_is_not_finite():
    import torch

    from mtld.train.step import nonfinite

    one, nan, inf = torch.tensor(1.0), torch.tensor(float("nan")), torch.tensor(float("inf"))
    assert nonfinite(one, one) is None and nonfinite(None, one) is None
    assert nonfinite(nan, nan) == "loss is nan"
    assert nonfinite(one, inf) == "gradient norm is inf"
    assert nonfinite(None, nan) == "gradient norm is nan"
    assert nonfinite(-inf, one) == "loss is -inf"


def run_child(run_dir: Path, nan_steps: str) -> subprocess.CompletedProcess:
    env = child_env(OMP_NUM_THREADS="1", **{NAN_STEPS_ENV: nan_steps})
    return subprocess.run([sys.executable, "-m", "mtld.train", str(run_dir)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=240, check=False)


def weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(folder / "model.safetensors")


def all_finite(tensors) -> bool:
    import torch

    return all(bool(torch.isfinite(t).all()) for t in tensors)


@pytest.mark.slow
def test_a_nan_loss_at_one_step_is_skipped_and_the_run_finishes_with_an_intact_best(jobs):
    spec = jobs.spec([jobs.task("classification", 64, n_eval=24)], epochs=2, eval_every=2, checkpoint_every=2)
    run_dir = jobs.run_dir(spec, micro_batch=4, name="nan-once", progress_every_s=0.0)
    done = run_child(run_dir, "5")
    assert done.returncode == 0, done.stderr[-3000:]

    [skipped] = events(run_dir, "step.skipped")
    assert (skipped["step"], skipped["reason"], skipped["in_a_row"]) == (5, "loss is nan", 1)
    result = json.loads((run_dir / "result.json").read_text())
    assert result["outcome"] == "succeeded" and result["step"] == result["total_steps"] == 16
    assert result["skipped_steps"] == 1
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert all(math.isfinite(e["score"]) for e in metrics["evals"]) and math.isfinite(metrics["best_score"])
    progress = {e["step"]: e["loss"] for e in events(run_dir, "step.progress")}
    assert progress[6] is None and all(math.isfinite(progress[s]) for s in progress if s != 6)  # NaN left out
    import torch

    for checkpoint in sorted((run_dir / "checkpoints").glob("step-*.pt")):
        assert all_finite(torch.load(checkpoint, weights_only=False)["model"].values()), checkpoint.name
    assert all_finite(weights(run_dir / "best").values()) and all_finite(weights(run_dir / "model").values())


@pytest.mark.slow
def test_nan_losses_in_a_row_end_the_run_failed_and_nothing_is_saved_from_them(jobs):
    spec = jobs.spec([jobs.task("classification", 64, n_eval=24)], epochs=2, eval_every=2, checkpoint_every=2)
    run_dir = jobs.run_dir(spec, micro_batch=4, name="nan-streak", max_nonfinite_steps=3)
    done = run_child(run_dir, "5-100")
    assert done.returncode == 1, done.stderr[-3000:]

    assert [e["step"] for e in events(run_dir, "step.skipped")] == [5, 6, 7]
    result = json.loads((run_dir / "result.json").read_text())
    assert result["outcome"] == "failed" and result["skipped_steps"] == 3
    assert "3 optimizer steps in a row had a non-finite loss" in result["message"]
    assert "step-00000004.pt" in result["message"]
    [failed] = events(run_dir, "run.failed")
    assert failed["error"] == result["message"]
    # the streak saved nothing: the checkpoints end at step 4 (none at 6, inside the streak); best/ holds weights
    # from before it (an evaluation at 6 sees the weights of step 5, the last good one)
    assert [p.name for p in sorted((run_dir / "checkpoints").glob("step-*.pt"))][-1] == "step-00000004.pt"
    assert json.loads((run_dir / "metrics.json").read_text())["best_step"] <= 6
    assert all_finite(weights(run_dir / "best").values())
    assert not (run_dir / "model").exists()
