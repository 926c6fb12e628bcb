"""The tick with a remote executor (a cluster): several slots, adoption after a restart, an unreachable
cluster, the workers' device, stops that outlast the daemon. In-process: an injected clock and a fake
executor playing the cluster; the same paths against a real Ray cluster are in test_ray."""

from __future__ import annotations

import json
import signal

import pytest

from mtld.daemon.loop import Daemon
from mtld.executor.ray.jobs import exit_status, submission_id
from mtld.executor.registry import plugin_for
from mtld.config.settings import Settings
from mtld.queue.status import collect
from mtld.store import Store
from mtld.testing import FakeExecutor, ScriptedProbe
from tests.test_daemon_loop import SPEC, T0, events, reading, submit


@pytest.fixture
def cluster(tmp_path, monkeypatch):
    """cluster(slots=..., **executor options) -> (daemon, store, executor, settings); `restart()` on the
    returned daemon's store gives a new daemon on the same store and executor (as after kill -9)."""
    import os

    from mtld.logs.events import configure

    for name in [n for n in os.environ if n.startswith("MTLD_")]:
        monkeypatch.delenv(name)
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: object())  # "ray is installed"
    stores = []

    def build(slots: int = 2, num_gpus: float = 0.0, probe=None, **fake):
        settings = Settings(home=tmp_path / "home", train={"device": "auto"},
                            daemon={"prevent_sleep": False, "notify": False},
                            executor={"kind": "ray", "ray": {"slots": slots, "num_gpus": num_gpus}})
        configure(settings.daemon_log)
        store = Store(settings.db_path)
        stores.append(store)
        plugin = plugin_for(settings)  # the Ray executor's slots and device, from its settings
        executor = FakeExecutor(remote=True, slots=plugin.slots, device=plugin.device, **fake)
        daemon = Daemon(settings, store, executor=executor, probe=probe or ScriptedProbe([reading("normal")]),
                        clock=lambda: T0)
        return daemon, store, executor, settings

    yield build
    for store in stores:
        store.close()


def test_with_two_slots_a_tick_starts_the_two_highest_priority_jobs(cluster):
    daemon, store, executor, settings = cluster(slots=2)
    low, mid, high = (submit(store, settings, priority=p, name=f"j{p}") for p in (0, 3, 5))
    daemon.tick(T0)
    assert [store.get(j).state for j in (low, mid, high)] == ["queued", "running", "running"]
    assert [a.job_id for a in daemon.active] == [high, mid]
    assert all(r.pid is None and r.ref.startswith("fake-run-") for r in executor.runs)
    stored = [store.latest_run(j) for j in (high, mid)]
    assert [(r.executor, r.ref, r.pid) for r in stored] == [("ray", run.ref, None) for run in executor.runs]

    executor.runs[1].end(0)  # mid finishes: its slot goes to low at the same tick
    daemon.tick(T0 + 10)
    assert store.get(mid).state == "succeeded" and store.get(low).state == "running"
    assert len(executor.runs) == 3 and len(daemon.active) == 2


def test_cancel_and_pause_now_stop_each_running_job(cluster):
    daemon, store, executor, settings = cluster(slots=2)
    a, b = submit(store, settings, name="a"), submit(store, settings, name="b")
    daemon.tick(T0)
    store.cancel(a, now=T0 + 1)
    daemon.tick(T0 + 1)  # asks a's run to stop
    assert executor.runs[0].signals == [signal.SIGTERM] and executor.runs[1].signals == []
    daemon.tick(T0 + 2)  # records its end (75, checkpointed)
    assert store.get(a).state == "cancelled" and store.get(b).state == "running"
    store.set_flag("paused", "1")
    store.set_flag("pause_now", "1")
    daemon.tick(T0 + 3)
    daemon.tick(T0 + 4)
    assert store.get(b).state == "queued" and executor.runs[1].signals == [signal.SIGTERM]
    assert daemon.active == [] and store.get_flag("pause_now") is None


def test_a_restarted_daemon_adopts_the_runs_still_on_the_cluster_and_starts_no_second_one(cluster):
    daemon, store, executor, settings = cluster(slots=2)
    a, b = submit(store, settings, name="a"), submit(store, settings, name="b")
    daemon.tick(T0)
    executor.runs[0].end(0)  # a ended while no daemon watched; b still trains

    again = Daemon(settings, store, executor=executor, probe=ScriptedProbe([reading("normal")]), clock=lambda: T0)
    again.reconcile(T0 + 5)
    assert [x.job_id for x in again.active] == [a, b]
    again.tick(T0 + 5)
    assert store.get(a).state == "succeeded" and store.get(b).state == "running"
    assert len(executor.runs) == 2  # nothing submitted again
    assert [e["ref"] for e in events(settings, "daemon.adopted")] == [r.ref for r in executor.runs]
    executor.runs[1].end(0)
    again.tick(T0 + 6)
    assert store.get(b).state == "succeeded" and [len(store.runs_for(j)) for j in (a, b)] == [1, 1]


