"""The memory guard seam: the step loop asks `guard.advice()` between micro-steps.

"ok" carries on; "scale_down" halves the micro-batch for the rest of the run
(the effective batch stays, so the maths stays the same); "interrupt"
checkpoints at the last completed step and exits INTERRUPTED so the daemon
requeues the run. A real guard (a later issue) reads the latest sample of a
memory sampler thread; it must answer fast and never block.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal, Protocol

Advice = Literal["ok", "scale_down", "interrupt"]


class Guard(Protocol):
    def at_step(self, step: int) -> None:
        """The loop is about to run optimizer step `step` (0-based); a real guard may ignore it."""

    def advice(self) -> Advice: ...


class NoGuard:
    """The default: never objects."""

    def at_step(self, step: int) -> None:
        pass

    def advice(self) -> Advice:
        return "ok"


class ScriptedGuard:
    """A fake for tests and demos: gives scripted advice at given optimizer steps.

    `script` maps an optimizer step (0-based: the step about to run) to advice,
    given once, at the first micro-step of that step.
    """

    def __init__(self, script: dict[int, Advice] | Iterable[tuple[int, Advice]]):
        self.script = dict(script)
        self.step = 0
        self.given: list[tuple[int, Advice]] = []

    def at_step(self, step: int) -> None:
        self.step = step

    def advice(self) -> Advice:
        advice = self.script.pop(self.step, "ok")
        if advice != "ok":
            self.given.append((self.step, advice))
        return advice
