"""A run that stops making progress is noticed: the allowances, the signs of life, the tick that stops a hung
run and retries it one size down, the hold after stalls in a row, a GPU failure the framework never raised,
and the machine kept awake for a window that opens soon. In-process with an injected clock and the fake
executor, plus one real-process drill: a real child stopped with SIGSTOP."""

from __future__ import annotations

import json
import os
import signal
from datetime import datetime
from pathlib import Path

import pytest

from mtld.config.settings import Settings
from mtld.daemon.awake import WindowAwake
from mtld.daemon.loop import Daemon
from mtld.daemon.watchdog import Watch
from mtld.decide import policy, runtime
from mtld.decide.policy import Allowance, gpu_failure, stall_allowance
from mtld.logs.events import configure
from mtld.queue.status import collect
from mtld.runs.figures import Figures, SizeTiming, Sum
from mtld.store import Store
from mtld.testing import FakeExecutor, ScriptedProbe
from tests.conftest import Home, finish, job_file
from tests.test_daemon_loop import T0, events, reading, submit

# What MetalPerformanceShaders printed in two reports on PyTorch's tracker (pytorch/pytorch#123171, and the
# out-of-memory reason as Metal words it in llama.cpp's ggml-org/llama.cpp#22673), cut to what matters here.
MPS_FAULT = """Error: command buffer exited with error status.
\tThe Metal Performance Shaders operations encoded on it may not have completed.
\tError: \n\t(null)
\tInternal Error (0000000e:Internal Error)
\t<AGXG14XFamilyCommandBuffer: 0x45fd0ea50>
"""
MPS_OOM = """Error: command buffer exited with error status.
\tThe Metal Performance Shaders operations encoded on it may not have completed.
\tError: \n\t(null)
\tInsufficient Memory (00000008:kIOGPUCommandBufferCallbackErrorOutOfMemory)
"""


# ------------------------------------------------------------------ the pure parts


@pytest.mark.parametrize(("step_s", "startup_s", "first_s", "eval_s", "expected"), [
    (None, None, None, None, (600, 900, 1200)),  # nothing measured: the floors (evaluating: the floor on top)
    (0.5, None, None, None, (600, 900, 1200)),  # 20 x 0.5 s is under the floor
    (60.0, None, None, None, (1200, 1200, 1800)),  # a slow family: 20 x its median step
    (60.0, 40.0, 20.0, 100.0, (1200, 1380, 1500)),  # its start and one evaluation, three times over, on top
])
def test_the_allowance_is_the_floor_or_the_familys_pace(step_s, startup_s, first_s, eval_s, expected):
    a = stall_allowance(floor_s=600, start_floor_s=900, step_factor=20, step_s=step_s, startup_s=startup_s,
                        first_steps_s=first_s, eval_s=eval_s)
    assert (a.training_s, a.starting_s, a.evaluating_s) == expected
    assert (a.of("training"), a.of("starting"), a.of("evaluating")) == expected


def test_the_familys_pace_comes_from_its_measured_timings():
    def figures(seconds: float, steps: int, evals: float) -> Figures:
        timing = SizeTiming(steps=steps + 2, seconds=seconds + 3.0, warmup=Sum(steps=2, seconds=3.0),
                            eval={"count": 2, "seconds": evals, "tokens": 100})
        return Figures(timing={8: timing}, startup_s=7.0, duration_s=60.0, train_seconds=40.0)

    records = [runtime.run_record(f) for f in (figures(10.0, 10, 4.0), figures(30.0, 10, 8.0), figures(20.0, 10, 6.0))]
    p = runtime.pace(records, 8)
    assert (p.step_s, p.first_steps_s, p.startup_s, p.eval_s) == (2.0, 3.0, 7.0, 3.0)  # medians
    assert runtime.pace(records, 4).step_s == 2.0  # no run at 4: any size's order of magnitude
    assert runtime.pace([], 8) == runtime.Pace(None, None, None, None)