def test_an_unreachable_cluster_defers_the_queue_and_nothing_fails(cluster):
    daemon, store, executor, settings = cluster(slots=2)
    job = submit(store, settings)
    executor.reachable = False
    daemon.tick(T0)
    daemon.tick(T0 + 2)
    assert store.get(job).state == "queued" and store.runs_for(job) == []
    [deferred] = events(settings, "run.deferred")  # logged once, not every tick
    assert deferred["reason"] == "cluster_unreachable" and deferred["job_id"] == job
    executor.reachable = True
    daemon.tick(T0 + 4)
    assert store.get(job).state == "running"


def test_this_machines_memory_does_not_gate_a_cluster_run(cluster):
    critical = ScriptedProbe([reading("critical", available=1)])
    daemon, store, executor, settings = cluster(slots=1, probe=critical)
    job = submit(store, settings)
    daemon.tick(T0)
    assert store.get(job).state == "running" and critical.reads == 0


def test_the_family_and_the_launch_name_the_workers_device(cluster):
    daemon, store, executor, settings = cluster(slots=1, num_gpus=1)
    job = submit(store, settings)
    daemon.tick(T0)
    run = store.latest_run(job)
    assert run.family.startswith(f"{SPEC.model}|{SPEC.max_length}|cuda")  # (then the precision, if not fp32)
    assert '"device":"cuda"' in (executor.runs[0].run_dir / "launch.json").read_text().replace(" ", "")


def test_a_daemon_stopping_leaves_a_cluster_run_that_has_not_checkpointed_yet_to_the_next_daemon(cluster):
    daemon, store, executor, settings = cluster(slots=1, ends_on_term=False)
    settings.daemon.stop_timeout_s = 0.2
    job = submit(store, settings)
    daemon.tick(T0)
    daemon.stop_signals = 1
    daemon.tick(T0 + 1)
    assert daemon.finished and executor.runs[0].signals == [signal.SIGTERM]  # asked, never killed
    assert store.get(job).state == "running" and store.latest_run(job).ended_at is None
    assert events(settings, "run.left_running")[0]["ref"] == executor.runs[0].ref

    executor.runs[0].end(75)  # it checkpointed on the cluster meanwhile
    again = Daemon(settings, store, executor=executor, probe=ScriptedProbe([reading("normal")]), clock=lambda: T0)
    again.reconcile(T0 + 30)  # watched again
    again.tick(T0 + 30)  # its end recorded as it came; it resumes from that checkpoint
    assert [(r.outcome, r.exit_code) for r in store.runs_for(job)][0] == ("interrupted", 75)


def test_status_shows_every_running_job_with_its_submission_id_and_node(cluster):
    daemon, store, executor, settings = cluster(slots=2)
    a, b = submit(store, settings, name="a"), submit(store, settings, name="b")
    daemon.tick(T0)
    executor.runs[0].node = "node-1"
    daemon.tick(T0 + 1)
    info = collect(settings, store)
    assert info["executor"]["kind"] == "ray" and info["executor"]["slots"] == 2
    runs = {j["id"]: j["run"] for j in info["running"]}
    assert runs[a]["submission_id"] == executor.runs[0].ref and runs[a]["node"] == "node-1"
    assert runs[b]["submission_id"] == executor.runs[1].ref and runs[b]["node"] is None
    assert events(settings, "run.placed")[0]["node"] == "node-1"
    import io

    from rich.console import Console

    from mtld.cli import render

    text = io.StringIO()
    render.status(Console(file=text, width=200), info)
    shown = text.getvalue()
    assert f"executor ray at {plugin_for(settings).ray.address} (2 runs at once)" in shown
    assert f"ray job {executor.runs[0].ref} on node node-1" in shown
    assert f"ray job {executor.runs[1].ref} on node not yet placed" in shown


@pytest.mark.parametrize(("status", "code", "result_code", "expected"), [
    ("SUCCEEDED", 0, None, (0, None)),
    ("FAILED", 75, 75, (75, None)),
    ("FAILED", 2, 2, (2, None)),
    ("STOPPED", None, 75, (75, None)),  # Ray's stop: SIGTERM, checkpoint, result.json says 75
    ("STOPPED", None, None, (None, None)),  # killed after the grace: lost, resumes from its checkpoint
    ("FAILED", None, None, (1, None)),  # never ran (runtime_env, interpreter): a failure with Ray's reason
])
def test_a_finished_ray_job_is_judged_by_its_exit_status_then_its_result(status, code, result_code, expected):
    got = exit_status(status, code, "runtime_env setup failed: no such file\nmore", result_code)
    assert (got.code, got.signal) == expected
    if status == "FAILED" and code is None:
        assert got.detail == "the Ray job failed: runtime_env setup failed: no such file"


