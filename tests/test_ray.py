"""The Ray executor for real: a local Ray head on 127.0.0.1, a real daemon, real Ray jobs.

The cluster is the one `.ci/run` started (MTLD_TEST_RAY_ADDRESS), else one this
module starts and stops (tests/raycluster.py). Run folders live under the test's
MTLD_HOME, which the one-machine cluster sees at the same path. A head with
token authentication and a cluster of two nodes (both on 127.0.0.1) are started
here by the tests that need them, and stopped at their end. The tick's
decisions with several slots and a remote executor are in test_daemon_slots.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from mtld.executor.ray.jobs import submission_id
from tests import raycluster, readonly
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


def status_of(home: Home) -> dict:
    return json.loads(home.mtld("status", "--json").stdout)


# ------------------------------------------------------------------ runs that can never start, and what a worker cannot write


def test_a_run_no_node_could_ever_start_fails_once_naming_the_resource(tmp_path, ray_address, data_dir, client):
    home = ray_home(tmp_path / "home", ray_address)
    home.env["MTLD_EXECUTOR__RAY__RESOURCES"] = json.dumps({"no_such_accelerator": 1})
    job_id = home.submit(job_file(data_dir))
    code, stderr = finish(home.daemon("--exit-when-idle"), timeout=120)
    assert code == 0, stderr
    job = home.job(job_id)
    said = "no node of the Ray cluster has no_such_accelerator 1 (executor.ray.resources.no_such_accelerator; " \
           "the most a node has: none)"
    assert job.state == "failed" and job.last_error.startswith(said)
    assert [(r.outcome, r.reason) for r in home.runs(job_id)] == [("cannot_run", job.last_error)]  # once, not 5 times
    assert ray_jobs_of(client, home) == []  # never submitted: it would have waited 15 minutes for nothing
    doctor = home.mtld("doctor", check=False)
    assert doctor.returncode == 1 and said in doctor.stdout


@pytest.mark.skipif(bool(readonly.available()), reason=readonly.available() or "")
def test_a_runs_folder_the_worker_can_read_but_not_write_fails_doctor_and_the_run_at_once(tmp_path, ray_address,
                                                                                         data_dir):
    home = ray_home(tmp_path / "home", ray_address)
    runs = home.path / "runs"
    runs.mkdir(parents=True)
    worker_python = readonly.python_seeing_read_only(runs, tmp_path / "worker-python")
    home.env["MTLD_EXECUTOR__RAY__PYTHON"] = str(worker_python)
    doctor = home.mtld("doctor", "--json", check=False)
    assert doctor.returncode == 1
    [problem] = json.loads(doctor.stdout)["executor"]["problems"]
    assert problem.startswith("the worker on ") and f"can read {runs} but not write it" in problem
    assert "Read-only file system" in problem

    job_id = home.submit(job_file(data_dir))
    started = time.monotonic()
    code, stderr = finish(home.daemon("--exit-when-idle"), timeout=120)
    assert code == 0, stderr
    job = home.job(job_id)
    [run] = home.runs(job_id)  # failed at once: retrying cannot help
    assert (job.state, run.exit_code) == ("failed", 66) and time.monotonic() - started < 90
    assert "not writable where the run started (the run folder" in job.last_error
    assert "Read-only file system" in job.last_error and "Traceback" not in job.last_error


def test_a_run_ray_holds_pending_shows_as_waiting_for_the_cluster_with_what_it_waits_for(tmp_path, ray_address,
                                                                                        data_dir):
    home = ray_home(tmp_path / "home", ray_address, slots=2)
    home.env["MTLD_EXECUTOR__RAY__NUM_CPUS"] = "3"  # the head has 4: one run at a time fits
    first = home.submit(job_file(data_dir, name="first", epochs=40, checkpoint_every=1000))
    second = home.submit(job_file(data_dir, name="second", epochs=40, checkpoint_every=1000))
    daemon = home.daemon()
    def one_placed_one_waiting():
        runs = [j for j in status_of(home)["running"] if j["run"]]
        placed, waiting = [j for j in runs if j["run"]["node"]], [j for j in runs if j["run"]["waiting"]]
        return waiting if len(placed) == len(waiting) == 1 else None

    waiting = home.wait_for(one_placed_one_waiting)
    shown = home.mtld("status").stdout
    for job_id in (first, second):
        home.mtld("cancel", str(job_id))
    home.wait_for(lambda: not status_of(home)["running"], timeout=120)
    daemon.send_signal(signal.SIGTERM)
    assert finish(daemon, timeout=60)[0] == 0
    [job] = waiting
    assert job["run"]["waiting"] == "waiting for the Ray cluster to start it: a node with 3 CPU free"
    assert job["run"]["node"] is None
    assert f"running {job['id']} {job['name']}  waiting for the cluster" in shown
    assert f"ray job {job['run']['submission_id']}: waiting for the Ray cluster to start it" in shown
    assert home.daemon_events("run.waiting")


# ------------------------------------------------------------------ token authentication


@pytest.fixture(scope="module")
def token_cluster():
    """A head that runs with Ray's token authentication (RAY_AUTH_MODE=token; its token from RAY_AUTH_TOKEN_PATH,
    never ~/.ray/auth_token)."""
    folder = Path(tempfile.mkdtemp(prefix="mtld-rt-", dir="/tmp"))  # short: Ray's socket paths must fit
    token = secrets.token_hex(16)
    token_path = folder / "cluster-token"
    token_path.write_text(token)
    token_path.chmod(0o600)
    try:
        address = raycluster.start(folder / "head", num_cpus=2, token=token,
                                   env={"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_path)})
        yield SimpleNamespace(address=address, token=token)
    finally:
        raycluster.stop(folder / "head")
        shutil.rmtree(folder, ignore_errors=True)


def token_file(path: Path, token: str) -> Path:
    path.write_text(token + "\n")
    path.chmod(0o600)
    return path


def test_without_the_clusters_token_the_queue_waits_with_the_setting_named_and_doctor_fails(tmp_path, token_cluster,
                                                                                            data_dir):
    home = ray_home(tmp_path / "home", token_cluster.address)
    job_id = home.submit(job_file(data_dir))
    for wrong, says in ((None, "requires a token (it runs with RAY_AUTH_MODE=token) and none was sent"),
                        (token_file(tmp_path / "old-token", "0" * 32), f"refused the token in {tmp_path / 'old-token'}")):
        if wrong:
            home.env["MTLD_EXECUTOR__RAY__TOKEN_FILE"] = str(wrong)
        daemon = home.daemon()
        problem = home.wait_for(lambda: (p := status_of(home)["executor"]["problem"]) and says in p and p, timeout=60)
        shown = home.mtld("status").stdout
        daemon.send_signal(signal.SIGTERM)
        assert finish(daemon, timeout=30)[0] == 0
        assert problem.startswith(f"executor.ray.token_file - the Ray cluster at {token_cluster.address} ") and says in problem
        assert f"queued jobs wait: {problem}"[:60] in shown.replace("\n", " ")
        assert home.job(job_id).state == "queued" and home.runs(job_id) == []  # held, not failed, nothing lost
        [deferred] = [e for e in home.daemon_events("run.deferred") if e["message"] == problem]
        assert deferred["reason"] == "executor_refused"
        doctor = home.mtld("doctor", "--json", check=False)
        assert doctor.returncode == 1
        cluster = json.loads(doctor.stdout)["executor"]
        assert cluster["auth_mode"] == "token" and cluster["problems"] == [problem]


def test_with_the_token_file_runs_are_submitted_watched_and_cancelled_and_doctor_passes(tmp_path, token_cluster,
                                                                                       data_dir):
    from ray.job_submission import JobSubmissionClient

    home = ray_home(tmp_path / "home", token_cluster.address)
    home.env["MTLD_EXECUTOR__RAY__TOKEN_FILE"] = str(token_file(tmp_path / "ray-token", token_cluster.token))
    doctor = json.loads(home.mtld("doctor", "--json").stdout)["executor"]
    assert doctor["problems"] == [] and doctor["warnings"] == [] and doctor["auth_mode"] == "token"
    assert doctor["worker"]["wrote"] is True  # the check job ran, with the token, and wrote in the runs folder
    assert "ray_error" not in doctor["worker"] and doctor["worker"]["nodes"] == 1  # its driver joined the cluster

    job_id = home.submit(job_file(data_dir, epochs=40, checkpoint_every=1000))
    daemon = home.daemon("--exit-when-idle")
    home.wait_for(lambda: home.run_events(job_id, "step.progress"))
    home.mtld("cancel", str(job_id))
    code, stderr = finish(daemon, timeout=120)
    assert code == 0, stderr
    [run] = home.runs(job_id)
    assert (home.job(job_id).state, run.outcome, run.exit_code) == ("cancelled", "cancelled", 75)
    client = JobSubmissionClient(token_cluster.address, headers={"Authorization": f"Bearer {token_cluster.token}"})
    assert [j.status for j in ray_jobs_of(client, home)] == ["STOPPED"]
    assert status_of(home)["executor"]["problem"] is None


def test_a_token_file_others_can_read_is_refused_in_one_line(tmp_path, token_cluster):
    home = ray_home(tmp_path / "home", token_cluster.address)
    readable = token_file(tmp_path / "ray-token", token_cluster.token)
    readable.chmod(0o644)
    home.env["MTLD_EXECUTOR__RAY__TOKEN_FILE"] = str(readable)
    done = home.mtld("status", check=False)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip() == (f"MTLD_EXECUTOR__RAY__TOKEN_FILE: {readable} can be read or written by others "
                                   f"(mode 0644): the token runs any code on the cluster; chmod 600 {readable}")


# ------------------------------------------------------------------ two nodes: a worker killed mid-run


def test_a_worker_killed_mid_run_is_lost_with_rays_reason_then_fails_for_the_resource_then_resumes(tmp_path, data_dir):
    """The drill: a run on the second node (the only one with `side`), its node killed after a checkpoint. Ray
    says why the run ended; the run is lost (requeued after its backoff), and its next attempt finds no node
    with `side` left: it fails at once, naming the resource. With the node back, `mtld retry` resumes it from
    its checkpoint. Two Ray jobs, three attempts (the second never submitted)."""
    from ray.job_submission import JobSubmissionClient

    folder = Path(tempfile.mkdtemp(prefix="mtld-r2-", dir="/tmp"))
    try:
        # a dead node is declared so after 3 missed health checks a second apart, not 5 of 3 s (RAY_<name> sets
        # Ray's config: src/ray/common/ray_config_def.h; Ray's own tests do so: python/ray/tests/test_node_death.py)
        fast = {"RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3",
                "RAY_health_check_timeout_ms": "500"}
        address = raycluster.start(folder / "head", num_cpus=2, env=fast)
        node = raycluster.add_node(folder / "head", num_cpus=1, resources={"side": 1})
        home = ray_home(tmp_path / "home", address)
        home.env.update({"MTLD_EXECUTOR__RAY__RESOURCES": json.dumps({"side": 1}), "MTLD_DAEMON__LOST_BACKOFF_S": "1"})
        job_id = home.submit(job_file(data_dir, epochs=20, checkpoint_every=5))
        daemon = home.daemon("--exit-when-idle")

        home.wait_for(lambda: home.run_events(job_id, "checkpoint.saved"), timeout=120)
        killed_at = time.monotonic()
        raycluster.stop_node(node)
        code, stderr = finish(daemon, timeout=180)
        assert code == 0, stderr
        lost, never = home.runs(job_id)
        job = home.job(job_id)
        assert lost.outcome == "lost" and "The actor died because its node has died" in lost.reason
        assert never.outcome == "cannot_run" and job.state == "failed"
        assert job.last_error.startswith("no node of the Ray cluster has side 1 (executor.ray.resources.side;")
        shown = home.mtld("show", str(job_id)).stdout
        assert "The actor died because its node has died" in shown and "no node of the Ray cluster has side 1" in shown
        lost_after_s = time.monotonic() - killed_at

        raycluster.add_node(folder / "head", num_cpus=1, resources={"side": 1})  # the machine is back
        home.mtld("retry", str(job_id))
        code, stderr = finish(home.daemon("--exit-when-idle"), timeout=240)
        assert code == 0, stderr
        assert home.job(job_id).state == "succeeded"
        assert [r.outcome for r in home.runs(job_id)] == ["lost", "cannot_run", "succeeded"]
        saved = [e["step"] for e in home.run_events(job_id, "checkpoint.saved") if e["run_id"] == lost.id]
        started = [e for e in home.run_events(job_id, "run.started") if e["run_id"] == home.runs(job_id)[2].id]
        assert started[0]["resumed_from_step"] == max(saved)  # nothing lost but the steps since that checkpoint
        client = JobSubmissionClient(address)
        assert sorted(j.status for j in ray_jobs_of(client, home)) == ["FAILED", "SUCCEEDED"]
        print(f"drill: worker killed at step {max(saved)}; lost after {lost_after_s:.0f} s; "
              f"2 Ray jobs, 3 attempts")
    finally:
        raycluster.stop(folder / "head")
        shutil.rmtree(folder, ignore_errors=True)


def test_a_head_restarted_mid_run_fails_nothing_and_the_run_resumes_from_its_checkpoint(tmp_path, data_dir):
    """The drill: the cluster's head goes down after a checkpoint and comes back on the same address without
    its state (no GCS storage: it forgot every job). Its going down sends the run SIGTERM: it checkpoints and
    exits 75. While the head is down the run stays open (nothing fails, nothing is submitted); once it answers,
    the daemon hears it no longer knows the job, records the run as interrupted (its result.json says so) and
    the next attempt resumes from that checkpoint, even though the new head answers before its node registers
    (this drill once failed the job there: "0 nodes alive" was taken for a cluster too small). Two Ray jobs
    (one on each head), two attempts."""
    from ray.job_submission import JobSubmissionClient

    folder = Path(tempfile.mkdtemp(prefix="mtld-rh-", dir="/tmp"))  # short: Ray's socket paths must fit
    try:
        address = raycluster.start(folder / "head", num_cpus=2)
        home = ray_home(tmp_path / "home", address)
        home.env["MTLD_DAEMON__LOST_BACKOFF_S"] = "1"
        job_id = home.submit(job_file(data_dir, epochs=20, checkpoint_every=5))
        daemon = home.daemon("--exit-when-idle")
        home.wait_for(lambda: home.run_events(job_id, "checkpoint.saved"), timeout=120)
        down_at = time.monotonic()
        raycluster.stop(folder / "head")
        home.wait_for(lambda: home.daemon_events("executor.unreachable"), timeout=60)
        assert home.job(job_id).state == "running" and len(home.runs(job_id)) == 1  # nothing failed meanwhile
        assert raycluster.restart(folder / "head", num_cpus=2) == address
        down_s = time.monotonic() - down_at
        code, stderr = finish(daemon, timeout=240)
        assert code == 0, stderr
        assert home.job(job_id).state == "succeeded"
        first, resumed = home.runs(job_id)
        assert (first.outcome, first.exit_code, resumed.outcome) == ("interrupted", 75, "succeeded")
        [exited] = [e for e in home.daemon_events("run.exited") if e["run_id"] == first.id]
        assert "no longer knows this job" in exited["detail"]
        saved = [e["step"] for e in home.run_events(job_id, "checkpoint.saved") if e["run_id"] == first.id]
        [started] = [e for e in home.run_events(job_id, "run.started") if e["run_id"] == resumed.id]
        assert started["resumed_from_step"] == max(saved)  # nothing lost: its last checkpoint is where it stopped
        assert [j.status for j in ray_jobs_of(JobSubmissionClient(address), home)] == ["SUCCEEDED"]  # the new head's
        print(f"drill: head down {down_s:.0f} s after step {max(saved)}; 2 Ray jobs (one per head), 2 attempts")
    finally:
        raycluster.stop(folder / "head")
        shutil.rmtree(folder, ignore_errors=True)