@pytest.mark.parametrize(("output", "expected"), [
    ("step 3\n" + MPS_OOM, "Insufficient Memory (00000008:kIOGPUCommandBufferCallbackErrorOutOfMemory)"),
    (MPS_FAULT, "Internal Error (0000000e:Internal Error)"),
    ("Error: command buffer exited with error status.\n", "command buffer exited with error status"),
    ("Traceback (most recent call last):\nRuntimeError: MPS backend out of memory\n", None),  # raised: the child's own
    ("", None),
])
def test_a_failed_gpu_command_buffer_is_read_from_the_childs_output(output, expected):
    assert gpu_failure(output) == expected


def exit_after(**kw):
    base = dict(exit_code=None, signal=None, earlier_failures=0, max_attempts=3, backoff_s=60,
                cancel_requested=False, stop_reason=None, message=None, now=T0)
    return policy.after_exit(**{**base, **kw})


def test_a_stalled_run_is_retried_at_once_and_a_gpu_failure_is_out_of_memory():
    stalled = exit_after(exit_code=75, stop_reason="stalled", message="no progress for 700 s while training")
    assert (stalled.outcome, stalled.job_state, stalled.retry_at) == ("stalled", "queued", T0)
    assert stalled.reason.startswith("no progress for 700 s while training: stopped; retrying one")
    killed = exit_after(signal=9, stop_reason="stalled", message="no progress")
    assert killed.outcome == "stalled"  # the watchdog's SIGKILL is not the out-of-memory killer's
    gpu = exit_after(exit_code=1, gpu_failure="Insufficient Memory (00000008)")
    assert (gpu.outcome, gpu.job_state, gpu.retry_at) == ("out_of_memory", "queued", T0)
    assert exit_after(exit_code=1, gpu_failure="x", earlier_failures=2).job_state == "failed"
    assert exit_after(exit_code=0, gpu_failure="x").outcome == "succeeded"  # a run that finished has finished
    assert policy.stall_hold(1, limit=2, job_id=7) is None
    assert "stalled 2 times in a row" in policy.stall_hold(2, limit=2, job_id=7) and "mtld retry 7" in policy.stall_hold(2, limit=2, job_id=7)


def log_line(path: Path, event: str, **fields) -> None:
    with path.open("a") as f:
        f.write(json.dumps({"ts": fields.pop("ts", "t"), "event": event, **fields}) + "\n")


def test_signs_of_life_are_the_loops_own_events_and_each_phase_has_its_allowance(tmp_path):
    log = tmp_path / "run.jsonl"
    watch = Watch(log, Allowance(training_s=10, starting_s=30, evaluating_s=60), now=0.0)
    assert watch.look(29.0) is None  # nothing yet: starting
    assert watch.look(31.0).phase == "starting"
    log_line(log, "run.started")
    assert watch.look(40.0) is None and watch.phase == "starting"  # its first steps: still the start's allowance
    log_line(log, "step.progress", step=1)
    assert watch.look(45.0) is None and watch.phase == "training"
    for t in (50.0, 54.0):  # the sampler thread goes on while the loop hangs: not a sign of life
        log_line(log, "memory.sample", ts=str(t))
    stall = watch.look(56.0)
    assert stall is not None and (stall.phase, stall.quiet_s, stall.allowance_s) == ("training", 11.0, 10)
    log_line(log, "eval.started", step=2)
    assert watch.look(57.0) is None
    assert watch.look(116.0) is None and watch.look(118.0).phase == "evaluating"
    log_line(log, "eval.started", step=2)  # the same line again (a writer that repeats itself): not new
    assert watch.look(119.0) is not None


# ------------------------------------------------------------------ the tick


@pytest.fixture
def daemon(tmp_path, monkeypatch):
    for name in [n for n in os.environ if n.startswith("MTLD_")]:
        monkeypatch.delenv(name)
    settings = Settings(home=tmp_path / "home", train={"device": "cpu", "start_batch_size": 8},
                        daemon={"prevent_sleep": False, "notify": False, "stop_timeout_s": 20},
                        watchdog={"stall_s": 100, "start_s": 200, "max_stalls": 2})
    configure(settings.daemon_log)
    store = Store(settings.db_path)
    executor = FakeExecutor()
    d = Daemon(settings, store, executor=executor, probe=ScriptedProbe([reading("normal")]), clock=lambda: T0)
    yield d, store, executor, settings
    store.close()