def test_submission_ids_come_from_the_run_record_alone_and_never_repeat_across_state_folders():
    from types import SimpleNamespace as Run

    run = Run(id=7, started_at=T0)
    assert submission_id("/home/a/state", run) == submission_id("/home/a/state", Run(id=7, started_at=T0))
    assert submission_id("/home/a/state", run) != submission_id("/home/a/state", Run(id=8, started_at=T0))
    assert submission_id("/home/a/state", run) != submission_id("/home/b/state", run)
    # the same folder made again: its run 7 starts later, and is another Ray job
    assert submission_id("/home/a/state", run) != submission_id("/home/a/state", Run(id=7, started_at=T0 + 86400))


# ------------------------------------------------------------------ configuration and the worker's side


def test_asking_for_ray_without_its_client_is_one_line_naming_the_extra(tmp_path, monkeypatch):
    from tests.conftest import run_cli

    monkeypatch.setenv("MTLD_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MTLD_EXECUTOR__KIND", "ray")
    real = __import__("importlib").util.find_spec
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    code, out, err = run_cli("status")
    assert code == 2 and out == ""
    assert err.strip() == """MTLD_EXECUTOR__KIND: 'ray' needs Ray's client: pip install 'mtld[ray]'"""


@pytest.mark.parametrize("address", ["127.0.0.1:8265", "ray://head:10001", "http://", "http://head:99999"])
def test_a_malformed_cluster_address_is_refused_when_the_settings_load(address, monkeypatch):
    from mtld.config.settings import SettingsError
    from mtld.executor.registry import check_settings

    for name in [n for n in __import__("os").environ if n.startswith("MTLD_")]:
        monkeypatch.delenv(name)
    with pytest.raises(SettingsError, match=r"^environment: executor\.ray\.address - .*(Ray Jobs API address|port)"):
        check_settings(Settings(executor={"ray": {"address": address}}))


