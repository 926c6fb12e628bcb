"""The Ray executor for real: a local Ray head on 127.0.0.1, a real daemon, real Ray jobs.

The cluster is the one `.ci/run` started (MTLD_TEST_RAY_ADDRESS), else one this
module starts and stops (tests/raycluster.py). Run folders live under the test's
MTLD_HOME, which the one-machine cluster sees at the same path. The tick's
decisions with several slots and a remote executor are in test_daemon_loop.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from mtld.executor.ray.jobs import submission_id
from tests import raycluster
from tests.conftest import Home, finish, job_file

pytest.importorskip("ray.job_submission", reason="the ray extra is not installed (pip install 'mtld[ray]')")
pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def ray_address() -> str:
    if os.environ.get("MTLD_TEST_RAY_ADDRESS"):
        yield os.environ["MTLD_TEST_RAY_ADDRESS"]
        return
    folder = Path(tempfile.mkdtemp(prefix="mtld-ray-", dir="/tmp"))  # short: Ray's socket paths must fit
    try:
        yield raycluster.start(folder)
    finally:
        raycluster.stop(folder)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def client(ray_address):
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(ray_address)


def ray_home(path: Path, address: str, *, slots: int = 1) -> Home:
    home = Home(path)
    home.env.update({
        "MTLD_EXECUTOR__KIND": "ray",
        "MTLD_EXECUTOR__RAY__ADDRESS": address,
        "MTLD_EXECUTOR__RAY__PYTHON": sys.executable,
        "MTLD_EXECUTOR__RAY__SLOTS": str(slots),
        "MTLD_EXECUTOR__RAY__STOP_GRACE_S": "30",
        "MTLD_EXECUTOR__RAY__RUNTIME_ENV": json.dumps({"env_vars": {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}}),
    })
    return home


@pytest.fixture
def home(tmp_path, ray_address) -> Home:
    return ray_home(tmp_path / "home", ray_address)


def ray_jobs_of(client, home: Home) -> list:
    """The Ray jobs this home's daemon submitted (their submission ids carry its state folder's tag)."""
    prefix = submission_id(str(home.path), SimpleNamespace(id=0, started_at=0)).removesuffix("-0-0")
    return [j for j in client.list_jobs() if (j.submission_id or "").startswith(prefix)]


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    """The demo job (examples/demo.toml and its data) next to a tiny model built from that data."""
    folder = tmp_path_factory.mktemp("demo")
    shutil.copytree(REPO / "examples" / "data", folder / "data")
    shutil.copy(REPO / "examples" / "demo.toml", folder / "demo.toml")
    subprocess.run([sys.executable, "-m", "mtld.train.tinymodel", str(folder / "tiny-bert"),
                    *map(str, sorted((folder / "data").glob("*.train.jsonl")))], check=True, capture_output=True)
    return folder / "demo.toml"


def test_the_demo_job_runs_to_success_as_a_ray_job(home, demo, client):
    job_id = home.submit(demo)
    code, stderr = finish(home.daemon("--exit-when-idle"), timeout=240)
    assert code == 0, stderr
    job = home.job(job_id)
    assert job.state == "succeeded", job.last_error
    [run] = home.runs(job_id)
    assert (run.outcome, run.exit_code, run.executor) == ("succeeded", 0, "ray")
    [ray_job] = ray_jobs_of(client, home)
    assert ray_job.submission_id == run.ref and ray_job.status == "SUCCEEDED"
    assert run.node == ray_job.driver_node_id  # placed: recorded as the daemon saw it
    launched = home.daemon_events("run.launched")[0]
    assert (launched["executor"], launched["ref"], launched["pid"]) == ("ray", run.ref, None)
    run_dir = Path(job.run_dir)
    assert (run_dir / "model").is_dir() and {"run.started", "run.finished"} <= {e["event"] for e in home.run_events(job_id)}
    assert f"Running entrypoint for job {run.ref}" in (run_dir / "child.log").read_text()  # Ray's output, appended
    assert "run.finished" in home.mtld("logs", str(job_id)).stdout  # the run's log, read as for a local run


def test_a_cancel_mid_run_stops_the_ray_job_which_checkpoints(home, data_dir, client):
    job_id = home.submit(job_file(data_dir, epochs=40, checkpoint_every=1000))
    daemon = home.daemon("--exit-when-idle")
    home.wait_for(lambda: home.run_events(job_id, "step.progress"))
    status = json.loads(home.mtld("status", "--json").stdout)
    [running] = status["running"]
    assert status["executor"]["kind"] == "ray" and running["run"]["submission_id"].startswith("mtld-")
    home.mtld("cancel", str(job_id))
    code, stderr = finish(daemon, timeout=120)
    assert code == 0, stderr
    assert home.job(job_id).state == "cancelled"
    [run] = home.runs(job_id)
    assert (run.outcome, run.exit_code) == ("cancelled", 75)  # SIGTERM from Ray's stop: checkpointed, exit 75
    assert list((Path(home.job(job_id).run_dir) / "checkpoints").glob("step-*.pt"))
    assert [j.status for j in ray_jobs_of(client, home)] == ["STOPPED"]


def test_sigterm_to_the_daemon_lets_the_ray_job_checkpoint_and_requeues_it(home, data_dir, client):
    job_id = home.submit(job_file(data_dir, epochs=40, checkpoint_every=1000))
    daemon = home.daemon()
    home.wait_for(lambda: home.run_events(job_id, "step.progress"))
    daemon.send_signal(signal.SIGTERM)
    code, stderr = finish(daemon, timeout=60)
    assert code == 0, stderr
    assert home.job(job_id).state == "queued"
    [run] = home.runs(job_id)
    assert (run.outcome, run.exit_code) == ("interrupted", 75)
    assert list((Path(home.job(job_id).run_dir) / "checkpoints").glob("step-*.pt"))
    assert home.daemon_events("run.stop_requested")[0]["reason"] == "shutdown"
    assert [j.status for j in ray_jobs_of(client, home)] == ["STOPPED"]


def test_kill_9_of_the_daemon_then_a_restart_adopts_the_running_ray_job(home, data_dir, client):
    job_id = home.submit(job_file(data_dir, epochs=6, checkpoint_every=3))
    daemon = home.daemon()
    home.wait_for(lambda: home.run_events(job_id, "checkpoint.saved"))
    daemon.kill()
    daemon.wait()
    [run] = home.runs(job_id)
    assert run.ended_at is None and run.ref

    code, stderr = finish(home.daemon("--exit-when-idle"), timeout=240)
    assert code == 0, stderr
    assert home.job(job_id).state == "succeeded"
    [run] = home.runs(job_id)  # one attempt: the same Ray job went on, none was started again
    assert run.outcome == "succeeded"
    assert [j.status for j in ray_jobs_of(client, home)] == ["SUCCEEDED"]
    assert home.daemon_events("daemon.adopted")[0]["ref"] == run.ref
    assert [e.get("resumed_from_step") for e in home.run_events(job_id, "run.started")] == [None]  # no progress lost


def test_two_slots_run_two_jobs_at_once(tmp_path, ray_address, data_dir):
    home = ray_home(tmp_path / "home", ray_address, slots=2)
    first = home.submit(job_file(data_dir, name="first", epochs=8))
    second = home.submit(job_file(data_dir, name="second", epochs=8))
    daemon = home.daemon("--exit-when-idle")
    both = home.wait_for(lambda: (lambda s: s if len(s["running"]) == 2 else None)(
        json.loads(home.mtld("status", "--json").stdout)))
    assert {j["id"] for j in both["running"]} == {first, second}
    assert all(j["run"]["executor"] == "ray" for j in both["running"])
    code, stderr = finish(daemon, timeout=240)
    assert code == 0, stderr
    assert home.job(first).state == home.job(second).state == "succeeded"
    (a,), (b,) = home.runs(first), home.runs(second)
    assert b.started_at < a.ended_at and a.started_at < b.ended_at  # the two runs overlapped


def test_doctor_checks_the_cluster_with_a_real_job_that_reads_back_a_token_from_the_runs_folder(home):
    done = home.mtld("doctor", "--json")
    cluster = json.loads(done.stdout)["executor"]
    assert cluster["kind"] == "ray"
    assert cluster["problems"] == []
    worker = cluster["worker"]
    assert cluster["ray_here"] == cluster["ray_cluster"] == worker["ray"]
    assert len(worker["token"]) == 16 and worker["mtld"] and worker["resources"]["CPU"] >= 1
    assert not list((home.path / "runs").glob(".mtld-workercheck-*"))  # the token is gone again


def test_an_unreachable_cluster_defers_the_queue_in_one_line_and_doctor_says_so(tmp_path, data_dir):
    home = ray_home(tmp_path / "home", f"http://127.0.0.1:{raycluster.free_port()}")
    job_id = home.submit(job_file(data_dir))
    daemon = home.daemon()
    deferred = home.wait_for(lambda: [e for e in home.daemon_events("run.deferred")
                                      if e["reason"] == "cluster_unreachable"])
    daemon.send_signal(signal.SIGTERM)
    assert finish(daemon, timeout=30)[0] == 0
    assert "cannot reach the Ray cluster at http://127.0.0.1:" in deferred[0]["message"]
    assert "\n" not in deferred[0]["message"]
    assert home.job(job_id).state == "queued" and home.runs(job_id) == []
    doctor = home.mtld("doctor", check=False)
    assert doctor.returncode != 0
    assert "cannot reach the Ray cluster" in doctor.stdout + doctor.stderr