def test_a_hung_run_is_stopped_retried_one_size_down_then_held_after_two_stalls(daemon):
    d, store, executor, settings = daemon
    job = submit(store, settings)
    d.tick(T0)
    first = executor.runs[0]
    d.tick(T0 + 150)  # it shows progress: nothing happens
    assert first.signals == []
    first.hang()
    d.tick(T0 + 250)
    assert first.signals == []  # quiet for 100 s: within the allowance (100 s training, 200 s starting)
    d.tick(T0 + 451)
    assert first.signals == [signal.SIGTERM]
    [stalled] = events(settings, "run.stalled")
    assert (stalled["phase"], stalled["allowance_s"]) == ("training", 100.0) and stalled["quiet_s"] > 100
    d.tick(T0 + 452)  # it checkpointed and exited 75 on SIGTERM; retried at once
    run = store.runs_for(job)[0]
    requeued = [t for t in store.transitions_for(job) if t.to_state == "queued"][-1]
    assert run.outcome == "stalled" and requeued.reason.startswith("no progress for ")
    assert store.get(job).last_error.startswith("no progress for ")  # what `mtld status` shows
    second = executor.runs[1]
    assert store.latest_run(job).micro_batch == 4  # one size down
    second.hang()
    d.tick(T0 + 800)  # never a step: the start's allowance (200 s) is over
    assert second.signals == [signal.SIGTERM]
    d.tick(T0 + 801)
    held = store.get(job)
    assert held.state == "queued" and "stalled 2 times in a row" in held.hold
    d.tick(T0 + 900)
    assert len(executor.runs) == 2  # held: not started a third time
    info = collect(settings, store, datetime.fromtimestamp(T0 + 900).astimezone())
    assert "stalled 2 times in a row" in info["queued"][0]["hold"]


def test_a_run_that_ignores_the_stop_is_killed_after_the_stop_timeout(daemon):
    _, store, _, settings = daemon
    executor = FakeExecutor(ends_on_term=False)
    d = Daemon(settings, store, executor=executor, probe=ScriptedProbe([reading("normal")]), clock=lambda: T0)
    submit(store, settings)
    d.tick(T0)
    executor.runs[0].hang()
    d.tick(T0 + 301)
    assert executor.runs[0].signals == [signal.SIGTERM]
    d.tick(T0 + 320)
    assert executor.runs[0].signals == [signal.SIGTERM]  # within daemon.stop_timeout_s (20 s)
    d.tick(T0 + 322)
    assert executor.runs[0].signals == [signal.SIGTERM, signal.SIGKILL]
    assert events(settings, "run.killed")[0]["reason"] == "stalled"
    d.tick(T0 + 323)
    assert store.runs_for(1)[0].outcome == "stalled"  # the watchdog's kill: not "killed" by the OOM killer


def test_a_gpu_failure_in_the_childs_output_is_out_of_memory_and_the_next_attempt_is_smaller(daemon):
    d, store, executor, settings = daemon
    job = submit(store, settings)
    d.tick(T0)
    (Path(store.get(job).run_dir) / "child.log").write_text("loading...\n" + MPS_OOM)
    executor.runs[0].end(1)
    d.tick(T0 + 1)
    run = store.runs_for(job)[0]
    requeued = [t for t in store.transitions_for(job) if t.to_state == "queued"][-1]
    assert run.outcome == "out_of_memory" and "Insufficient Memory" in requeued.reason
    assert store.latest_run(job).micro_batch == 4  # retried at once, one size down


# ------------------------------------------------------------------ awake for the window


class FakeInhibitor:
    held: list[int] = []

    def __init__(self) -> None:
        self.active = False

    def start_for(self, seconds: int, reason: str) -> bool:
        FakeInhibitor.held.append(seconds)
        self.active = True
        return True

    def stop(self) -> None:
        self.active = False


