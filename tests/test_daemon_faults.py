"""A tick that cannot wedge: a failure at each step of starting, recording or finishing a run fails that run
or its job (the reason in last_error), never the tick; the queue moves on; a new daemon starts cleanly.

Failures are injected around the production code, not inside it: a store that fails on cue
(mtld.testing.FaultyStore), a run folder that cannot be written (a real `/dev/null/runs`, or RunDir's
writer replaced), an executor that cannot start. The daemon is driven by `tick(now)` with a fixed clock.
"""

from __future__ import annotations

import errno
import json
import os
import sqlite3
from pathlib import Path

import pytest

from mtld.daemon.loop import Daemon
from mtld.config.jobspec import JobSpec, spec_to_json
from mtld.logs.events import configure
from mtld.memory import Level, Reading
from mtld.runs.rundir import RunDir
from mtld.runs.files import RunResult
from mtld.config.settings import Settings
from mtld.queue.status import collect
from mtld.store import Store
from mtld.testing import FakeExecutor, FaultyStore, ScriptedProbe
from tests.conftest import log_events

T0 = 1_790_000_000.0
SPEC = JobSpec.model_validate({"name": "job", "model": "/models/bert", "tasks": [
    {"name": "t", "type": "classification", "train": "/data/t.jsonl"}]})


class Harness:
    """One state folder: its settings, the real store, a FaultyStore around it, the daemon under test."""

    def __init__(self, home: Path):
        self.settings = Settings(home=home, train={"device": "cpu"}, daemon={"prevent_sleep": False, "notify": False})
        configure(self.settings.daemon_log)
        self.real = Store(self.settings.db_path)
        self.store = FaultyStore(self.real)
        self.executor = FakeExecutor()
        self.daemon = self.new_daemon()

    def new_daemon(self) -> Daemon:
        return Daemon(self.settings, self.store, executor=self.executor,
                      probe=ScriptedProbe([Reading(Level.NORMAL, None, None, None, "scripted")]), clock=lambda: T0)

    def submit(self, *, name: str = "job", priority: int = 0, spec_json: str | None = None,
               run_root: str | None = None) -> int:
        spec = spec_json or spec_to_json(SPEC.model_copy(update={"name": name}))
        return self.real.submit(name=name, spec_json=spec, job_file="/jobs/job.toml", priority=priority,
                                run_root=run_root or str(self.settings.local_runs_dir), now=T0 - 60).id

    def job(self, job_id: int):
        return self.real.get(job_id)

    def events(self, name: str) -> list[dict]:
        return log_events(self.settings.daemon_log, name)

    def assert_settled(self) -> None:
        """No job is running without the daemon's live run, and a new daemon on the same store starts cleanly."""
        running = [j.id for j in self.real.list_jobs(["running"])]
        active = [a.job_id for a in self.daemon.active]
        assert running == active
        open_runs = [r.job_id for r in self.real.active_runs()]
        assert open_runs == active
        fresh = Daemon(self.settings, self.real, executor=FakeExecutor(),
                       probe=ScriptedProbe([Reading(Level.NORMAL, None, None, None, "scripted")]), clock=lambda: T0)
        failures = len(self.events("daemon.recover_failed"))
        fresh.reconcile(T0 + 1000)  # what `mtld daemon` does at start: must not raise, nor find anything to fail
        assert len(self.events("daemon.recover_failed")) == failures


@pytest.fixture
def h(tmp_path, monkeypatch):
    for name in [n for n in os.environ if n.startswith("MTLD_")]:
        monkeypatch.delenv(name)
    harness = Harness(tmp_path / "home")
    yield harness
    harness.real.close()


def disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


# ------------------------------------------------------------------ starting a run


def test_a_stored_spec_this_mtld_refuses_fails_its_job_and_the_next_one_runs(h):
    """Issue 13, case 1: a priority of 5000 reached the store through an override; every tick then failed."""
    bad = json.loads(spec_to_json(SPEC))
    bad["schedule"]["priority"] = 5000
    broken = h.submit(spec_json=json.dumps(bad), priority=5000)
    good = h.submit(name="good")
    h.daemon.tick(T0)  # must not raise
    job = h.job(broken)
    assert job.state == "failed" and "schedule.priority" in job.last_error and "1000" in job.last_error
    assert h.real.runs_for(broken) == []  # it never started
    h.daemon.tick(T0 + 1)
    assert h.job(good).state == "running"
    [shown] = [j for j in collect(h.settings, h.real)["finished"] if j["id"] == broken]
    assert shown["last_error"] == job.last_error
    h.assert_settled()


