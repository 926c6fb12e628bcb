"""The hooks themselves, loaded by sitecustomize.py in a process whose MTLD_TEST_HOOKS names some (JSON):

- "nan_steps": [5, 6, ...]: the loss of these optimizer steps (0-based, the step about to run) is NaN, and
  so are their gradients, as a diverging run's would be. Patched where the step runner takes its loss
  (mtld.train.step.loss_sum), so the run's own handling of a non-finite step is what a test sees.
- "hold_at": N, "gate": PATH: before optimizer step N the run writes PATH.held (JSON: step, pid) and waits
  until PATH exists, or until a stop is requested (a SIGTERM or SIGINT: the step then stops at once, as
  it would mid-step), or `hold_s` (default 300) have passed; then it goes on. Every attempt that reaches
  step N while PATH is missing holds there, so a test opens the gate before it lets a run go on.

Nothing here imports torch or mtld: the patch is applied after mtld.train.step has been imported by the
run itself. Standard library only.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

HOOKS_ENV = "MTLD_TEST_HOOKS"
PATCHED = "mtld.train.step"


def held_path(gate: Path) -> Path:
    return gate.with_name(gate.name + ".held")


def install_finder(text: str) -> None:
    """Patch mtld.train.step with the hooks of `text` (JSON) when, and if, this process imports it."""
    sys.meta_path.insert(0, _PatchOnImport(json.loads(text)))


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Finds mtld.train.step as the path finder does, and patches the module once it has run."""

    def __init__(self, hooks: dict[str, Any]) -> None:
        self.hooks = hooks

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if fullname != PATCHED:
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_patch(module: Any) -> None:
            exec_module(module)
            patch(module, self.hooks)

        spec.loader.exec_module = exec_and_patch  # type: ignore[method-assign]
        return spec


def patch(step_module: Any, hooks: dict[str, Any]) -> None:
    """Wrap StepRunner.run (it knows the step's number) and the step's loss."""
    runner_class = step_module.StepRunner
    run, loss_sum = runner_class.run, step_module.loss_sum
    nan_steps = frozenset(hooks.get("nan_steps", ()))
    hold_at, gate = hooks.get("hold_at"), hooks.get("gate")
    current: dict[str, int | None] = {"step": None}

    def run_hooked(self: Any, step: Any, number: int, index: Any = None) -> Any:
        current["step"] = number
        if number == hold_at and gate:
            hold(Path(gate), number, self.stop, float(hooks.get("hold_s", 300)))
        return run(self, step, number, index)

    def loss_hooked(kind: str, logits: Any, targets: Any) -> Any:
        loss = loss_sum(kind, logits, targets)
        return loss * float("nan") if current["step"] in nan_steps else loss

    runner_class.run = run_hooked
    step_module.loss_sum = loss_hooked
    runner_class.test_hooks = dict(hooks)  # so a test can see that the patch is in


def hold(gate: Path, step: int, stop: Any, limit_s: float) -> None:
    marker = held_path(gate)
    temporary = marker.with_name(marker.name + ".tmp")
    temporary.write_text(json.dumps({"step": step, "pid": os.getpid()}))
    os.replace(temporary, marker)
    deadline = time.monotonic() + limit_s
    while not gate.exists() and not stop.requested and time.monotonic() < deadline:
        time.sleep(0.01)
