"""Plays a recorded memory trace through the real daemon tick, policy, sampler and guard (tests/test_scenarios.py).

One simulated second at a time: the daemon ticks at its injected clock and
reads the trace through a ReplayProbe; each run it starts (a FakeRun of
mtld.testing) is stood in for by `SimulatedChild`, which does what the run
child does with memory: a Sampler over the same trace (the process's and
device's figures from the trace's columns) feeds the real MemoryGuard, whose
advice halves the micro-batch or checkpoints and exits 75 with
result.json's stop_reason "memory_critical", exactly as mtld.train would.
Training itself is a counter: each second adds the work a micro-batch size
gets done (the demo job's samples/s at 2, 4 and 8, relative to 8). The
family's earlier nights (`earlier`: the size and peak of each) are runs in
the store before the trace starts, as an earlier night leaves them; the
check before a run reads their peaks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from mtld.daemon.loop import Daemon
from mtld.config.jobspec import JobSpec, spec_to_json
from mtld.logs.events import configure
from mtld.estimate.history import job_family
from mtld.memory import MemoryGuard, Probe, Reading, ReplayProbe, Sampler, TraceRow, hysteresis, read_trace
from mtld.runs.rundir import RunDir
from mtld.runs.files import RunResult
from mtld.config.settings import Settings
from mtld.store import Store
from mtld.testing import FakeExecutor, FakeRun
from tests.conftest import log_events

TRACES = Path(__file__).parent / "traces"
T0 = 1_790_000_000.0
GiB = 2**30
PACE = {2: 232 / 547, 4: 330 / 547, 8: 1.0}  # work a second at each micro-batch (docs/benchmarks.md: the demo job)
SPEC = JobSpec.model_validate({"name": "night", "model": "/models/bert", "tasks": [
    {"name": "t", "type": "classification", "train": "/data/t.jsonl"}]})


@dataclass
class Played:
    path: list[int]  # the micro-batch sizes the job trained at, in order, across its runs
    runs: list[tuple[int, int, str | None]]  # each run: (start size, end size, outcome)
    interrupts: int  # runs that stopped themselves for memory pressure
    restarts: int  # runs after the first
    state: str  # the job's state at the end of the trace
    hold: str | None
    done: float  # share of the job's work done
    events: dict[str, list[dict]] = field(default_factory=dict)  # the daemon's events by name


class MemorystatusLevelFits:
    """The fits rule before issue 22, to compare with: the check before a run against kern.memorystatus_level's
    share of RAM (MacProbe's usable_bytes then); the rest of the reading is the real probe's."""

    def __init__(self, probe: Probe):
        self.probe = probe

    def read(self) -> Reading:
        reading = self.probe.read()
        share = reading.detail.get("memorystatus_level")
        old = reading.total_bytes * share // 100 if share is not None and reading.total_bytes else None
        return replace(reading, usable_bytes=old)


class SimulatedChild:
    """One run: the real sampler and guard over the trace; work at the size the guard leaves it."""

    def __init__(self, run: FakeRun, rows: list[TraceRow], settings: Settings, budget: int, clock, work: dict):
        self.run, self.work = run, work
        launch = RunDir(run.run_dir).read_launch()
        self.run_id, self.size = launch.run_id, launch.micro_batch
        self.start_size = self.size
        probe = ReplayProbe(rows, settings.memory, clock=clock, start=0.0)
        self.sampler = Sampler(probe, read_device=probe.device_figures, clock=clock)
        self.guard = MemoryGuard(self.sampler, budget, hysteresis(settings.memory))
        self.budget, self.peak = budget, 0

    def second(self) -> list[int]:
        """One second of this run; returns the sizes it moved to."""
        sample = self.sampler.tick()
        self.peak = max(self.peak, sample.device.get("used_bytes") or 0)
        advice = self.guard.advice()
        moved = []
        if advice == "scale_down" and self.size > 2:
            self.size //= 2
            moved.append(self.size)
        if advice == "interrupt":
            self.finish("interrupted", 75, stop_reason="memory_critical")
            return moved
        self.work["done"] += PACE[self.size]
        if self.work["done"] >= self.work["total"]:
            self.finish("succeeded", 0)
        return moved

    def finish(self, outcome: str, code: int, stop_reason: str | None = None) -> None:
        RunDir(self.run.run_dir).write_result(RunResult(
            outcome=outcome, exit_code=code, run_id=self.run_id, micro_batch_start=self.start_size,
            micro_batch_end=self.size, scaled_down=self.size < self.start_size, stop_reason=stop_reason,
            peak_memory_bytes=self.peak, budget_bytes=self.budget, device="mps",
            step=int(self.work["done"]), total_steps=int(self.work["total"])))
        self.run.end(code)


def play(trace: str | list[TraceRow], tmp_path: Path, *, work_s: float, budget: int = int(0.8 * 12 * GiB),
         device: str = "mps", start_size: int = 8, memory: dict | None = None,
         earlier: Sequence[tuple[int, int]] = (), fits_rule: Callable[[Probe], Probe] = lambda probe: probe) -> Played:
    """Submit one job needing `work_s` seconds at micro-batch 8 and play the whole trace (1 Hz). `earlier`:
    the family's finished runs, (size, peak bytes) each, oldest first; `fits_rule` wraps the daemon's probe
    (MemorystatusLevelFits: the rule before issue 22)."""
    rows = read_trace(TRACES / f"{trace}.jsonl") if isinstance(trace, str) else trace
    settings = Settings(home=tmp_path / "home", train={"device": device, "start_batch_size": start_size},
                        daemon={"prevent_sleep": False, "notify": False}, memory=memory or {})
    configure(settings.daemon_log)
    now = {"t": 0.0}
    clock = lambda: now["t"]  # noqa: E731 - the trace's seconds, shared by the daemon, its probe and the child
    store = Store(settings.db_path)
    executor = FakeExecutor()
    probe = fits_rule(ReplayProbe(rows, settings.memory, clock=clock, start=0.0))
    daemon = Daemon(settings, store, executor=executor, probe=probe, clock=lambda: T0 + now["t"])
    for night, (size, peak) in enumerate(earlier, 1):
        then = T0 - 86_400 * (len(earlier) - night + 1)
        done = store.submit(name=f"night-{night}", spec_json=spec_to_json(SPEC), job_file="/jobs/night.toml",
                            run_root=str(settings.local_runs_dir), now=then)
        run = store.start_run(done.id, micro_batch=size, family=job_family(SPEC, executor.device), now=then)
        store.finish_run(run.id, outcome="succeeded", exit_code=0, micro_batch_end=size, now=then + 3600,
                         figures={"peak_memory_bytes": peak, "budget_bytes": budget})
        store.transition(done.id, "succeeded", reason="an earlier night", now=then + 3600)
    job = store.submit(name="night", spec_json=spec_to_json(SPEC), job_file="/jobs/night.toml",
                       run_root=str(settings.local_runs_dir), now=T0 - 1)
    work = {"done": 0.0, "total": work_s}
    child: SimulatedChild | None = None
    path: list[int] = []
    try:
        for second in range(int(rows[-1].t) + 1):
            now["t"] = float(second)
            daemon.tick(T0 + second)
            if len(executor.runs) > (0 if child is None else executor.runs.index(child.run) + 1):
                child = SimulatedChild(executor.runs[-1], rows, settings, budget, clock, work)
                path.append(child.size)
            if child is not None and child.run.status is None:
                path.extend(child.second())
        daemon.tick(T0 + rows[-1].t + 1)  # record the last exit
        runs = store.runs_for(job.id)
        final = store.get(job.id)
        names = ("job.held", "run.deferred", "policy.decided", "job.requeued")
        return Played(
            path=path, runs=[(r.micro_batch, r.micro_batch_end, r.outcome) for r in runs],
            interrupts=sum(1 for r in runs if r.figures.get("stop_reason") == "memory_critical"),
            restarts=max(len(runs) - 1, 0), state=final.state, hold=final.hold,
            done=round(min(work["done"] / work_s, 1.0), 3),
            events={name: log_events(settings.daemon_log, name) for name in names})
    finally:
        store.close()
