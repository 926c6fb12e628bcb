"""The Ray executor: each run is a Ray job, submitted through Ray's Jobs API.

The job's entrypoint is the same `python -m mtld.train RUN_DIR` a local child
runs, so the run folder (on storage the daemon and every worker see at the
same path) holds the run's launch, log, checkpoints and result, as locally.
What Ray adds, and where this module relies on it (Ray 2.60,
ray/dashboard/modules/job/):

- `submit_job(submission_id=...)`: a submission id names a job once per
  cluster (a second submission with it is refused), so ours is derived from
  the daemon's state folder and the run id, and a resubmission after a crash
  between submitting and recording finds the first job instead of starting a
  second one.
- `stop_job`: the job supervisor sends SIGTERM (`RAY_JOB_STOP_SIGNAL`) to the
  entrypoint and all its descendants, waits `RAY_JOB_STOP_WAIT_TIME_S`
  (default 3 s; read from the supervisor actor's environment, which is the
  job's runtime_env `env_vars`: job_supervisor.py, job_manager.py
  `_get_supervisor_runtime_env`), then SIGKILLs them. mtld sets it to
  `executor.ray.stop_grace_s`, above a checkpoint's time, so a stopped run
  checkpoints and exits 75, as a local child does on SIGTERM.
- `get_job_info`: status (PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED),
  `driver_exit_code` (the entrypoint's exit status, once it has one),
  `driver_node_id`, and a message. A STOPPED job has no exit code: its
  result.json says how it ended (75 after a clean checkpoint), and without one
  it was killed before it could write it (lost: it resumes from its last
  checkpoint).
- `get_job_logs`: the entrypoint's stdout and stderr, appended to the run
  folder's child.log when the run ends (the run's own log, run.jsonl, is
  written there directly by the child).

A cluster that cannot be reached never fails a run: `poll` says "still
running" and logs the outage once; `start` raises ClusterUnreachable, which
the daemon treats as "wait and try again".
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import signal as signals
from pathlib import Path
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from mtld.disk import open_private
from mtld.executor import ClusterUnreachable, ExitStatus
from mtld.executor.ray.settings import EXTRA_HINT
from mtld.logs.events import get_logger
from mtld.runs.rundir import RunDir
from mtld.runs.child import ALLOTTED_ENV, CHILD_MODULE

if TYPE_CHECKING:
    from mtld.executor.ray.settings import RaySettings
    from mtld.store import Run
STOP_SIGNALS = (signals.SIGTERM, signals.SIGINT, signals.SIGKILL)
REQUEST_TIMEOUT_S = 10.0  # every call to the Jobs API: a dashboard that hangs must not hang the daemon
# Finished jobs whose entrypoint never ran to an exit status because of the cluster, not the run: the run is
# lost (it resumes from its checkpoint) rather than failed (JobErrorType, ray/dashboard/modules/job/common.py).
CLUSTER_FAILURES = {"JOB_SUPERVISOR_ACTOR_DIED", "JOB_SUPERVISOR_ACTOR_START_TIMEOUT",
                    "JOB_SUPERVISOR_ACTOR_UNSCHEDULABLE", "JOB_SUPERVISOR_ACTOR_UNKNOWN_FAILURE",
                    "JOB_SUPERVISOR_ACTOR_START_FAILURE"}


class JobMissing(LookupError):
    """The cluster answers, and does not know the job (404)."""


def client_for(address: str) -> Any:
    """A JobSubmissionClient for `address` whose every request times out; ClusterUnreachable when nothing
    answers there."""
    try:
        from ray.job_submission import JobSubmissionClient
    except ImportError as e:  # settings refuse kind = "ray" without it; this is for doctor and the bench
        raise ClusterUnreachable(f"Ray's client is not installed ({EXTRA_HINT})") from e

    class Client(JobSubmissionClient):
        def _do_request(self, method: str, endpoint: str, **kwargs: Any) -> Any:
            # the SDK passes extra keyword arguments on to requests.request (dashboard_sdk.py)
            kwargs.setdefault("timeout", REQUEST_TIMEOUT_S)
            return super()._do_request(method, endpoint, **kwargs)

    try:
        return Client(address)
    except Exception as e:  # ConnectionError, or a RuntimeError from a dashboard that is still starting
        raise ClusterUnreachable(f"cannot reach the Ray cluster at {address}: {first_line(e)}") from e


def call(address: str, request: Callable[[], Any]) -> Any:
    """One Jobs API call. Raises JobMissing when the cluster does not know the job, ClusterUnreachable for
    everything that may pass (no answer, a timeout, a server error), and the SDK's error otherwise (a request
    the cluster refuses, e.g. a bad runtime_env)."""
    try:
        return request()
    except ClusterUnreachable:
        raise
    except Exception as e:
        text = str(e)
        if "status code 404" in text or "does not exist" in text:
            raise JobMissing(first_line(e)) from e
        if _is_connection_error(e) or re.search(r"status code 5\d\d", text):
            raise ClusterUnreachable(f"cannot reach the Ray cluster at {address}: {first_line(e)}") from e
        raise


def submission_id(owner: str, run: Run) -> str:
    """The Ray submission id of a run, derived from the run's record alone (so a daemon that crashed between
    submitting and recording it finds it again): its daemon (the state folder), its id, and when it started
    (a state folder made again at the same path starts its ids at 1 again; a cluster keeps old jobs)."""
    tag = hashlib.sha256(owner.encode()).hexdigest()[:10]
    return f"mtld-{tag}-run-{run.id}-{int(run.started_at * 1000)}"


class RayRun:
    """One run's Ray job: polled through the Jobs API, stopped with Ray's stop (SIGTERM, grace, SIGKILL)."""

    pid = None  # not a process here

    def __init__(self, client: Any, address: str, ref: str, run_dir: Path, run: Run, node: str | None = None):
        self.client, self.address, self.ref, self.run_dir, self.run = client, address, ref, Path(run_dir), run
        self.node = node
        self.status: ExitStatus | None = None
        self.stop_pending = False  # a stop asked for that the cluster has not taken yet: sent again each poll
        self.unreachable = False
        self.log = get_logger(run_id=run.id, submission_id=ref)

    def signal(self, signum: int) -> None:
        """SIGTERM, SIGINT and SIGKILL all stop the job: Ray signals the run, which checkpoints within the
        grace period (`executor.ray.stop_grace_s`), and kills it after that."""
        if self.status is None and signum in STOP_SIGNALS:
            self.stop_pending = True
            self._send_stop()

    def _send_stop(self) -> None:
        try:
            call(self.address, lambda: self.client.stop_job(self.ref))
            self.stop_pending = False
        except JobMissing:
            self.stop_pending = False
        except Exception as e:  # tried again at the next poll
            self._unreachable("stop", e)

    def poll(self) -> ExitStatus | None:
        if self.status is not None:
            return self.status
        if self.stop_pending:
            self._send_stop()
        try:
            info = call(self.address, lambda: self.client.get_job_info(self.ref))
        except JobMissing:  # the cluster lost it (a head restarted without its state): the run is lost
            self.status = ExitStatus(code=self._result_code(), detail="the Ray cluster no longer knows this job")
            return self.status
        except Exception as e:  # the cluster is out: as far as we know, the run goes on
            self._unreachable("poll", e)
            return None
        if self.unreachable:
            self.log.info("executor.reachable")
            self.unreachable = False
        self.node = info.driver_node_id or self.node
        if not info.status.is_terminal():
            return None
        self._append_output()
        error_type = getattr(info.error_type, "value", info.error_type)
        self.status = exit_status(info.status.value, info.driver_exit_code, info.message, self._result_code(),
                                  error_type=error_type)
        return self.status

    def _unreachable(self, action: str, error: Exception) -> None:
        if not self.unreachable:  # once per outage
            self.log.warning("executor.unreachable", action=action, error=first_line(error))
        self.unreachable = True

    def _result_code(self) -> int | None:
        """The exit status this attempt's result.json records, if this attempt wrote one."""
        result = RunDir(self.run_dir).result_of(self.run.id, self.run.started_at)
        return result.exit_code if result else None

    def _append_output(self) -> None:
        """Ray keeps the entrypoint's output: add it to the run folder's child.log, as a local child's."""
        try:
            text = call(self.address, lambda: self.client.get_job_logs(self.ref))
            if text:
                with os.fdopen(open_private(self.run_dir / "child.log", os.O_WRONLY | os.O_APPEND), "ab") as out:
                    out.write(text.encode())
        except Exception as e:  # the output is a convenience; the run's own log is in its folder
            self.log.warning("executor.output_lost", error=first_line(e))


