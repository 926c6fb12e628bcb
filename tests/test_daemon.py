"""The daemon for real: a daemon process, a SQLite file under MTLD_HOME, the tiny model.

Only what needs real processes and signals; the tick's decisions are in test_daemon_loop.
A test that signals a running run makes its runs hold before step HOLD_AT (the
`gate` fixture, tests/childhooks) instead of giving them many epochs: the run
is certainly still running, at a known step, when the signal lands, and it
goes on only when the test opens the gate.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.childhooks import Gate, hooks_env
from tests.conftest import Home, finish, job_file

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]
HOLD_AT = 3  # optimizer steps taken (and logged in step.progress) when a held run waits at the gate


@pytest.fixture
def home(tmp_path) -> Home:
    return Home(tmp_path / "home")


@pytest.fixture
def gate(home, tmp_path) -> Gate:
    """The runs of this home's daemon hold before step HOLD_AT until the gate opens (or they are stopped)."""
    gate = Gate(tmp_path / "gate")
    home.env = hooks_env(home.env, hold_at=HOLD_AT, gate=gate)
    return gate


def test_a_submitted_job_runs_to_success_with_its_events_logged(home, data_dir):
    job_id = home.submit(job_file(data_dir))
    code, stderr = finish(home.daemon("--exit-when-idle"))
    assert code == 0, stderr
    job = home.job(job_id)
    assert job.state == "succeeded"
    [run] = home.runs(job_id)
    assert (run.outcome, run.exit_code, run.micro_batch) == ("succeeded", 0, 4)
    assert run.figures["total_steps"] == run.figures["step"] > 0
    daemon_events = [e["event"] for e in home.daemon_events() if e.get("job_id") == job_id]
    assert daemon_events == ["job.submitted", "policy.decided", "run.launched", "run.exited", "job.succeeded"]
    run_events = {e["event"] for e in home.run_events(job_id)}
    assert {"run.started", "step.progress", "eval", "run.finished"} <= run_events
    assert all(e["job_id"] == job_id and e["run_id"] == run.id for e in home.run_events(job_id))
    assert (Path(job.run_dir) / "model").is_dir()


def test_sigkill_of_the_daemon_mid_run_then_restart_resumes_from_the_checkpoint(home, data_dir, gate):
    job_id = home.submit(job_file(data_dir, checkpoint_every=2))
    daemon = home.daemon()
    held = gate.wait_held(alive=lambda: daemon.poll() is None)  # after the checkpoint at step 2
    daemon.kill()
    daemon.wait()
    child_pid = home.runs(job_id)[0].pid
    assert held["pid"] == child_pid  # the orphaned child still holds: it cannot finish before the next daemon

    restarted = home.daemon("--exit-when-idle")
    home.wait_for(lambda: home.daemon_events("daemon.recovered"))
    gate.open()  # the resumed run goes on past the gate
    code, stderr = finish(restarted)
    assert code == 0, stderr
    assert home.job(job_id).state == "succeeded"
    first, second = home.runs(job_id)
    # stopped cleanly by the new daemon, it checkpointed and said so in its result.json: interrupted, not lost
    assert first.outcome == "interrupted" and second.outcome == "succeeded"
    assert any("stopped by the daemon at daemon start" in t.reason for t in home.transitions(job_id))
    recovered = home.daemon_events("daemon.recovered")
    assert recovered[0]["child"] == "stopped" and recovered[0]["pid"] == child_pid
    resumed = [e["resumed_from_step"] for e in home.run_events(job_id, "run.started")]
    assert not resumed[0] and resumed[1] > 0


def test_sigterm_of_the_daemon_requeues_the_run_with_a_checkpoint_and_exits_in_time(home, data_dir, gate):
    job_id = home.submit(job_file(data_dir, checkpoint_every=1000))
    daemon = home.daemon()
    gate.wait_held(alive=lambda: daemon.poll() is None)
    started = time.monotonic()
    daemon.send_signal(signal.SIGTERM)
    code, stderr = finish(daemon, timeout=30)
    assert code == 0, stderr
    assert time.monotonic() - started < 20 + 5
    job = home.job(job_id)
    assert job.state == "queued"
    [run] = home.runs(job_id)
    assert (run.outcome, run.exit_code) == ("interrupted", 75)
    # the checkpoint the stop took where the run held (none by steps: checkpoint_every is 1000)
    assert [p.name for p in (Path(job.run_dir) / "checkpoints").glob("step-*.pt")] == [f"step-{HOLD_AT:08d}.pt"]
    assert home.daemon_events("run.stop_requested")[0]["reason"] == "shutdown"