def test_an_unwritable_output_fails_the_job_with_its_reason_and_cancel_and_restart_stay_clean(h):
    """Issue 13, case 2: `output = "/dev/null/runs"` left the job running with no child, and the daemon then
    failed every tick and every start."""
    broken = h.submit(run_root="/dev/null/runs")
    good = h.submit(name="good")
    h.daemon.tick(T0)
    job = h.job(broken)
    assert job.state == "failed"
    assert job.last_error.startswith("could not start: claiming the run folder: NotADirectoryError")
    [run] = h.real.runs_for(broken)
    assert run.outcome == "start_failed" and run.ended_at == T0
    [failed] = h.events("run.start_failed")
    assert failed["job_id"] == broken and failed["step"] == "claiming the run folder"
    assert h.events("daemon.tick_failed") == []
    collect(h.settings, h.real)  # status reads the job without a traceback
    h.daemon.tick(T0 + 1)
    assert h.job(good).state == "running"
    h.assert_settled()


@pytest.mark.parametrize("step", ["write_job", "write_launch"])
def test_a_run_folder_write_that_fails_fails_the_job(h, monkeypatch, step):
    monkeypatch.setattr(RunDir, step, disk_full)
    job_id = h.submit()
    h.daemon.tick(T0)
    job = h.job(job_id)
    assert job.state == "failed" and "No space left on device" in job.last_error
    assert h.executor.runs == []
    h.assert_settled()


def test_a_child_that_cannot_start_fails_the_job(h, monkeypatch):
    monkeypatch.setattr(h.executor, "start", disk_full)
    first, second = h.submit(priority=1), h.submit(name="second")
    h.daemon.tick(T0)
    assert h.job(first).state == "failed" and "starting the child" in h.job(first).last_error
    monkeypatch.undo()
    h.daemon.tick(T0 + 1)
    assert h.job(second).state == "running"
    h.assert_settled()


def test_a_start_that_cannot_be_recorded_fails_the_job_and_the_queue_moves_on(h):
    h.store.fail("start_run", RuntimeError("constraint broken"))
    first, second = h.submit(priority=1), h.submit(name="second")
    h.daemon.tick(T0)
    assert h.job(first).state == "failed"
    assert h.job(first).last_error == "could not start: recording its start: RuntimeError: constraint broken"
    h.daemon.tick(T0 + 1)
    assert h.job(second).state == "running"
    h.assert_settled()


def test_a_store_that_is_out_defers_the_job_until_it_is_back(h):
    h.store.fail("start_run", sqlite3.OperationalError("database is locked"))
    job_id = h.submit()
    h.daemon.tick(T0)  # must not raise
    assert h.job(job_id).state == "queued" and h.job(job_id).last_error is None
    [deferred] = h.events("run.deferred")
    assert deferred["reason"] == "store_unavailable" and deferred["job_id"] == job_id
    h.daemon.tick(T0 + 1)
    assert h.job(job_id).state == "running"
    h.assert_settled()


def test_a_pid_that_cannot_be_recorded_does_not_stop_the_run(h):
    h.store.fail("set_run_handle", OSError(errno.EIO, "I/O error"))
    job_id = h.submit()
    h.daemon.tick(T0)
    assert h.job(job_id).state == "running" and h.daemon.active != []
    h.executor.runs[0].end(0)
    h.daemon.tick(T0 + 1)
    assert h.job(job_id).state == "succeeded"
    h.assert_settled()


# ------------------------------------------------------------------ finishing a run


def started(h: Harness, **submit) -> int:
    job_id = h.submit(**submit)
    h.daemon.tick(T0)
    assert h.job(job_id).state == "running"
    return job_id


def write_result(h: Harness, job_id: int, **fields) -> None:
    run = h.real.latest_run(job_id)
    RunDir(h.job(job_id).run_dir).write_result(RunResult(job_id=job_id, run_id=run.id, **fields))


def test_a_result_that_cannot_be_read_leaves_the_exit_status_to_decide(h, monkeypatch):
    job_id = started(h)
    monkeypatch.setattr(RunDir, "read_result", lambda self: (_ for _ in ()).throw(RuntimeError("garbled")))
    h.executor.runs[0].end(0)
    h.daemon.tick(T0 + 1)
    assert h.job(job_id).state == "succeeded"
    h.assert_settled()


