"""The daemon's loop and tick, in-process: an injected clock, a fake executor, a scripted probe.

What needs real processes (children, SIGKILL, a second daemon) is in
test_daemon.py; here the decisions and the loop itself are driven directly.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time

import pytest

from mtld.daemon.loop import Daemon
from mtld.config.jobspec import JobSpec, spec_to_json
from mtld.logs.events import configure
from mtld.memory import Level, Reading
from mtld.config.settings import Settings
from mtld.store import Store
from mtld.testing import FakeExecutor, ScriptedProbe
from mtld.daemon.wakeup import Wakeup
from tests.conftest import log_events

T0 = 1_790_000_000.0  # a fixed "now": the tests never read the wall clock for decisions
SPEC = JobSpec.model_validate({"name": "job", "model": "/models/bert", "tasks": [
    {"name": "t", "type": "classification", "train": "/data/t.jsonl"}]})


def reading(level: str, available: int | None = None) -> Reading:
    return Reading(Level(level), available, None, None, "scripted")


@pytest.fixture
def make(tmp_path, monkeypatch):
    """make(probe=..., **daemon settings) -> (daemon, store, executor, settings)."""
    for name in [n for n in os.environ if n.startswith("MTLD_")]:
        monkeypatch.delenv(name)
    made = []

    def build(probe=None, **daemon_settings):
        settings = Settings(home=tmp_path / "home", train={"device": "cpu"},
                            daemon={"prevent_sleep": False, "notify": False, **daemon_settings})
        configure(settings.daemon_log)
        store = Store(settings.db_path)
        executor = FakeExecutor()
        daemon = Daemon(settings, store, executor=executor, probe=probe or ScriptedProbe([reading("normal")]),
                        clock=lambda: T0)
        made.append(store)
        return daemon, store, executor, settings

    yield build
    for store in made:
        store.close()


def submit(store: Store, settings: Settings, *, priority: int = 0, name: str = "job",
           not_before: float | None = None) -> int:
    spec = SPEC.model_copy(update={"name": name})
    return store.submit(name=name, spec_json=spec_to_json(spec), job_file="/jobs/job.toml", priority=priority,
                        not_before=not_before, run_root=str(settings.local_runs_dir), now=T0 - 60).id


def events(settings: Settings, name: str) -> list[dict]:
    return log_events(settings.daemon_log, name)


# ------------------------------------------------------------------ tick(now)


def test_a_tick_starts_the_highest_priority_job_and_the_next_tick_records_its_end(make):
    daemon, store, executor, settings = make()
    low, high = submit(store, settings, priority=0), submit(store, settings, priority=5)
    daemon.tick(T0)
    [run] = executor.runs
    assert store.get(high).state == "running" and store.get(low).state == "queued"
    launch = json.loads((run.run_dir / "launch.json").read_text())
    assert (launch["micro_batch"], launch["job_id"], launch["version"]) == (4, high, 1)
    daemon.tick(T0 + 1)
    assert len(executor.runs) == 1  # one run at a time
    run.end(0)
    daemon.tick(T0 + 2)  # records the exit, then starts the next one in the same tick
    assert store.get(high).state == "succeeded" and store.get(low).state == "running"
    assert len(executor.runs) == 2


def test_priority_and_not_before_decide_the_order(make):
    daemon, store, executor, settings = make()
    low, high = submit(store, settings, priority=0), submit(store, settings, priority=5)
    later = submit(store, settings, priority=9, not_before=T0 + 100)
    daemon.tick(T0)  # `later` is not due yet: the highest of the rest
    assert store.get(high).state == "running"
    executor.runs[-1].end(0)
    daemon.tick(T0 + 150)  # now it is due, and it outranks `low`
    assert store.get(later).state == "running" and store.get(low).state == "queued"
    assert store.runs_for(later)[0].started_at == T0 + 150


def test_a_job_not_yet_due_waits_while_lower_ones_run(make):
    daemon, store, executor, settings = make()
    low = submit(store, settings, priority=0)
    later = submit(store, settings, priority=9, not_before=T0 + 100)
    daemon.tick(T0)
    assert store.get(low).state == "running"
    executor.runs[-1].end(0)
    daemon.tick(T0 + 50)
    assert store.get(later).state == "queued" and len(executor.runs) == 1
    daemon.tick(T0 + 100)
    assert store.get(later).state == "running"


def test_while_paused_no_tick_starts_a_job_and_the_running_one_finishes(make):
    daemon, store, executor, settings = make()
    first, second = submit(store, settings, priority=1), submit(store, settings)
    daemon.tick(T0)
    store.set_flag("paused", "1")
    for i in range(1, 6):
        daemon.tick(T0 + i)
    assert [r.signals for r in executor.runs] == [[]]  # `pause` (not --now) lets it run
    executor.runs[0].end(0)
    for i in range(6, 12):
        daemon.tick(T0 + i)
    assert store.get(first).state == "succeeded" and store.get(second).state == "queued"
    assert len(executor.runs) == 1
    store.set_flag("paused", None)
    daemon.tick(T0 + 12)
    assert store.get(second).state == "running"


def test_pause_now_checkpoints_the_running_job_and_requeues_it(make):
    daemon, store, executor, settings = make()
    job = submit(store, settings)
    daemon.tick(T0)
    store.set_flag("paused", "1")
    store.set_flag("pause_now", "1")
    daemon.tick(T0 + 1)  # asks the child to stop
    assert executor.runs[0].signals == [signal.SIGTERM]
    for i in range(2, 6):
        daemon.tick(T0 + i)
    assert store.get(job).state == "queued" and len(executor.runs) == 1
    assert [e["reason"] for e in events(settings, "run.interrupted")] == ["pause"]


def test_critical_pressure_defers_every_tick_until_it_eases(make):
    probe = ScriptedProbe([reading("critical")] * 5 + [reading("normal")])
    daemon, store, executor, settings = make(probe=probe)
    job = submit(store, settings)
    for i in range(5):
        daemon.tick(T0 + i)
    assert executor.runs == [] and store.get(job).state == "queued"
    [deferred] = events(settings, "run.deferred")  # logged when the reason changes, not every tick
    assert (deferred["reason"], deferred["job_id"]) == ("memory_critical", job)
    daemon.tick(T0 + 5)
    assert len(executor.runs) == 1 and store.get(job).state == "running"


def test_warn_pressure_starts_one_size_down(make):
    daemon, store, executor, settings = make(probe=ScriptedProbe([reading("warn")]))
    submit(store, settings)
    daemon.tick(T0)
    [decided] = events(settings, "policy.decided")
    assert decided["micro_batch"] == 2 and "warn" in decided["reason"]


def test_a_failing_probe_does_not_stop_the_queue(make):
    daemon, store, executor, settings = make(probe=ScriptedProbe([OSError("gone")]))
    job = submit(store, settings)
    daemon.tick(T0)
    assert store.get(job).state == "running"
    assert events(settings, "memory.sample_failed")[0]["what"] == "probe"


def test_a_result_from_a_newer_mtld_counts_as_none_and_the_exit_status_decides(make):
    daemon, store, executor, settings = make()
    job = submit(store, settings)
    daemon.tick(T0)
    run = executor.runs[0]
    (run.run_dir / "result.json").write_text(json.dumps({"version": 99, "outcome": "succeeded", "exit_code": 0}))
    run.end(0)
    daemon.tick(T0 + 1)
    assert store.get(job).state == "succeeded"
    [recorded] = store.runs_for(job)
    assert recorded.figures == {}


# ------------------------------------------------------------------ the loop itself


class SlowProbe:
    """Each read takes longer than the poll interval: the tick is slow."""

    def __init__(self, seconds: float):
        self.seconds, self.reads = seconds, 0

    def read(self) -> Reading:
        self.reads += 1
        time.sleep(self.seconds)
        return reading("normal")


def test_a_slow_tick_is_never_skipped_or_warned_about(make, caplog):
    """The APScheduler loop said `Execution of job "Daemon.tick ..." skipped: maximum number of running
    instances reached` whenever a tick took longer than a second; the plain loop runs each tick to its end."""
    daemon, store, executor, settings = make(probe=SlowProbe(0.4), poll_interval_s=0.05)
    daemon.clock = time.time
    daemon.exit_when_idle = True
    first, second = submit(store, settings, priority=1), submit(store, settings)
    ended: list[int] = []

    def end_runs() -> None:  # each run ends a moment after it starts, on another thread
        deadline = time.monotonic() + 20
        while len(ended) < 2 and time.monotonic() < deadline:
            for run in executor.runs:
                if run.pid not in ended:
                    run.end(0)
                    ended.append(run.pid)
            time.sleep(0.05)

    helper = threading.Thread(target=end_runs, daemon=True)
    helper.start()
    with caplog.at_level(logging.DEBUG):
        assert daemon.run() == 0
    helper.join()
    assert store.get(first).state == store.get(second).state == "succeeded"
    assert daemon.probe.reads == 2  # one pressure reading per dispatch
    log = settings.daemon_log.read_text()
    noisy = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert noisy == [] and "skipped" not in log and '"level": "warning"' not in log


def logged(settings: Settings, name: str) -> bool:
    """Whether the daemon log has a complete line with event `name` (a line still being written is not read)."""
    text = settings.daemon_log.read_text(encoding="utf-8") if settings.daemon_log.exists() else ""
    return any(json.loads(line)["event"] == name for line in text[: text.rfind("\n") + 1].splitlines() if line)


def when_logged(settings: Settings, name: str, timeout_s: float = 60) -> bool:
    """Poll the daemon log until `name` is logged: True, or False after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not logged(settings, name):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_a_signal_ends_the_loop_wait_at_once(make):
    """SIGTERM is sent only once `daemon.started` is logged, which `run` does after installing its handlers and
    the wake-up fd: earlier, pytest's own SIGTERM action would end the test run. The wait is the longest poll
    interval there is (60 s); should the signal not end it, a watchdog ends the loop sooner with another reason,
    and the test fails on that reason instead of on a measured time."""
    daemon, store, executor, settings = make(poll_interval_s=60)
    daemon.clock = time.time
    before = signal.getsignal(signal.SIGTERM)
    seen_started: list[bool] = []

    def signal_when_started() -> None:
        seen_started.append(when_logged(settings, "daemon.started"))
        if seen_started[0]:
            os.kill(os.getpid(), signal.SIGTERM)
        if not when_logged(settings, "daemon.stopping", timeout_s=20):
            daemon.finish("watchdog: the signal did not end the wait")

    helper = threading.Thread(target=signal_when_started, daemon=True)
    helper.start()
    assert daemon.run() == 0
    helper.join(timeout=60)
    assert seen_started == [True]
    assert [e["reason"] for e in events(settings, "daemon.stopping")] == ["signal"]
    assert signal.getsignal(signal.SIGTERM) == before  # the handler is restored


