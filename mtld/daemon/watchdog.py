"""The progress watchdog: a run that shows no sign of life for longer than its allowance has stalled.

A GPU that faults can hang a run without raising anything (`torch.mps.synchronize` waits forever on a
Metal fault; MPS does not raise for a failed command buffer: mtld.decide.policy.gpu_failure), and a hung
run would keep its job "running" and the machine awake all night. So the daemon watches each run's own
log for signs of life written by the training loop itself: a step (`step.progress`), an evaluation's start
or end, a checkpoint. The memory sampler's lines do not count: they come from another thread, which goes
on while the loop hangs. How long a run may be quiet depends on what it is doing (`policy.Allowance`:
starting, training, evaluating), and comes from the family's measured pace (mtld.decide.runtime.pace).
"""

from __future__ import annotations

import signal
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mtld.config.settings import Settings
from mtld.decide import policy, runtime
from mtld.decide.policy import Allowance
from mtld.logs.events import last_event
from mtld.runs.figures import Figures

if TYPE_CHECKING:
    from mtld.daemon.ledger import ActiveRun
    from mtld.runs.rundir import RunDir

# Events the training loop writes as it moves on (never the sampler thread's `memory.sample`).
LIFE = frozenset({"run.started", "step.progress", "eval.started", "eval", "checkpoint.saved", "batch.scaled_down"})


@dataclass(frozen=True)
class Stall:
    phase: str  # what it was doing: starting, training, evaluating
    quiet_s: float  # how long it has shown no sign of life
    allowance_s: float

    def text(self) -> str:
        return (f"no progress for {self.quiet_s:.0f} s while {self.phase} (its allowance: "
                f"{self.allowance_s:.0f} s)")


class Watch:
    """One run's watch: when it last showed a sign of life, and what it was doing then."""

    def __init__(self, log_file: Path, allowance: Allowance, now: float) -> None:
        self.log_file, self.allowance = log_file, allowance
        self.alive_at = now
        self.phase = "starting"
        # the run log holds the job's earlier attempts too: only what this one adds counts
        self._size, self._last = self._read()

    def look(self, now: float) -> Stall | None:
        """Read what is new in the run's log (only when it grew); a Stall once it has been quiet too long."""
        size, last = self._read(unless_size=self._size)
        if size != self._size:
            self._size = size
            if last is not None and last != self._last:
                self._last, self.alive_at, self.phase = last, now, phase_after(str(last[1]))
        quiet = now - self.alive_at
        allowed = self.allowance.of(self.phase)
        return Stall(self.phase, quiet, allowed) if quiet > allowed else None

    def _read(self, unless_size: int | None = None) -> tuple[int, tuple[object, object, object] | None]:
        """(the log's size, its newest sign of life as (ts, event, step)); the log is read only when its size
        is not `unless_size`."""
        try:
            size = self.log_file.stat().st_size
        except OSError:
            return 0, None
        if size == unless_size or size == 0:
            return size, None
        event = last_event(self.log_file, set(LIFE), scan_limit=2000)
        return size, (event.get("ts"), event.get("event"), event.get("step")) if event else None

    def alive(self, now: float) -> None:
        """Count `now` as a sign of life (a remote run placed on a node only now: its wait was the cluster's)."""
        self.alive_at = now


def phase_after(event: str) -> str:
    """What a run is doing after it logged `event`."""
    if event == "eval.started":
        return "evaluating"
    if event == "run.started":
        return "starting"  # its first steps: the warm-up (allocation, compilation) has its own allowance
    return "training"


class Watchdog:
    """The daemon's watchdog: a watch over each run it starts, a stall when one has been quiet too long, and
    SIGKILL for a run asked to stop that did not within `daemon.stop_timeout_s` (a hung GPU call never
    returns to the step loop that would see the request: its last checkpoint will have to do)."""

    def __init__(self, settings: Settings, log: Any, *, remote: bool) -> None:
        self.settings, self.log, self.remote = settings, log, remote

    def watch(self, run_dir: RunDir, micro_batch: int, history: Sequence[Figures], now: float) -> Watch:
        """A watch over a run, with allowances from its family's measured pace."""
        pace = runtime.pace([r for r in map(runtime.run_record, history) if r is not None], micro_batch)
        w = self.settings.watchdog
        allowance = policy.stall_allowance(floor_s=w.stall_s, start_floor_s=w.start_s, step_factor=w.step_factor,
                                           step_s=pace.step_s, startup_s=pace.startup_s,
                                           first_steps_s=pace.first_steps_s, eval_s=pace.eval_s)
        return Watch(run_dir.log_file, allowance, now)

    def stalled(self, active: ActiveRun, now: float) -> Stall | None:
        if active.watch is None:  # adopted after a restart: the floor's allowances, counted from now
            active.watch = self.watch(active.run_dir, active.run.micro_batch, [], now)
        if self.remote and (active.handle.node is None or getattr(active.handle, "waiting", None)):
            active.watch.alive(now)  # still waiting for a node: the cluster's queue, not a stall
            return None
        return active.watch.look(now)

    def kill_if_overdue(self, active: ActiveRun, now: float) -> None:
        asked = active.stop_asked_at
        if asked is not None and not active.killed and now - asked > self.settings.daemon.stop_timeout_s:
            active.killed = True
            active.handle.signal(signal.SIGKILL)
            self.log.warning("run.killed", job_id=active.job_id, run_id=active.run.id, reason=active.stop_reason,
                             waited_s=round(now - asked, 1))
