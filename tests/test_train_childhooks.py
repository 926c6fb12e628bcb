"""The test hooks of real run children (tests/childhooks) stay out of every other process.

The hooks patch mtld.train.step when a process imports it; a daemon or a CLI
process, which never does, must not load torch because of them.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.childhooks import Gate, hooks_env
from tests.conftest import REPO, child_env

CHECK = """
import sys
import mtld.train, mtld.train.attempt, mtld.runs.rundir
assert "mtld_test_hooks" in sys.modules, "the start-up hook did not run"
assert "torch" not in sys.modules, "the hooks loaded torch before the run did"
from mtld.train import step
assert step.StepRunner.test_hooks == {"nan_steps": [3, 4], "hold_at": 2, "gate": sys.argv[1]}
assert step.loss_sum.__name__ == "loss_hooked"
print("patched")
"""


@pytest.mark.slow
def test_the_hooks_patch_the_step_runner_only_when_a_run_imports_it(tmp_path):
    env = hooks_env(child_env(), nan_steps=[3, 4], hold_at=2, gate=Gate(tmp_path / "gate"))
    done = subprocess.run([sys.executable, "-c", CHECK, str(tmp_path / "gate")], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "patched", done.stderr[-2000:]


@pytest.mark.slow
def test_without_the_hooks_variable_nothing_is_patched(tmp_path):
    env = child_env(PYTHONPATH=hooks_env(child_env())["PYTHONPATH"])  # the folder on the path, no hooks named
    code = "import sys; from mtld.train import step; assert not hasattr(step.StepRunner, 'test_hooks'); " \
           "assert 'mtld_test_hooks' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, check=True, timeout=120)