def test_the_machine_is_kept_awake_for_a_window_that_opens_within_the_hour_on_mains_power(tmp_path, monkeypatch):
    for name in [n for n in os.environ if n.startswith("MTLD_")]:
        monkeypatch.delenv(name)
    settings = Settings(home=tmp_path / "home", train={"device": "cpu"}, daemon={"notify": False},
                        schedule={"windows": ["22:00-07:00"]})
    configure(settings.daemon_log)
    store = Store(settings.db_path)
    d = Daemon(settings, store, executor=FakeExecutor(), probe=ScriptedProbe([reading("normal")]))
    on_battery = [False]
    FakeInhibitor.held = []
    d.awake = WindowAwake(settings, d.log, power=lambda: on_battery[0], inhibitor=FakeInhibitor)
    day = datetime(2026, 11, 27).astimezone()
    at = lambda h, m=0: day.replace(hour=h, minute=m).timestamp()  # noqa: E731
    d.tick(at(20, 30))
    assert FakeInhibitor.held == []  # nothing queued
    submit(store, settings)
    d.tick(at(20, 30))
    assert FakeInhibitor.held == []  # 90 minutes ahead: not yet
    d.tick(at(21, 30))
    assert FakeInhibitor.held == [30 * 60 + 120]  # until the opening, and a little past it
    assert events(settings, "power.awake_until_window")[0]["opens_in_s"] == 1800
    shown = lambda t: collect(settings, store, datetime.fromtimestamp(t).astimezone())["schedule"]  # noqa: E731
    monkeypatch.setattr("mtld.queue.status.on_battery", lambda: False)  # `mtld status` reads the power itself
    assert shown(at(21, 30))["kept_awake"] and not shown(at(20, 30))["kept_awake"]
    d.tick(at(21, 40))
    assert len(FakeInhibitor.held) == 1 and d.awake.held.active  # held once, not again each tick
    on_battery[0] = True
    d.tick(at(21, 50))
    assert d.awake.held is None and events(settings, "power.awake_released")
    on_battery[0] = False
    d.tick(at(21, 55))
    d.tick(at(22, 0))  # the window opens: the run holds its own assertion
    assert d.awake.held is None and len(d.executor.runs) == 1
    store.close()


# ------------------------------------------------------------------ a real child, really stopped


@pytest.mark.slow
def test_a_real_child_stopped_with_sigstop_is_stopped_retried_one_size_down_then_held(tmp_path, data_dir):
    home = Home(tmp_path / "home")
    home.env.update({"MTLD_WATCHDOG__STALL_S": "3", "MTLD_WATCHDOG__STEP_FACTOR": "1", "MTLD_WATCHDOG__START_S": "120",
                     "MTLD_DAEMON__STOP_TIMEOUT_S": "2", "MTLD_TRAIN__PROGRESS_EVERY_S": "0",
                     "MTLD_TRAIN__START_BATCH_SIZE": "8"})
    job_id = home.submit(job_file(data_dir, epochs=50))
    daemon = home.daemon()
    for attempt in (1, 2):
        home.wait_for(lambda: len(home.runs(job_id)) == attempt
                      and [e for e in home.run_events(job_id, "step.progress")
                           if e.get("run_id") == home.runs(job_id)[-1].id], timeout=180)
        os.kill(home.runs(job_id)[-1].pid, signal.SIGSTOP)  # a GPU call that never returns, as far as anyone sees
        home.wait_for(lambda: home.runs(job_id)[attempt - 1].ended_at is not None, timeout=60)
    held = home.wait_for(lambda: (lambda j: j if j.hold else None)(home.job(job_id)), timeout=30)
    daemon.send_signal(signal.SIGTERM)
    assert finish(daemon, timeout=60)[0] == 0
    first, second = home.runs(job_id)
    assert (first.outcome, first.micro_batch) == ("stalled", 8) and (second.outcome, second.micro_batch) == ("stalled", 4)
    assert held.state == "queued" and "stalled 2 times in a row" in held.hold
    assert [e["reason"] for e in home.daemon_events("run.killed")] == ["stalled", "stalled"]  # SIGTERM cannot wake it
    shown = json.loads(home.mtld("status", "--json").stdout)
    assert shown["running"] == [] and "stalled 2 times" in shown["queued"][0]["hold"]