def test_wakeup_from_code_and_from_a_signal(monkeypatch):
    wakeup = Wakeup()
    previous = signal.signal(signal.SIGUSR1, lambda *a: None)
    try:
        assert wakeup.wait(0.01) is False
        wakeup.set()
        wakeup.set()
        assert wakeup.wait(5) is True
        assert wakeup.wait(0.01) is False  # drained
        wakeup.install()
        threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGUSR1)).start()
        assert wakeup.wait(60) is True  # only the signal writes to the pipe now: False would be the timeout
    finally:
        wakeup.close()
        signal.signal(signal.SIGUSR1, previous)



# ------------------------------------------------------------------ memory pressure: no restart loops


def end_run(run, outcome: str = "interrupted", *, size: int | None = None, stop_reason: str | None = "memory_critical"):
    """What the child writes when it ends: interrupted for memory pressure (75) by default, or succeeded (0)."""
    from mtld.runs.rundir import RunDir
    from mtld.runs.files import RunResult

    launch = RunDir(run.run_dir).read_launch()
    code = 75 if outcome == "interrupted" else 0
    RunDir(run.run_dir).write_result(RunResult(
        outcome=outcome, exit_code=code, run_id=launch.run_id, micro_batch_start=launch.micro_batch,
        micro_batch_end=size or launch.micro_batch, stop_reason=stop_reason if code else None,
        peak_memory_bytes=100, budget_bytes=1000, step=10, total_steps=10 if code == 0 else 20))
    run.end(code)