def test_a_run_end_that_cannot_be_recorded_once_is_settled_in_the_same_tick(h):
    """Issue 13, case 3 (bookkeeping): the daemon's own write failed and the job stayed running with no child."""
    job_id = started(h)
    second = h.submit(name="second", priority=1)
    h.store.fail("finish_run", OSError(errno.ENOSPC, "No space left on device"))
    h.executor.runs[0].end(1)
    h.daemon.tick(T0 + 1)
    assert h.store.failed == ["finish_run"]
    assert h.job(job_id).state == "queued"  # settled in the same tick, by the exit the daemon saw (status 1)
    assert [r.outcome for r in h.real.runs_for(job_id)] == ["crashed"]
    assert h.events("run.record_failed")[0]["job_id"] == job_id
    assert h.job(second).state == "running"  # and the queue moved on in that same tick
    h.assert_settled()


def test_figures_that_can_never_be_stored_fail_the_job_with_the_reason(h):
    job_id = started(h)
    second = h.submit(name="second")
    h.store.fail("finish_run", TypeError("figures are not JSON"), times=99, when=lambda *a, **kw: kw.get("figures"))
    write_result(h, job_id, outcome="succeeded", exit_code=0, step=10, total_steps=10)
    h.executor.runs[0].end(0)
    h.daemon.tick(T0 + 1)
    job = h.job(job_id)
    assert job.state == "failed" and "could not settle its run" in job.last_error and "not JSON" in job.last_error
    assert h.real.runs_for(job_id)[0].outcome == "lost"
    assert h.job(second).state == "running"
    h.assert_settled()


def test_a_move_that_cannot_be_recorded_is_settled_from_the_recorded_run(h):
    job_id = started(h)
    h.store.fail("transition", OSError(errno.ENOSPC, "No space left on device"))
    write_result(h, job_id, outcome="succeeded", exit_code=0)
    h.executor.runs[0].end(0)
    h.daemon.tick(T0 + 1)
    assert h.job(job_id).state == "succeeded"
    assert [t.reason for t in h.real.transitions_for(job_id)][-1] == "the run finished"
    h.assert_settled()


def test_a_cancel_is_not_dropped_when_the_end_of_the_run_cannot_be_recorded(h):
    job_id = started(h)
    h.real.cancel(job_id, now=T0)
    h.daemon.tick(T0 + 1)  # asks the child to stop; the fake run exits 75 (checkpointed)
    h.store.fail("finish_run", OSError(errno.ENOSPC, "No space left on device"))
    h.daemon.tick(T0 + 2)
    assert h.job(job_id).state == "cancelled"
    h.assert_settled()


def test_a_store_that_is_out_at_the_end_of_a_run_is_settled_by_a_later_tick(h):
    job_id = started(h)
    h.store.fail("finish_run", sqlite3.OperationalError("disk I/O error"), times=2)  # the record and the settling
    h.executor.runs[0].end(0)
    h.daemon.tick(T0 + 1)
    assert h.job(job_id).state == "running" and h.daemon.active == []  # nothing could be written
    write_result(h, job_id, outcome="succeeded", exit_code=0)
    h.daemon.tick(T0 + 2)  # the store is back
    assert h.job(job_id).state == "succeeded"
    h.assert_settled()


# ------------------------------------------------------------------ a job marked running with no live run


def test_a_daemon_settles_a_running_job_without_a_live_run_and_keeps_its_cancel(h):
    job_id = h.submit()
    h.real.start_run(job_id, micro_batch=4, now=T0)  # an earlier daemon recorded the start, then lost the run
    h.real.cancel(job_id, now=T0)
    h.daemon.tick(T0 + 1)
    assert h.job(job_id).state == "cancelled"
    assert h.real.runs_for(job_id)[0].outcome == "cancelled"
    h.assert_settled()


def test_reconcile_at_start_up_survives_a_job_it_cannot_settle(h):
    first, second = h.submit(), h.submit(name="second")
    for job_id in (first, second):
        h.real.start_run(job_id, micro_batch=4, now=T0)
    h.store.fail("transition", RuntimeError("broken row"), when=lambda job_id, *a, **kw: job_id == first)
    h.daemon.reconcile(T0 + 1)  # must not raise
    assert h.job(first).state == "failed" and "broken row" in h.job(first).last_error
    assert h.job(second).state == "queued"
    assert h.events("daemon.recover_failed")[0]["job_id"] == first
