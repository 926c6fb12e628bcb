"""The daemon for real: a daemon process, a SQLite file under MTLD_HOME, the tiny model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mtld.store import Store

pytestmark = pytest.mark.timeout(240)

WORDS = ["good", "bad", "fine", "awful", "great", "poor", "nice", "dull", "Kyoto", "Ann", "Bob", "Osaka"]
JOB = """\
name = "{name}"
model = "{model}"
max_length = 32

[[tasks]]
name = "sentiment"
type = "classification"
train = "sentiment.jsonl"
eval = "sentiment.jsonl"

[[tasks]]
name = "entities"
type = "token_classification"
train = "entities.jsonl"
text_field = "tokens"
label_field = "tags"

[train]
epochs = {epochs}
checkpoint_every = {checkpoint_every}
effective_batch_size = 8
"""


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    from mtld.tinymodel import build_tiny_model

    folder = tmp_path_factory.mktemp("daemon-job")
    sentiment, entities = [], []
    for i in range(96):
        a, b = WORDS[i % 8], WORDS[(i * 5 + 3) % 8]
        sentiment.append({"text": f"the film was {a} and {b}", "label": "pos" if WORDS.index(a) % 2 == 0 else "neg"})
        name, place = ("Ann", "Kyoto") if i % 2 else ("Bob", "Osaka")
        entities.append({"tokens": [name, "went", "to", place, "today"], "tags": ["B-PER", "O", "O", "B-LOC", "O"]})
    for file, rows in (("sentiment.jsonl", sentiment), ("entities.jsonl", entities)):
        (folder / file).write_text("".join(json.dumps(r) + "\n" for r in rows))
    build_tiny_model(folder / "model", (r["text"] for r in sentiment), layers=1, hidden=32, heads=2, vocab_size=200)
    return folder


def job_file(data_dir: Path, name: str = "job", epochs: int = 1, checkpoint_every: int = 50) -> Path:
    path = data_dir / f"{name}.toml"
    path.write_text(JOB.format(name=name, model=data_dir / "model", epochs=epochs, checkpoint_every=checkpoint_every))
    return path


class Home:
    """One MTLD_HOME: run the CLI and the daemon against it as real processes."""

    def __init__(self, path: Path):
        self.path = path
        self.env = {
            **os.environ,
            "MTLD_HOME": str(path),
            "MTLD_DAEMON__POLL_INTERVAL_S": "0.5",
            "MTLD_DAEMON__NOTIFY": "false",
            "MTLD_DAEMON__PREVENT_SLEEP": "false",
            "MTLD_DAEMON__STOP_TIMEOUT_S": "20",
            "MTLD_TRAIN__DEVICE": "cpu",
            "MTLD_TRAIN__PROGRESS_EVERY_S": "0",
            "OMP_NUM_THREADS": "1",
        }
        self.env.pop("MTLD_CONFIG", None)

    def mtld(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "mtld", *args], env=self.env, capture_output=True, text=True,
                              check=check, timeout=60)

    def submit(self, job: Path, *args: str) -> int:
        return int(self.mtld("submit", str(job), *args).stdout)

    def daemon(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "mtld", "daemon", "--quiet", *args], env=self.env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def store(self) -> Store:
        return Store(self.path / "state.db")

    def job(self, job_id: int):
        with self.store() as store:
            return store.get(job_id)

    def runs(self, job_id: int):
        with self.store() as store:
            return store.runs_for(job_id)

    def daemon_events(self, name: str | None = None) -> list[dict]:
        path = self.path / "logs" / "mtld.jsonl"
        events = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
        return [e for e in events if name is None or e["event"] == name]

    def run_events(self, job_id: int, name: str | None = None) -> list[dict]:
        path = Path(self.job(job_id).run_dir) / "run.jsonl"
        events = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
        return [e for e in events if name is None or e["event"] == name]

    def wait_for(self, what, timeout: float = 120, poll: float = 0.1):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = what()
            if value:
                return value
            time.sleep(poll)
        raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def home(tmp_path) -> Home:
    return Home(tmp_path / "home")


def finish(daemon: subprocess.Popen, timeout: float = 180) -> tuple[int, str]:
    _, stderr = daemon.communicate(timeout=timeout)
    return daemon.returncode, stderr


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


def test_priorities_and_not_before_decide_the_order(home, data_dir):
    job = job_file(data_dir)
    low = home.submit(job, "--priority", "0")
    later = home.submit(job, "--priority", "9", "--not-before", time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() + 4)))
    high = home.submit(job, "--priority", "5")
    code, stderr = finish(home.daemon("--exit-when-idle"))
    assert code == 0, stderr
    started = sorted((home.runs(j)[0].started_at, j) for j in (low, later, high))
    assert [j for _, j in started] == [high, later, low]
    assert home.runs(later)[0].started_at >= home.job(later).not_before


def test_sigkill_of_the_daemon_mid_run_then_restart_resumes_from_the_checkpoint(home, data_dir):
    job_id = home.submit(job_file(data_dir, epochs=4, checkpoint_every=3))
    daemon = home.daemon()
    home.wait_for(lambda: home.run_events(job_id, "checkpoint.saved"))
    daemon.kill()
    daemon.wait()
    child_pid = home.runs(job_id)[0].pid

    code, stderr = finish(home.daemon("--exit-when-idle"))
    assert code == 0, stderr
    assert home.job(job_id).state == "succeeded"
    first, second = home.runs(job_id)
    assert first.outcome == "lost" and second.outcome == "succeeded"
    recovered = home.daemon_events("daemon.recovered")
    assert recovered[0]["child"] == "stopped" and recovered[0]["pid"] == child_pid
    resumed = [e["resumed_from_step"] for e in home.run_events(job_id, "run.started")]
    assert not resumed[0] and resumed[1] > 0


def test_sigterm_of_the_daemon_requeues_the_run_with_a_checkpoint_and_exits_in_time(home, data_dir):
    job_id = home.submit(job_file(data_dir, epochs=4, checkpoint_every=1000))
    daemon = home.daemon()
    home.wait_for(lambda: home.run_events(job_id, "step.progress"))
    started = time.monotonic()
    daemon.send_signal(signal.SIGTERM)
    code, stderr = finish(daemon, timeout=30)
    assert code == 0, stderr
    assert time.monotonic() - started < 20 + 5
    job = home.job(job_id)
    assert job.state == "queued"
    [run] = home.runs(job_id)
    assert (run.outcome, run.exit_code) == ("interrupted", 75)
    assert list((Path(job.run_dir) / "checkpoints").glob("step-*.pt"))
    assert home.daemon_events("run.stop_requested")[0]["reason"] == "shutdown"


def test_cancel_of_a_running_job(home, data_dir):
    job_id = home.submit(job_file(data_dir, epochs=6))
    daemon = home.daemon("--exit-when-idle")
    home.wait_for(lambda: home.run_events(job_id, "step.progress"))
    status = json.loads(home.mtld("status", "--json").stdout)
    assert status["daemon"]["pid"] == daemon.pid
    [running] = status["running"]
    assert running["id"] == job_id and 0 < running["progress"]["step"] <= running["progress"]["total"]
    assert running["progress"]["micro_batch"] == 4 and running["progress"]["eta_s"] is not None
    assert "cancel requested" in home.mtld("cancel", str(job_id)).stdout
    code, stderr = finish(daemon)
    assert code == 0, stderr
    assert home.job(job_id).state == "cancelled"
    [run] = home.runs(job_id)
    assert (run.outcome, run.exit_code) == ("cancelled", 75)


def test_pause_now_requeues_and_resume_continues(home, data_dir):
    job_id = home.submit(job_file(data_dir, epochs=4))
    daemon = home.daemon("--exit-when-idle")
    home.wait_for(lambda: home.run_events(job_id, "step.progress"))
    home.mtld("pause", "--now")
    home.wait_for(lambda: home.job(job_id).state == "queued")
    time.sleep(1.5)  # three ticks: paused, so nothing starts
    assert len(home.runs(job_id)) == 1 and home.job(job_id).state == "queued"
    home.mtld("resume")
    code, stderr = finish(daemon)
    assert code == 0, stderr
    first, second = home.runs(job_id)
    assert (first.outcome, second.outcome) == ("interrupted", "succeeded")
    assert home.run_events(job_id, "run.started")[1]["resumed_from_step"] > 0


def test_pause_lets_the_running_job_finish_but_starts_no_other(home, data_dir):
    first = home.submit(job_file(data_dir))
    second = home.submit(job_file(data_dir))
    daemon = home.daemon()
    home.wait_for(lambda: home.job(first).state == "running")
    home.mtld("pause")
    home.wait_for(lambda: home.job(first).state == "succeeded")
    time.sleep(1.5)
    assert home.job(second).state == "queued"
    daemon.send_signal(signal.SIGTERM)
    assert finish(daemon)[0] == 0


def test_a_child_killed_by_sigkill_is_retried_one_size_down(home, data_dir):
    job_id = home.submit(job_file(data_dir, epochs=4))
    daemon = home.daemon("--exit-when-idle")
    home.wait_for(lambda: home.run_events(job_id, "step.progress"))
    os.kill(home.runs(job_id)[0].pid, signal.SIGKILL)
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
    assert second.returncode == 1
    assert f"already running on this state (pid {first.pid}" in second.stderr
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