def test_cancel_of_a_running_job(home, data_dir, gate):
    job_id = home.submit(job_file(data_dir))
    daemon = home.daemon("--exit-when-idle")
    gate.wait_held(alive=lambda: daemon.poll() is None)
    status = json.loads(home.mtld("status", "--json").stdout)
    assert status["daemon"]["pid"] == daemon.pid
    [running] = status["running"]
    assert running["id"] == job_id and running["progress"]["step"] == HOLD_AT < running["progress"]["total"]
    assert running["progress"]["micro_batch"] == 4 and running["progress"]["eta_s"] is not None
    assert "cancel requested" in home.mtld("cancel", str(job_id)).stdout
    code, stderr = finish(daemon)
    assert code == 0, stderr
    assert home.job(job_id).state == "cancelled"
    [run] = home.runs(job_id)
    assert (run.outcome, run.exit_code) == ("cancelled", 75)


def test_pause_now_requeues_and_resume_continues(home, data_dir, gate):
    job_id = home.submit(job_file(data_dir))
    daemon = home.daemon("--exit-when-idle")
    gate.wait_held(alive=lambda: daemon.poll() is None)
    home.mtld("pause", "--now")
    home.wait_for(lambda: home.job(job_id).state == "queued")  # that nothing starts while paused: test_daemon_loop
    gate.open()
    home.mtld("resume")
    code, stderr = finish(daemon)
    assert code == 0, stderr
    first, second = home.runs(job_id)
    assert (first.outcome, second.outcome) == ("interrupted", "succeeded")
    assert home.run_events(job_id, "run.started")[1]["resumed_from_step"] == HOLD_AT  # the stop's checkpoint


def test_a_child_killed_by_sigkill_is_retried_one_size_down(home, data_dir, gate):
    job_id = home.submit(job_file(data_dir))
    daemon = home.daemon("--exit-when-idle")
    held = gate.wait_held(alive=lambda: daemon.poll() is None)
    assert held["pid"] == home.runs(job_id)[0].pid
    os.kill(held["pid"], signal.SIGKILL)
    gate.open()  # the retry goes on past the gate
    code, stderr = finish(daemon)
    assert code == 0, stderr
    first, second = home.runs(job_id)
    assert (first.outcome, first.signal, first.micro_batch) == ("killed", 9, 4)
    assert (second.outcome, second.micro_batch) == ("succeeded", 2)
    decided = [e for e in home.daemon_events("policy.decided") if e["job_id"] == job_id]
    assert "one size down" in decided[1]["reason"]


def test_a_second_daemon_on_the_same_state_refuses_to_start(home, data_dir):
    first = home.daemon()
    home.wait_for(lambda: (home.path / "daemon.pid").exists() and home.daemon_events("daemon.started"))
    second = home.mtld("daemon", check=False)
    assert second.returncode == 0  # so that launchd's KeepAlive {SuccessfulExit: false} leaves it down
    assert f"already running on this state (pid {first.pid}" in second.stderr
    [refused] = home.daemon_events("daemon.already_running")
    assert refused["pid"] == first.pid and "exits 0" in refused["message"]
    first.send_signal(signal.SIGINT)
    assert finish(first)[0] == 0


def test_submit_wakes_an_idle_daemon_at_once(home, data_dir):
    env_slow = dict(home.env, MTLD_DAEMON__POLL_INTERVAL_S="30")
    daemon = subprocess.Popen([sys.executable, "-m", "mtld", "daemon", "--quiet"], env=env_slow,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    home.wait_for(lambda: home.daemon_events("daemon.started"))
    time.sleep(0.5)  # past the first tick
    submitted = time.time()
    job_id = home.submit(job_file(data_dir))
    home.wait_for(lambda: home.runs(job_id), timeout=10)
    assert home.runs(job_id)[0].started_at - submitted < 5  # not the 30 s tick
    daemon.send_signal(signal.SIGTERM)
    assert finish(daemon)[0] == 0