def started_sizes(store: Store, job: int) -> list[int]:
    return [run.micro_batch for run in store.runs_for(job)]


def test_after_a_pressure_interrupt_the_job_waits_for_calm_starts_one_size_down_and_is_held_after_three(make):
    daemon, store, executor, settings = make()  # the probe reads normal throughout; start size 4
    job = submit(store, settings)
    daemon.tick(T0)
    end_run(executor.runs[0])
    daemon.tick(T0 + 10)  # the exit is recorded; the level is normal from now on, but only just
    daemon.tick(T0 + 69)
    assert len(executor.runs) == 1 and store.get(job).state == "queued" and store.get(job).hold is None
    [settling] = [e for e in events(settings, "run.deferred") if e["reason"] == "memory_settling"]
    assert "stay normal for 60 s" in settling["message"] and settling["job_id"] == job
    daemon.tick(T0 + 70)  # 60 s of calm
    assert started_sizes(store, job) == [4, 2]
    assert "interrupted by memory pressure at 4: one size down" in events(settings, "policy.decided")[1]["reason"]

    end_run(executor.runs[1])
    daemon.tick(T0 + 100)
    daemon.tick(T0 + 160)
    assert started_sizes(store, job) == [4, 2, 2]
    end_run(executor.runs[2])
    daemon.tick(T0 + 200)  # the third pressure interrupt within the hour: held, not requeued to spin
    held = store.get(job)
    assert (held.state, held.hold) == ("queued", f"memory pressure: 3 interrupts in 3 min — `mtld retry {job}` to release")
    [event] = events(settings, "job.held")
    assert event["hold"] == held.hold and event["job_id"] == job
    assert "held: memory pressure" in store.transitions_for(job)[-1].reason
    for t in range(201, 2000, 100):
        daemon.tick(T0 + t)
    assert len(executor.runs) == 3  # never started while held, however calm

    store.retry(job, now=T0 + 2000)  # `mtld retry` releases it; earlier interrupts no longer count
    daemon.tick(T0 + 2001)
    daemon.tick(T0 + 2061)
    assert started_sizes(store, job) == [4, 2, 2, 2]
    end_run(executor.runs[3])
    daemon.tick(T0 + 2100)
    assert store.get(job).hold is None and store.get(job).state == "queued"
    daemon.tick(T0 + 2160)
    end_run(executor.runs[4], "succeeded")
    daemon.tick(T0 + 2170)
    assert store.get(job).state == "succeeded"

    # the family's remembered size recovers by the usual rule: a clean run at 2 under the headroom → one size up
    second = submit(store, settings, name="again")
    daemon.tick(T0 + 2180)
    assert started_sizes(store, second) == [4] and store.get(second).state == "running"


def test_an_interrupt_the_daemon_asked_for_is_not_a_pressure_interrupt(make):
    daemon, store, executor, settings = make()
    job = submit(store, settings)
    daemon.tick(T0)
    end_run(executor.runs[0], stop_reason="signal")
    daemon.tick(T0 + 1)  # resumes at once, at the size it ended at
    assert started_sizes(store, job) == [4, 4] and store.get(job).state == "running"