def exit_status(status: str, exit_code: int | None, message: str | None, result_code: int | None, *,
                error_type: str | None = None) -> ExitStatus:
    """A finished Ray job as the daemon judges a run: its exit status, else its result.json's, else lost.
    The entrypoint runs under `sh -c "exec ..."`, so a run killed by a signal reports minus the signal (or,
    through a shell that did not exec, 128 + the signal)."""
    if exit_code is not None and exit_code < 0:
        return ExitStatus(signal=-exit_code)
    if exit_code is not None and 128 < exit_code < 160 and result_code is None:
        return ExitStatus(signal=exit_code - 128)
    if exit_code is not None:
        return ExitStatus(code=exit_code)
    if result_code is not None:
        return ExitStatus(code=result_code)
    if status == "STOPPED":
        return ExitStatus(detail="stopped on the cluster before it wrote its result")  # lost: resumes
    if status == "SUCCEEDED":
        return ExitStatus(code=0)
    if error_type in CLUSTER_FAILURES:  # the cluster's failure, not the run's: lost, it resumes
        return ExitStatus(detail=f"the Ray cluster did not run it: {first_line(message) or error_type}")
    # FAILED without an exit status: it never ran (runtime_env setup, no such interpreter)
    return ExitStatus(code=1, detail=f"the Ray job failed: {first_line(message) or 'no reason given'}")


