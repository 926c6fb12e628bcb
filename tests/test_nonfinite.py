"""A non-finite loss never reaches the weights, a checkpoint or best/.

The real runs are child processes (`python -m mtld.train RUN_DIR`) started
with the test hooks of tests/childhooks (a start-up hook of the test, not
code of mtld), which make the loss of the named optimizer steps NaN and can
hold a run before a step while the test looks at its checkpoints.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from tests.childhooks import Gate, hooks_env
from tests.conftest import REPO, child_env, events, finish


def test_nonfinite_names_what_is_not_finite():
    import torch

    from mtld.train.step import nonfinite

    one, nan, inf = torch.tensor(1.0), torch.tensor(float("nan")), torch.tensor(float("inf"))
    assert nonfinite(one, one) is None and nonfinite(None, one) is None
    assert nonfinite(nan, nan) == "loss is nan"
    assert nonfinite(one, inf) == "gradient norm is inf"
    assert nonfinite(None, nan) == "gradient norm is nan"
    assert nonfinite(-inf, one) == "loss is -inf"


def start_child(run_dir: Path, nan_steps: list[int], **hold) -> subprocess.Popen:
    env = hooks_env(child_env(OMP_NUM_THREADS="1"), nan_steps=nan_steps, **hold)
    return subprocess.Popen([sys.executable, "-m", "mtld.train", str(run_dir)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def checkpoints(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "checkpoints").glob("step-*.pt"))


def weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(folder / "model.safetensors")


def all_finite(tensors) -> bool:
    import torch

    return all(bool(torch.isfinite(t).all()) for t in tensors)


@pytest.mark.slow
def test_a_nan_loss_at_one_step_is_skipped_and_the_run_finishes_with_an_intact_best(jobs, tmp_path):
    spec = jobs.spec([jobs.task("classification", 64, n_eval=24)], epochs=2, eval_every=2, checkpoint_every=2)
    run_dir = jobs.run_dir(spec, micro_batch=4, name="nan-once", progress_every_s=0.0)
    gate = Gate(tmp_path / "gate")
    child = start_child(run_dir, [5], hold_at=8, gate=gate)  # 8: after the checkpoint that follows the NaN
    assert gate.wait_held(alive=lambda: child.poll() is None)["step"] == 8
    import torch

    held = checkpoints(run_dir)  # keep_checkpoints = 2; none at 6, while the step before it was skipped
    assert [p.name for p in held] == ["step-00000004.pt", "step-00000008.pt"]
    for checkpoint in held:
        assert all_finite(torch.load(checkpoint, weights_only=True)["model"].values()), checkpoint.name
    gate.open()
    code, err = finish(child)
    assert code == 0, err[-3000:]

    [skipped] = events(run_dir, "step.skipped")
    assert (skipped["step"], skipped["reason"], skipped["in_a_row"]) == (5, "loss is nan", 1)
    assert [e["step"] for e in events(run_dir, "checkpoint.saved")] == [2, 4, 8, 10, 12, 14]  # 16 is the last step
    result = json.loads((run_dir / "result.json").read_text())
    assert result["outcome"] == "succeeded" and result["step"] == result["total_steps"] == 16
    assert result["skipped_steps"] == 1
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert all(math.isfinite(e["score"]) for e in metrics["evals"]) and math.isfinite(metrics["best_score"])
    progress = {e["step"]: e["loss"] for e in events(run_dir, "step.progress")}
    assert progress[6] is None and all(math.isfinite(progress[s]) for s in progress if s != 6)  # NaN left out
    assert checkpoints(run_dir) == []  # pruned after the success (model/ and best/ stay)
    assert all_finite(weights(run_dir / "best").values()) and all_finite(weights(run_dir / "model").values())


@pytest.mark.slow
def test_nan_losses_in_a_row_end_the_run_failed_and_nothing_is_saved_from_them(jobs):
    spec = jobs.spec([jobs.task("classification", 64, n_eval=24)], epochs=2, eval_every=2, checkpoint_every=2)
    run_dir = jobs.run_dir(spec, micro_batch=4, name="nan-streak", max_nonfinite_steps=3)
    code, err = finish(start_child(run_dir, list(range(5, 101))))
    assert code == 1, err[-3000:]

    assert [e["step"] for e in events(run_dir, "step.skipped")] == [5, 6, 7]
    result = json.loads((run_dir / "result.json").read_text())
    assert result["outcome"] == "failed" and result["skipped_steps"] == 3
    assert "3 optimizer steps in a row had a non-finite loss" in result["message"]
    assert "step-00000004.pt" in result["message"]
    [failed] = events(run_dir, "run.failed")
    assert failed["error"] == result["message"]
    # the streak saved nothing: the checkpoints end at step 4 (none at 6, inside the streak); best/ holds weights
    # from before it (an evaluation at 6 sees the weights of step 5, the last good one)
    import torch

    kept = checkpoints(run_dir)
    assert [p.name for p in kept] == ["step-00000002.pt", "step-00000004.pt"]
    assert all(all_finite(torch.load(p, weights_only=True)["model"].values()) for p in kept)
    assert json.loads((run_dir / "metrics.json").read_text())["best_step"] <= 6
    assert all_finite(weights(run_dir / "best").values())
    assert not (run_dir / "model").exists()