def test_a_run_folder_the_worker_cannot_see_exits_66_and_fails_the_job_with_the_reason(tmp_path):
    import subprocess
    import sys

    from mtld.decide import policy
    from mtld.runs import exitcodes

    done = subprocess.run([sys.executable, "-m", "mtld.train", str(tmp_path / "not-here")], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == exitcodes.NOT_VISIBLE
    assert "does not exist on" in done.stderr and "every machine that runs them sees" in done.stderr
    assert not (tmp_path / "not-here").exists()  # nothing made where the run folder should have been
    decision = policy.after_exit(exit_code=done.returncode, signal=None, earlier_failures=0, max_attempts=3,
                                 backoff_s=60, cancel_requested=False, stop_reason=None, message=None, now=T0)
    assert decision.job_state == "failed" and "not visible" in decision.reason


def test_a_ray_run_asks_for_the_configured_resources_and_a_grace_above_its_checkpoint(tmp_path):
    from mtld.executor.ray.jobs import RayExecutor

    class Client:
        def __init__(self):
            self.submitted = []

        def submit_job(self, **kwargs):
            if any(s["submission_id"] == kwargs["submission_id"] for s in self.submitted):
                raise RuntimeError(f"Job with submission_id {kwargs['submission_id']} already exists.")
            self.submitted.append(kwargs)

        def get_job_info(self, ref):
            if not any(s["submission_id"] == ref for s in self.submitted):
                raise RuntimeError(f"Job {ref} does not exist.")

    settings = Settings(home=tmp_path, executor={"ray": {
        "num_cpus": 2, "num_gpus": 1, "memory_mb": 4000, "resources": {"big": 1}, "stop_grace_s": 90,
        "python": "/opt/py env/bin/python", "runtime_env": {"env_vars": {"HF_HOME": "/shared/hf"}, "pip": ["x"]}}})
    executor = RayExecutor(plugin_for(settings, "ray").ray, owner=str(tmp_path))
    executor.api._client = client = Client()
    executor.api.node_totals = lambda: [{"CPU": 8.0, "GPU": 1.0, "memory": 8e9, "big": 1.0}]
    from types import SimpleNamespace

    run = SimpleNamespace(id=1, started_at=T0, executor="ray", pid=None, ref=None, node=None)
    first = executor.start(run, tmp_path / "runs" / "1-a b")
    again = executor.start(run, tmp_path / "runs" / "1-a b")  # the same run submitted again: the same job
    [job] = client.submitted
    assert first.ref == again.ref == job["submission_id"]
    # a daemon that crashed before recording the submission finds the job by the run's record alone
    assert executor.adopt(run, tmp_path / "runs" / "1-a b").ref == job["submission_id"]
    assert job["entrypoint"] == f"exec '/opt/py env/bin/python' -P -m mtld.train '{tmp_path}/runs/1-a b'"
    assert (job["entrypoint_num_cpus"], job["entrypoint_num_gpus"], job["entrypoint_memory"],
            job["entrypoint_resources"]) == (2, 1, 4_000_000_000, {"big": 1})
    # what it asks for, kept with the job (Ray's job details do not say): `mtld status` shows it while it waits
    assert json.loads(job["metadata"]["mtld_asks"]) == {"CPU": 2.0, "GPU": 1.0, "memory": 4e9, "big": 1.0}
    assert job["runtime_env"] == {"pip": ["x"], "env_vars": {
        "PYTHONUNBUFFERED": "1", "RAY_JOB_STOP_WAIT_TIME_S": "90", "MTLD_THREADS_ALLOTTED": "1", "HF_HOME": "/shared/hf"}}


# ------------------------------------------------------------------ a cluster that stops answering


def test_a_restart_while_the_cluster_is_out_leaves_the_runs_jobs_running_until_it_can_ask(cluster):
    daemon, store, executor, settings = cluster(slots=1)
    job = submit(store, settings)
    daemon.tick(T0)
    executor.reachable = False
    again = Daemon(settings, store, executor=executor, probe=ScriptedProbe([reading("normal")]), clock=lambda: T0)
    again.reconcile(T0 + 5)
    again.tick(T0 + 6)
    assert store.get(job).state == "running" and store.latest_run(job).ended_at is None  # nobody can tell yet
    assert again.active == [] and len(executor.runs) == 1
    executor.reachable = True
    again.tick(T0 + 8)
    assert [a.job_id for a in again.active] == [job] and len(executor.runs) == 1  # watched again, not resubmitted


def test_a_submission_whose_answer_is_lost_is_found_by_its_id_and_never_submitted_twice(cluster):
    daemon, store, executor, settings = cluster(slots=1)
    job = submit(store, settings)
    executor.lose_reply = True
    daemon.tick(T0)
    assert daemon.active == [] and store.get(job).state == "running" and store.latest_run(job).ended_at is None
    assert events(settings, "run.submit_unconfirmed")[0]["run_id"] == store.latest_run(job).id
    daemon.tick(T0 + 2)  # the next tick asks the cluster: the job is there, so it is watched
    assert [a.job_id for a in daemon.active] == [job] and len(executor.runs) == 1
    executor.runs[0].end(0)
    daemon.tick(T0 + 4)
    assert store.get(job).state == "succeeded" and len(store.runs_for(job)) == 1


def test_a_submission_that_never_arrived_is_requeued_once_the_cluster_answers(cluster):
    daemon, store, executor, settings = cluster(slots=1)
    job = submit(store, settings)
    executor.lose_reply = True
    daemon.tick(T0)
    executor.runs.clear()  # it never reached the cluster
    daemon.tick(T0 + 2)
    [first] = store.runs_for(job)
    assert first.outcome == "lost" and "not known there" in first.reason and executor.runs == []
    daemon.tick(T0 + 2 + settings.daemon.lost_backoff_s)  # a lost run resumes after its backoff
    first, second = store.runs_for(job)
    assert second.ended_at is None and len(executor.runs) == 1


class FakeJobsClient:
    """Ray's JobSubmissionClient as far as RayRun uses it: scripted answers to get_job_info and stop_job."""

    def __init__(self, *answers):
        self.answers = list(answers)
        self.stops = 0

    def get_job_info(self, ref):
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer

    def stop_job(self, ref):
        self.stops += 1
        answer = self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return True

    def get_job_logs(self, ref):
        return ""


def ray_run(run_id: int):
    from types import SimpleNamespace

    return SimpleNamespace(id=run_id, started_at=T0, executor="ray", pid=None, ref=None, node=None)


def test_a_stop_the_cluster_did_not_take_is_sent_again_until_it_does(tmp_path):
    import requests

    from mtld.executor.ray.jobs import RayRun
    from mtld.executor.ray.api import JobsApi

    down = requests.ConnectionError("connection refused")
    client = FakeJobsClient(down)
    run = RayRun(JobsApi("http://head:8265", client=client), "mtld-x-run-1-0", tmp_path, ray_run(1))
    run.signal(signal.SIGTERM)
    assert run.poll() is None and client.stops == 2 and run.stop_pending  # asked at the signal and the poll
    client.answers = [_info("RUNNING")]
    assert run.poll() is None and client.stops == 3 and not run.stop_pending
    run.poll()
    assert client.stops == 3


def test_a_job_the_cluster_no_longer_knows_ends_the_run_as_lost(tmp_path):
    from mtld.executor.ray.jobs import RayRun
    from mtld.executor.ray.api import JobsApi

    client = FakeJobsClient(RuntimeError("Request failed with status code 404: Job mtld-x does not exist."))
    status = RayRun(JobsApi("http://head:8265", client=client), "mtld-x", tmp_path, ray_run(1)).poll()
    assert (status.code, status.signal) == (None, None) and "no longer knows" in status.detail


@pytest.mark.parametrize(("code", "error_type", "expected"), [
    (-9, None, (None, 9)),  # the run exec'd by `sh -c`: killed by SIGKILL (the OOM killer's mark)
    (137, None, (None, 9)),  # through a shell that did not exec
    (None, "JOB_SUPERVISOR_ACTOR_DIED", (None, None)),  # the node died under it: lost, not a failure
    (None, "JOB_SUPERVISOR_ACTOR_START_TIMEOUT", (None, None)),
    (None, "RUNTIME_ENV_SETUP_FAILURE", (1, None)),
])
def test_signal_deaths_and_cluster_failures_are_told_apart_from_the_runs_own_failures(code, error_type, expected):
    got = exit_status("FAILED", code, "why", None, error_type=error_type)
    assert (got.code, got.signal) == expected


def _info(status: str):
    from types import SimpleNamespace

    from ray.job_submission import JobStatus

    return SimpleNamespace(status=JobStatus(status), driver_node_id="n1", driver_exit_code=None, message=None,
                           error_type=None)


# ------------------------------------------------------------------ runs that can never start, losses, waiting


def _status_text(settings, store) -> str:
    import io

    from rich.console import Console

    from mtld.cli import render

    text = io.StringIO()
    render.status(Console(file=text, width=400), collect(settings, store))
    return text.getvalue()


def test_a_run_no_node_could_ever_start_fails_its_job_at_once_naming_the_resource(cluster):
    daemon, store, executor, settings = cluster(slots=1)
    executor.never = "no node of the Ray cluster has 1 GPU (executor.ray.num_gpus; the most a node has: none)"
    job = submit(store, settings)
    daemon.tick(T0)
    [run] = store.runs_for(job)
    assert store.get(job).state == "failed" and store.get(job).last_error == executor.never
    assert (run.outcome, run.reason) == ("cannot_run", executor.never) and executor.runs == []
    assert events(settings, "run.cannot_start")[0]["reason"] == executor.never
    daemon.tick(T0 + 600)
    assert len(store.runs_for(job)) == 1  # never tried again


def test_a_cluster_that_finds_a_waiting_run_can_never_start_fails_it_without_retries(cluster):
    daemon, store, executor, settings = cluster(slots=1)
    job = submit(store, settings)
    daemon.tick(T0)
    executor.runs[0].lose(cannot_run="no node of the Ray cluster has side 1 (executor.ray.resources.side; ...)")
    daemon.tick(T0 + 2)
    assert store.get(job).state == "failed" and "side 1" in store.get(job).last_error
    assert store.latest_run(job).outcome == "cannot_run" and len(executor.runs) == 1


def test_lost_runs_count_with_their_own_limit_and_backoff_and_keep_the_clusters_words(cluster):
    daemon, store, executor, settings = cluster(slots=1)
    settings.daemon.max_lost, settings.daemon.lost_backoff_s, settings.daemon.max_attempts = 3, 10, 1
    job = submit(store, settings)
    said = "the Ray cluster did not run it: Job supervisor actor died: The actor died because its node has died."
    now, started = T0, []
    for loss in range(1, 4):
        while len(executor.runs) < loss:  # the next attempt starts only after the backoff
            daemon.tick(now)
            now += 1
        started.append(now - 1)
        executor.runs[-1].lose(said)
        daemon.tick(now)
    runs = store.runs_for(job)
    assert [r.outcome for r in runs] == ["lost"] * 3 and all(said in r.reason for r in runs)
    assert started[1] - started[0] >= 10 and started[2] - started[1] >= 20  # 10 s, then doubled
    job_now = store.get(job)
    assert job_now.state == "failed" and "lost 3 times in a row: gave up" in job_now.last_error  # max_attempts=1 not used
    exited = events(settings, "run.exited")
    assert [e["outcome"] for e in exited] == ["lost"] * 3 and exited[0]["detail"] == said


def test_mtld_retry_starts_the_count_of_lost_runs_again(cluster):
    daemon, store, executor, settings = cluster(slots=1)
    settings.daemon.max_lost, settings.daemon.lost_backoff_s = 2, 0
    job = submit(store, settings)
    for n in range(2):
        daemon.tick(T0 + 2 * n)
        executor.runs[-1].lose("node died")
        daemon.tick(T0 + 2 * n + 1)
    assert store.get(job).state == "failed" and "lost 2 times in a row" in store.get(job).last_error
    store.retry(job, now=T0 + 10)
    daemon.tick(T0 + 10)
    executor.runs[-1].lose("node died")
    daemon.tick(T0 + 11)
    last_lost = [r for r in store.runs_for(job) if r.outcome == "lost"][-1]
    assert store.get(job).state != "failed" and "lost 1 of at most 2 times in a row" in last_lost.reason


def test_a_lost_run_says_why_in_show_and_in_status(cluster):
    daemon, store, executor, settings = cluster(slots=1)
    job = submit(store, settings)
    daemon.tick(T0)
    executor.runs[0].lose("the Ray cluster did not run it: The actor died because its node has died.")
    daemon.tick(T0 + 1)
    assert "its node has died" in _status_text(settings, store)  # the queued job's last_error
    import io

    from rich.console import Console

    from mtld.cli import render

    text = io.StringIO()
    render.show(Console(file=text, width=400), {"id": job, "name": "j"}, {}, [r.to_dict() for r in store.runs_for(job)],
                [t.to_dict() for t in store.transitions_for(job)])
    assert "ended: the Ray cluster did not run it: The actor died because its node has died.; it resumes" in text.getvalue()


def test_a_refused_token_holds_the_queue_with_the_setting_named_in_status_until_it_is_fixed(cluster):
    daemon, store, executor, settings = cluster(slots=1)
    job = submit(store, settings)
    executor.refused = ("executor.ray.token_file - the Ray cluster at http://head:8265 refused the token in "
                        "/home/me/.ray-token: it must hold the token the cluster was started with")
    daemon.tick(T0)
    daemon.tick(T0 + 2)
    assert store.get(job).state == "queued" and store.runs_for(job) == []
    [deferred] = events(settings, "run.deferred")
    assert deferred["reason"] == "executor_refused" and deferred["message"] == executor.refused
    assert collect(settings, store)["executor"]["problem"] == executor.refused
    assert f"queued jobs wait: {executor.refused}" in _status_text(settings, store)
    executor.refused = None  # the token file fixed
    daemon.tick(T0 + 4)
    assert store.get(job).state == "running" and collect(settings, store)["executor"]["problem"] is None


def test_a_run_the_cluster_holds_pending_shows_as_waiting_with_what_it_waits_for(cluster):
    daemon, store, executor, settings = cluster(slots=1)
    job = submit(store, settings)
    daemon.tick(T0)
    executor.runs[0].waiting = "waiting for the Ray cluster to start it: a node with 1 GPU free"
    daemon.tick(T0 + 1)
    [running] = collect(settings, store)["running"]
    assert running["run"]["waiting"] == executor.runs[0].waiting
    shown = _status_text(settings, store)
    assert f"running {job} job  waiting for the cluster" in shown  # not "starting", not a progress bar
    assert f"ray job {executor.runs[0].ref}: waiting for the Ray cluster to start it: a node with 1 GPU free" in shown
    assert events(settings, "run.waiting")[0]["waiting"] == executor.runs[0].waiting
    executor.runs[0].waiting, executor.runs[0].node = None, "node-1"  # placed: it trains
    daemon.tick(T0 + 2)
    [running] = collect(settings, store)["running"]
    assert running["run"]["waiting"] is None and running["run"]["node"] == "node-1"


# ------------------------------------------------------------------ the Ray executor's side of it, against a scripted Jobs API


def _job(status: str, *, error_type=None, message=None, node=None, exit_code=None, asks=None):
    """What Ray's get_job_info returns (its own JobDetails model), for a job mtld submitted asking `asks`."""
    from ray.dashboard.modules.job.pydantic_models import JobDetails
    from ray.job_submission import JobStatus

    from mtld.executor.ray.jobs import ASKED_KEY

    metadata = {"mtld_run_id": "1", **({ASKED_KEY: json.dumps(asks)} if asks is not None else {})}
    return JobDetails(type="SUBMISSION", submission_id="mtld-x", entrypoint="exec python -P -m mtld.train /r",
                      status=JobStatus(status), message=message, error_type=error_type, driver_node_id=node,
                      driver_exit_code=exit_code, metadata=metadata)


class ScriptedApi:
    """mtld.executor.ray.api.JobsApi with scripted answers: the job's info, the live nodes' totals."""

    def __init__(self, info, nodes):
        from mtld.executor.ray.api import JobsApi

        self.info, self.nodes, self.stops, self.totals_asked = info, nodes, 0, 0
        self.address = "http://head:8265"
        self.cannot_run = lambda wanted: JobsApi.cannot_run(self, wanted)

    def node_totals(self):
        self.totals_asked += 1
        return self.nodes

    def call(self, request):
        return request(self)

    def get_job_info(self, ref):
        return self.info

    def stop_job(self, ref):
        self.stops += 1

    def get_job_logs(self, ref):
        return ""


def test_a_pending_ray_job_says_what_it_waits_for_and_fails_once_no_node_could_ever_give_it(tmp_path):
    from mtld.executor.ray.jobs import RECHECK_PENDING_S, RayRun

    clock = [0.0]
    api = ScriptedApi(_job("PENDING", asks={"CPU": 1, "GPU": 1, "side": 1}), [{"CPU": 4, "GPU": 1, "side": 1}])
    run = RayRun(api, "mtld-x", tmp_path, ray_run(1), clock=lambda: clock[0], wanted={"CPU": 1})
    assert run.poll() is None and run.node is None
    assert run.waiting == "waiting for the Ray cluster to start it: a node with 1 CPU, 1 GPU, side 1 free"
    api.nodes = [{"CPU": 4, "GPU": 1}]  # the node with `side` left the cluster
    clock[0] = RECHECK_PENDING_S - 1
    assert run.poll() is None and api.totals_asked == 1  # looked at again only now and then
    clock[0] = RECHECK_PENDING_S + 1
    status = run.poll()
    assert status.cannot_run.startswith("no node of the Ray cluster has side 1 (executor.ray.resources.side")
    assert api.stops == 1  # its job is stopped: it would wait for ever


def test_when_ray_gives_up_placing_a_job_mtld_fails_it_if_no_node_has_the_resource_else_it_is_lost(tmp_path):
    from mtld.executor.ray.jobs import RayRun

    said = ("Job supervisor actor failed to start within 900.0 seconds. This may be because the job entrypoint's "
            "specified resources (entrypoint_num_cpus, ...)aren't available on the cluster.")
    never = ScriptedApi(_job("FAILED", error_type="JOB_SUPERVISOR_ACTOR_START_TIMEOUT", message=said,
                             asks={"CPU": 1, "GPU": 2}), [{"CPU": 8, "GPU": 1}])
    status = RayRun(never, "mtld-x", tmp_path, ray_run(1)).poll()
    assert status.cannot_run.startswith("no node of the Ray cluster has 2 GPU (executor.ray.num_gpus; the most a "
                                        "node has: 1 GPU) (1 node alive); Ray: Job supervisor actor failed to start")
    busy = ScriptedApi(_job("FAILED", error_type="JOB_SUPERVISOR_ACTOR_START_TIMEOUT", message=said),
                       [{"CPU": 8, "GPU": 1}])  # no metadata (an older mtld submitted it): what this one asks
    status = RayRun(busy, "mtld-x", tmp_path, ray_run(1), wanted={"CPU": 1, "GPU": 1}).poll()  # busy: lost
    assert (status.code, status.cannot_run) == (None, None) and "failed to start within 900.0 seconds" in status.detail


def test_a_dead_node_is_the_reason_kept_for_a_lost_run():
    message = ("Job supervisor actor died: The actor died unexpectedly before finishing this task.\n"
               "\tclass_name: JobSupervisor\n\tactor_id: 0601bf\n\tpid: 10876\n\tip: 127.0.0.1\n"
               "The actor died because its node has died. Node Id: 73076037c8fd\n"
               "\tthe actor's node was terminated unexpectedly: health check failed due to missing too many heartbeats")
    status = exit_status("FAILED", None, message, None, error_type="JOB_SUPERVISOR_ACTOR_DIED")
    assert status.detail == ("the Ray cluster did not run it: Job supervisor actor died: The actor died unexpectedly "
                             "before finishing this task. The actor died because its node has died. Node Id: 73076037c8fd")


@pytest.mark.parametrize(("error", "token_file", "kind", "says"), [
    ("Authentication required: Unauthorized: Missing authentication token\n\nToken authentication is enabled but "
     "no authentication token was found", None, "ClusterRefused",
     "executor.ray.token_file - the Ray cluster at http://head:8265 requires a token (it runs with "
     "RAY_AUTH_MODE=token) and none was sent: set executor.ray.token_file to a file, readable by you only, that "
     "holds the cluster's token (Authentication required: Unauthorized: Missing authentication token)"),
    ("Authentication failed: Forbidden: Invalid authentication token\n\nToken authentication is enabled but the "
     "authentication token is invalid or incorrect.", "/home/me/.ray-token", "ClusterRefused",
     "executor.ray.token_file - the Ray cluster at http://head:8265 refused the token in /home/me/.ray-token: it "
     "must hold the token the cluster was started with (Authentication failed: Forbidden: Invalid authentication token)"),
    ("Request failed with status code 500: Traceback (most recent call last):\n  File \"job_head.py\", line 591\n"
     "aiohttp.client_exceptions.ClientConnectorError: Cannot connect to host 127.0.0.1:43745\n.", None,
     "ClusterUnreachable", "the Ray cluster at http://head:8265 answered with an error (500): "
     "aiohttp.client_exceptions.ClientConnectorError: Cannot connect to host 127.0.0.1:43745"),
    ("Request failed with status code 404: Job mtld-x does not exist.", None, "JobMissing",
     "Request failed with status code 404: Job mtld-x does not exist."),
])
def test_the_jobs_apis_answers_are_told_apart_and_a_refused_token_names_its_setting(error, token_file, kind, says):
    from pathlib import Path

    from mtld.executor.ray.api import classified

    class AuthenticationError(RuntimeError):  # ray.exceptions' is a RayError: what matters is its name and text
        pass

    raised = AuthenticationError(error) if error.startswith("Authentication") else RuntimeError(error)
    got = classified("http://head:8265", raised, Path(token_file) if token_file else None)
    assert type(got).__name__ == kind and str(got) == says


def test_a_connection_refused_is_an_outage_not_a_configuration_error():
    import requests

    from mtld.executor import ClusterRefused, ClusterUnreachable
    from mtld.executor.ray.api import classified

    got = classified("http://head:8265", requests.ConnectionError("Connection refused"), None)
    assert isinstance(got, ClusterUnreachable) and not isinstance(got, ClusterRefused)
    assert str(got) == "cannot reach the Ray cluster at http://head:8265: Connection refused"


def test_the_ray_sdks_own_authentication_error_is_a_refusal():
    from ray.exceptions import AuthenticationError

    from mtld.executor import ClusterRefused
    from mtld.executor.ray.api import classified

    got = classified("http://head:8265", AuthenticationError("Authentication required: Unauthorized"), None)
    assert isinstance(got, ClusterRefused) and str(got).startswith("executor.ray.token_file - ")


@pytest.mark.parametrize(("wanted", "nodes", "says"), [
    ({"CPU": 1}, [{"CPU": 4}], None),
    ({"CPU": 2, "GPU": 1}, [{"CPU": 8}, {"CPU": 2, "GPU": 1}], None),
    ({"GPU": 1}, [{"CPU": 8}, {"CPU": 4}],
     "no node of the Ray cluster has 1 GPU (executor.ray.num_gpus; the most a node has: none) (2 nodes alive)"),
    ({"CPU": 16}, [{"CPU": 8}],
     "no node of the Ray cluster has 16 CPU (executor.ray.num_cpus; the most a node has: 8 CPU) (1 node alive)"),
    ({"memory": 64e9}, [{"CPU": 8, "memory": 16e9}],
     "no node of the Ray cluster has 64,000 MB of memory (executor.ray.memory_mb; the most a node has: 16,000 MB of "
     "memory) (1 node alive)"),
    ({"CPU": 4, "GPU": 1}, [{"CPU": 8}, {"CPU": 2, "GPU": 1}],  # each exists, never on one node
     "no single node of the Ray cluster has all of 4 CPU (executor.ray.num_cpus), 1 GPU (executor.ray.num_gpus) at "
     "once (2 nodes alive): a run takes them on one node"),
    ({"a100": 1}, [{"CPU": 8, "t4": 1}],
     "no node of the Ray cluster has a100 1 (executor.ray.resources.a100; the most a node has: none) (1 node alive)"),
    ({}, [{"CPU": 1}], None),
    ({"CPU": 1}, [], None),  # no node alive yet (a head just restarted): not up, not too small (test_ray's drill)
])
def test_whether_any_node_could_ever_start_a_run(wanted, nodes, says):
    from mtld.executor.ray.resources import unsatisfiable

    assert unsatisfiable(wanted, nodes) == says


def test_what_a_run_asks_for_leaves_out_what_it_asks_none_of():
    from mtld.executor.ray.resources import asked

    assert asked(1, 0, 0, {}) == {"CPU": 1.0}
    assert asked(0.5, 1, 4000, {"big": 1}) == {"CPU": 0.5, "GPU": 1.0, "memory": 4e9, "big": 1.0}


def test_a_token_file_others_can_read_is_refused_when_the_settings_load(tmp_path, monkeypatch):
    import os

    from mtld.config.settings import SettingsError
    from mtld.executor.registry import check_settings

    for name in [n for n in os.environ if n.startswith("MTLD_")]:
        monkeypatch.delenv(name)
    token = tmp_path / "ray-token"
    token.write_text("secret\n")
    token.chmod(0o644)
    with pytest.raises(SettingsError) as refused:
        check_settings(Settings(executor={"ray": {"token_file": str(token)}}))
    assert str(refused.value) == (f"environment: executor.ray.token_file - {token} can be read or "
                                  f"written by others (mode 0644): the token runs any code on the cluster; chmod 600 {token}")
    token.chmod(0o600)
    check_settings(Settings(executor={"ray": {"token_file": str(token)}}))
    with pytest.raises(SettingsError, match="executor.ray.token_file - .*absolute path"):
        check_settings(Settings(executor={"ray": {"token_file": "ray-token"}}))


def test_the_token_goes_with_every_request_and_is_read_private_only(tmp_path):
    from mtld.executor import ClusterRefused
    from mtld.executor.ray.api import read_token

    token = tmp_path / "ray-token"
    token.write_text("0123abcd\n")
    token.chmod(0o600)
    assert read_token(token) == "0123abcd"
    token.chmod(0o640)  # made readable after the settings loaded: refused where it is read too
    with pytest.raises(ClusterRefused, match=r"^executor\.ray\.token_file - .* chmod 600"):
        read_token(token)
    token.chmod(0o600)
    token.write_text("")
    with pytest.raises(ClusterRefused, match="does not hold one token"):
        read_token(token)


@pytest.mark.parametrize(("address", "mode", "warned"), [
    ("http://10.0.0.5:8265", "disabled", True),
    ("http://head.lab:8265", "disabled", True),
    ("http://[2001:db8::1]:8265", "disabled", True),
    ("http://10.0.0.5:8265", "token", False),
    ("http://10.0.0.5:8265", None, False),  # it could not say (an older Ray): nothing to warn about for sure
    ("http://127.0.0.1:8265", "disabled", False),
    ("http://127.0.0.2:8265", "disabled", False),
    ("http://localhost:8265", "disabled", False),
    ("http://[::1]:8265", "disabled", False),
])
def test_doctor_warns_about_an_open_jobs_api_only_off_loopback(address, mode, warned):
    from mtld.executor.ray.workercheck import open_api_warning

    warning = open_api_warning(address, mode)
    assert (warning is not None) == warned
    if warned:
        assert warning.startswith(f"the Ray Jobs API at {address} answers without authentication")
        assert "anyone who can reach it can run any code on the cluster" in warning