class RayExecutor:
    """Submits each attempt as a Ray job; `adopt` reattaches to a job an earlier daemon submitted."""

    kind = "ray"
    remote = True

    def __init__(self, settings: RaySettings, *, owner: str, device: str = "cpu"):
        self.settings = settings
        self.owner = owner
        self.device = device
        self.slots = settings.slots
        self._client: Any = None

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = client_for(self.settings.address)
        return self._client

    def check(self) -> None:
        """One cheap request (the Jobs API's version): ClusterUnreachable while the cluster does not answer."""
        try:
            call(self.settings.address, lambda: self.client.get_version())
        except ClusterUnreachable:
            self._client = None  # connect afresh once it answers again
            raise

    def entrypoint(self, run_dir: Path) -> str:
        # exec: the run replaces Ray's `sh -c`, so Ray's stop signals it directly and a signal death is
        # reported as such (minus the signal), not as the shell's 128 + N
        return f"exec {shlex.quote(self.settings.python)} -m {CHILD_MODULE} {shlex.quote(str(run_dir))}"

    def runtime_env(self) -> dict[str, Any]:
        env = dict(self.settings.runtime_env)
        own = env.get("env_vars") or {}
        env["env_vars"] = {
            "PYTHONUNBUFFERED": "1",
            "RAY_JOB_STOP_WAIT_TIME_S": str(int(self.settings.stop_grace_s)),  # read by Ray's job supervisor
            # Ray's OMP_NUM_THREADS (from num_cpus) is the thread governor's ceiling; the user's own pins it
            **({} if "OMP_NUM_THREADS" in own else {ALLOTTED_ENV: "1"}),
            **own,
        }
        return env

    def job_options(self) -> dict[str, Any]:
        """What every Ray job of mtld's asks for (a run, and doctor's check job, which must land where a run
        would): its runtime_env and the entrypoint resources."""
        s = self.settings
        return {"runtime_env": self.runtime_env(), "entrypoint_num_cpus": s.num_cpus,
                "entrypoint_num_gpus": s.num_gpus or None, "entrypoint_memory": int(s.memory_mb * 1_000_000) or None,
                "entrypoint_resources": s.resources or None}

    def start(self, run: Run, run_dir: Path) -> RayRun:
        """Submit the run. ClusterUnreachable when the cluster did not answer: the submission may or may not
        have arrived, so the run stays open and `adopt` settles it (by its derived id) once the cluster answers."""
        ref = submission_id(self.owner, run)
        s = self.settings
        try:
            call(s.address, lambda: self.client.submit_job(
                entrypoint=self.entrypoint(run_dir), submission_id=ref,
                metadata={"mtld_run_id": str(run.id), "mtld_run_dir": str(run_dir)}, **self.job_options(),
            ))
        except ClusterUnreachable:
            self._client = None
            raise
        except Exception:
            if not self._exists(ref):  # else: submitted before (a crash between submitting and recording it)
                raise
        return RayRun(self.client, s.address, ref, run_dir, run)

    def adopt(self, run: Run, run_dir: Path) -> RayRun | None:
        """The Ray job of `run`, finished or not (its status tells): by its stored submission id, or, for a run
        whose start was never recorded, by the id it was submitted under. None when the cluster does not know
        it; ClusterUnreachable when the cluster does not answer (then nobody can tell: try again later)."""
        if run.executor != self.kind:
            return None  # a local child's
        ref = run.ref or submission_id(self.owner, run)
        if not self._exists(ref):
            return None
        return RayRun(self.client, self.settings.address, ref, run_dir, run, node=run.node)

    def _exists(self, ref: str) -> bool:
        try:
            call(self.settings.address, lambda: self.client.get_job_info(ref))
            return True
        except JobMissing:
            return False
        except ClusterUnreachable:
            self._client = None
            raise


def _is_connection_error(error: BaseException) -> bool:
    import requests  # Ray's client is built on it

    return isinstance(error, (ConnectionError, requests.ConnectionError, requests.Timeout))


def first_line(value: object) -> str:
    """An error or message as its first line (Ray's errors carry whole tracebacks and logs)."""
    text = str(value or "").strip()
    return text.splitlines()[0] if text else ""
