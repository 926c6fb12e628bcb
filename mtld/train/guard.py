"""The memory guard seam: the step loop asks `guard.advice()` between micro-steps.

"ok" carries on; "scale_down" halves the micro-batch for the rest of the run
(the effective batch stays, so the maths stays the same); "interrupt"
checkpoints at the last completed step and exits INTERRUPTED so the daemon
requeues the run. A real guard (a later issue) reads the latest sample of a
memory sampler thread; it must answer fast and never block. The fake for tests
and demos, `ScriptedGuard`, lives in mtld.testing.
"""

from __future__ import annotations

from typing import Protocol

from mtld.memory.guard import Advice

__all__ = ["Advice", "Guard", "NoGuard"]


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
