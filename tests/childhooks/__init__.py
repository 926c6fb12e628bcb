"""Test hooks for run children that are real processes: production code has none.

`hooks_env(env, ...)` returns a copy of `env` that a test gives to a child
(`python -m mtld.train RUN_DIR`) or to a real `mtld daemon`, whose children
inherit it: this folder first on PYTHONPATH (its sitecustomize.py loads the
hooks at start-up) and MTLD_TEST_HOOKS naming them (mtld_test_hooks.py says
what each does). `Gate` is the test's side of "hold_at".
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.childhooks.mtld_test_hooks import HOOKS_ENV, held_path

FOLDER = Path(__file__).resolve().parent


class Gate:
    """A run holds before a given step until the test opens this gate (a file that comes to exist)."""

    def __init__(self, path: Path):
        self.path = path
        self.held_file = held_path(path)

    def held(self) -> dict[str, Any] | None:
        """What the run wrote when it last reached the gate (step, pid), or None if none has yet."""
        return json.loads(self.held_file.read_text()) if self.held_file.exists() else None

    def wait_held(self, timeout: float = 120, alive: Callable[[], bool] | None = None) -> dict[str, Any]:
        """Until a run holds at the gate; `alive` (e.g. a Popen's poll() is None) fails early if it ends."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (held := self.held()) is not None:
                return held
            assert alive is None or alive(), f"the run ended before it reached the gate {self.path}"
            time.sleep(0.02)
        raise AssertionError(f"no run reached the gate {self.path} within {timeout} s")

    def open(self) -> None:
        self.path.touch()


def hooks_env(env: dict[str, str], *, nan_steps: list[int] | None = None, hold_at: int | None = None,
              gate: Gate | None = None) -> dict[str, str]:
    """`env` with the hooks on: NaN losses at `nan_steps`; a hold before step `hold_at` until `gate` opens."""
    hooks: dict[str, Any] = {}
    if nan_steps:
        hooks["nan_steps"] = list(nan_steps)
    if hold_at is not None:
        assert gate is not None, "a hold needs a gate to wait for"
        hooks.update(hold_at=hold_at, gate=str(gate.path))
    path = os.pathsep.join(p for p in (str(FOLDER), env.get("PYTHONPATH")) if p)
    return {**env, "PYTHONPATH": path, HOOKS_ENV: json.dumps(hooks)}
