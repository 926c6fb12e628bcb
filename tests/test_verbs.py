"""A job queue's everyday verbs: wait, restart, set, status --all / --state, cancel with no daemon, completions."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import time
from datetime import datetime, timezone

import pytest
from typer.testing import CliRunner

from mtld.queue import jobs
from mtld.cli import app
from mtld.store import Store
from tests.conftest import child_env, log_events, write_job
from tests.conftest import run_cli as mtld


@pytest.fixture
def home(tmp_path, monkeypatch):
    for name in [n for n in os.environ if n.startswith("MTLD_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("MTLD_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def job_file(tmp_path):
    folder = tmp_path / "job"
    folder.mkdir()
    return write_job(folder)


def store(home) -> Store:
    return Store(home / "state.db")


def end(home, job_id: int, state: str, error: str | None = None) -> None:
    """What the daemon would record: the job started and ended in `state`."""
    with store(home) as db:
        run = db.start_run(job_id, micro_batch=2, now=time.time())
        db.finish_run(run.id, outcome=state, now=time.time())
        db.transition(job_id, state, reason="the run ended", last_error=error, now=time.time())


# ------------------------------------------------------------------ mtld wait


def test_wait_returns_at_once_for_ended_jobs_with_the_outcome_as_exit_status(home, job_file):
    first, second = (int(mtld("submit", str(job_file))[1]) for _ in range(2))
    end(home, first, "succeeded")
    end(home, second, "succeeded")
    code, stdout, stderr = mtld("wait", str(first), str(second))
    assert code == 0 and stdout == f"job {first}: succeeded\njob {second}: succeeded\n"
    assert stderr == f"mtld wait: {first} succeeded, {second} succeeded\n"
    third = int(mtld("submit", str(job_file))[1])
    end(home, third, "failed", error="bad input: no rows")
    code, stdout, _ = mtld("wait", str(first), str(third), "--json")
    assert code == 1 and [j["state"] for j in json.loads(stdout)] == ["succeeded", "failed"]
    fourth = int(mtld("submit", str(job_file))[1])
    mtld("cancel", str(fourth))
    assert mtld("wait", str(fourth))[0] == 1


def test_wait_for_an_unknown_id_is_exit_2_before_any_waiting(home, job_file):
    job_id = int(mtld("submit", str(job_file))[1])
    assert mtld("wait", str(job_id), "42") == (2, "", "no job 42\n")
    assert mtld("wait", str(10**21))[0] == 2


def test_wait_blocks_until_the_job_ends_and_says_each_change(home, job_file, monkeypatch):
    """`mtld wait` sleeps --interval between looks at the store (jobs.wait's injected sleep); each sleep here is
    where a daemon moves the job on, so every state is seen whatever the machine's pace."""
    job_id = int(mtld("submit", str(job_file))[1])

    def start() -> None:
        with store(home) as db:
            db.start_run(job_id, micro_batch=2, now=time.time())

    def succeed() -> None:
        with store(home) as db:
            db.finish_run(db.latest_run(job_id).id, outcome="succeeded", now=time.time())
            db.transition(job_id, "succeeded", reason="done", now=time.time())

    daemon_steps, slept = [start, succeed], []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        assert daemon_steps, "still waiting after the job ended"
        daemon_steps.pop(0)()

    monkeypatch.setattr(jobs, "wait", functools.partial(jobs.wait, sleep=sleep))
    code, stdout, stderr = mtld("wait", str(job_id), "--interval", "0.1")
    assert code == 0 and stdout == f"job {job_id}: succeeded\n"
    assert slept == [0.1, 0.1]  # --interval is what it sleeps, and it stops looking once the job has ended
    lines = stderr.splitlines()
    assert lines[0].startswith(f"mtld wait: {job_id} queued  (no daemon is running")
    assert lines[1].startswith(f"mtld wait: {job_id} running") and lines[2:] == [f"mtld wait: {job_id} succeeded"]


def test_wait_as_a_function_reads_only_the_store(home, job_file):
    job_id = int(mtld("submit", str(job_file))[1])
    seen, sleeps = [], []

    def sleep(seconds: float) -> None:  # the "daemon" ends the job while the waiter sleeps
        sleeps.append(seconds)
        end(home, job_id, "cancelled")

    with store(home) as db:
        ended = jobs.wait(db, [job_id], on_change=lambda js: seen.append([j.state for j in js]), poll_s=7, sleep=sleep)
    assert [j.state for j in ended] == ["cancelled"] and seen == [["queued"], ["cancelled"]] and sleeps == [7]
    assert jobs.wait_status(ended) == 1


@pytest.mark.slow
def test_wait_in_another_process_sees_the_end(home, job_file, tmp_path):
    """The job ends only after the waiter has said it is queued (its first look at the store): the end is
    something it must see on a later look, not before it started."""
    job_id = int(mtld("submit", str(job_file))[1])
    said = tmp_path / "wait.stderr"
    with said.open("w") as stderr:
        waiter = subprocess.Popen([sys.executable, "-m", "mtld", "wait", str(job_id), "--interval", "0.2"],
                                  env=child_env(MTLD_HOME=str(home)), stdout=subprocess.PIPE, stderr=stderr, text=True)
    try:
        deadline = time.monotonic() + 60
        while not said.read_text().endswith("\n") and waiter.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert said.read_text().startswith(f"mtld wait: {job_id} queued"), said.read_text()
        end(home, job_id, "succeeded")
        out, _ = waiter.communicate(timeout=60)
    finally:
        waiter.kill()
    assert waiter.returncode == 0 and out == f"job {job_id}: succeeded\n"
    assert said.read_text().splitlines()[1:] == [f"mtld wait: {job_id} succeeded"]


# ------------------------------------------------------------------ mtld restart


def test_restart_queues_a_new_job_from_the_stored_spec(home, job_file):
    old = int(mtld("submit", str(job_file), "--batch-size", "2")[1])
    job_file.write_text(job_file.read_text().replace("epochs = 2", "epochs = 9"))  # the stored spec is what restarts
    assert mtld("restart", str(old)) == (1, "", f"job {old} is queued; only a finished job can be restarted\n")
    mtld("cancel", str(old))
    code, stdout, _ = mtld("restart", str(old))
    new = int(stdout)
    assert code == 0 and new != old
    shown = json.loads(mtld("show", str(new), "--json")[1])
    assert (shown["state"], shown["batch_size"], shown["spec"]["train"]["epochs"]) == ("queued", "2", 2)
    assert shown["transitions"][0]["reason"] == f"restarted from job {old}"
    assert shown["run_dir"].endswith(f"/{new}-demo")
    assert json.loads(mtld("show", str(old), "--json")[1])["state"] == "cancelled"
    [restarted] = log_events(home / "logs" / "mtld.jsonl", "job.restarted")
    assert (restarted["job_id"], restarted["from_job"]) == (new, old)


def test_restart_checks_the_spec_again(home, job_file):
    old = int(mtld("submit", str(job_file))[1])
    mtld("cancel", str(old))
    assert mtld("restart", str(old), "--priority", "5000") == (
        2, "", "--priority: Input should be less than or equal to 1000\n")
    (job_file.parent / "data" / "sentiment.jsonl").unlink()
    code, _, stderr = mtld("restart", str(old))
    assert code == 2 and stderr.startswith(f"job {old}: tasks.0.train - file not found")
    assert mtld("restart", "42") == (1, "", "no job 42\n")


def test_restart_of_a_fired_job_queues_one_job_not_a_schedule(home, job_file):
    with store(home) as db:
        schedule = db.add_schedule(name="nightly", cron="0 1 * * *", spec_json="", job_file=str(job_file),
                                   run_root=str(home / "runs"), next_fire_at=1.0, now=1.0)
    spec = json.loads(mtld("show", mtld("submit", str(job_file))[1].strip(), "--json")[1])["spec"]
    spec["schedule"]["cron"] = "0 1 * * *"
    with store(home) as db:
        fired = db.submit(name="nightly-1", spec_json=json.dumps(spec), job_file=str(job_file), run_root="/r", now=1.0)
        db.cancel(fired.id, now=2.0)
    code, stdout, _ = mtld("restart", str(fired.id), "--json")
    assert code == 0 and json.loads(stdout)["state"] == "queued"
    with store(home) as db:
        assert [s.id for s in db.list_schedules()] == [schedule.id]


# ------------------------------------------------------------------ mtld set


def test_set_changes_a_queued_job_through_the_same_validation(home, job_file):
    job_id = int(mtld("submit", str(job_file))[1])
    code, stdout, _ = mtld("set", str(job_id), "--priority", "7", "--not-before", "2031-01-02T03:04", "--batch-size",
                           "4", "--json")
    changed = json.loads(stdout)
    assert code == 0 and (changed["priority"], changed["batch_size"]) == (7, "4")
    when = datetime(2031, 1, 2, 3, 4).astimezone()
    assert changed["not_before"] == when.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")
    shown = json.loads(mtld("show", str(job_id), "--json")[1])
    assert (shown["spec"]["schedule"]["priority"], shown["spec"]["train"]["batch_size"]) == (7, 4)
    assert shown["transitions"][-1]["reason"].startswith("changed: priority 0 -> 7, not_before None -> ")
    assert mtld("set", str(job_id), "--priority", "5000") == (
        2, "", "--priority: Input should be less than or equal to 1000\n")
    assert mtld("set", str(job_id), "--batch-size", "3")[0] == 2
    assert mtld("set", str(job_id))[0] == 2
    code, stdout, _ = mtld("set", str(job_id), "--not-before", "now", "--json")
    assert code == 0 and datetime.fromisoformat(json.loads(stdout)["not_before"]) <= datetime.now(timezone.utc)
    assert json.loads(mtld("show", str(job_id), "--json")[1])["priority"] == 7
    [event, _] = log_events(home / "logs" / "mtld.jsonl", "job.changed")
    assert (event["job_id"], event["priority"], event["batch_size"]) == (job_id, 7, "4")


def test_set_refuses_a_job_that_is_not_queued(home, job_file):
    job_id = int(mtld("submit", str(job_file))[1])
    end(home, job_id, "succeeded")
    assert mtld("set", str(job_id), "--priority", "3") == (
        1, "", f"job {job_id} is succeeded; only a queued job can be changed\n")
    assert mtld("set", "42", "--priority", "3") == (1, "", "no job 42\n")


# ------------------------------------------------------------------ status --all / --state


def test_status_filters(home, job_file):
    ids = [int(mtld("submit", str(job_file))[1]) for _ in range(14)]
    for job_id in ids[:12]:
        end(home, job_id, "failed" if job_id % 2 else "succeeded")
    info = json.loads(mtld("status", "--json")[1])
    assert len(info["finished"]) == 10 and info["finished_hidden"] == 2 and len(info["queued"]) == 2
    assert "2 older finished jobs not shown: mtld status --all" in mtld("status")[1]
    info = json.loads(mtld("status", "--all", "--json")[1])
    assert len(info["finished"]) == 12 and info["finished_hidden"] == 0
    info = json.loads(mtld("status", "--state", "failed", "--json")[1])
    assert {j["state"] for j in info["finished"]} == {"failed"} and len(info["finished"]) == 6
    assert info["queued"] == [] and info["states"] == ["failed"]
    info = json.loads(mtld("status", "--state", "queued", "--state", "succeeded", "--json")[1])
    assert [j["id"] for j in info["queued"]] == ids[12:] and len(info["finished"]) == 6
    assert "No jobs." in mtld("status", "--state", "running")[1].splitlines()


# ------------------------------------------------------------------ cancel with no daemon


def test_cancel_of_a_job_left_running_with_no_child_and_no_daemon_works(home, job_file):
    """Issue 13, case 2: `cancel` only asked, and waited for a child that did not exist."""
    job_id = int(mtld("submit", str(job_file))[1])
    with store(home) as db:
        db.start_run(job_id, micro_batch=2, now=time.time())  # the start was recorded; the child never ran
    assert mtld("cancel", str(job_id)) == (0, f"job {job_id}: cancelled\n", "")
    shown = json.loads(mtld("show", str(job_id), "--json")[1])
    assert shown["state"] == "cancelled" and [r["outcome"] for r in shown["runs"]] == ["cancelled"]
    assert log_events(home / "logs" / "mtld.jsonl", "job.cancelled")[0]["child"] == "gone"


@pytest.mark.slow
def test_cancel_of_a_running_job_with_no_daemon_cancels_it_and_stops_its_child(home, job_file, tmp_path):
    job_id = int(mtld("submit", str(job_file))[1])
    with store(home) as db:
        run_dir = db.get(job_id).run_dir
        run = db.start_run(job_id, micro_batch=2, now=time.time())  # a daemon started it, then died
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "mtld.train", run_dir],
                                 start_new_session=True)
        db.set_run_handle(run.id, executor="local", ref=str(child.pid), pid=child.pid)
    try:
        assert mtld("cancel", str(job_id)) == (0, f"job {job_id}: cancelled\n", "")
        assert child.wait(timeout=20) != 0  # SIGTERM: a real child would checkpoint first
    finally:
        child.kill()
    shown = json.loads(mtld("show", str(job_id), "--json")[1])
    assert shown["state"] == "cancelled" and shown["runs"][0]["outcome"] == "cancelled"
    [cancelled] = log_events(home / "logs" / "mtld.jsonl", "job.cancelled")
    assert cancelled["child"] == "stopped"


# ------------------------------------------------------------------ completions


def test_completion_scripts_are_printed_not_installed(home, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    (tmp_path / "user").mkdir()
    # typer's own switch: name the shell instead of detecting the one running the tests
    monkeypatch.setenv("_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION", "1")
    for shell, mark in (("bash", "complete -o default -F _mtld_completion mtld"), ("zsh", "compdef _mtld_completion mtld"),
                        ("fish", "complete --command mtld")):
        result = CliRunner().invoke(app, ["--show-completion", shell], prog_name="mtld")
        assert result.exit_code == 0 and mark in result.stdout and "_MTLD_COMPLETE" in result.stdout
    assert list((tmp_path / "user").iterdir()) == []  # nothing written


@pytest.mark.slow
def test_completion_answers_commands_and_options():
    env = child_env(_MTLD_COMPLETE="complete_bash", COMP_WORDS="mtld status --st", COMP_CWORD="2")
    done = subprocess.run([sys.executable, "-c", "from mtld.cli import main; main()"], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.split() == ["--state"]
