"""The Ray executor: each run is a Ray job, submitted through Ray's Jobs API.

The job's entrypoint is the same `python -P -m mtld.train RUN_DIR` a local child
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

- Token authentication (RAY_AUTH_MODE=token on the head): every request but
  a few public ones (/api/authentication_mode among them) must carry
  `Authorization: Bearer TOKEN`, else the dashboard answers 401 (no token) or
  403 (a wrong one) (ray/_private/authentication/http_token_authentication.py,
  ray/dashboard/http_server_head.py). The SDK sends headers given to the client
  with every request, and raises ray.exceptions.AuthenticationError for a 401
  or 403 (ray/dashboard/modules/dashboard_sdk.py, SubmissionClient). mtld
  sends the token of `executor.ray.token_file`; a refusal is ClusterRefused: a
  configuration error, one line naming that setting.
- A PENDING job waits for a node with its entrypoint resources free
  (`driver_node_id` is None until it runs: common.py, JobInfo; what the job
  asks for is not in the JobDetails that get_job_info returns, pydantic_models.py,
  so mtld keeps it in the job's metadata). One that no
  node has in total can never start, and Ray says so only after
  RAY_JOB_START_TIMEOUT_SECONDS (JOB_SUPERVISOR_ACTOR_START_TIMEOUT): mtld
  checks the live nodes' totals (the state API's /api/v0/nodes,
  ray/dashboard/modules/state/state_head.py) before submitting, while a run
  waits, and when Ray gives up, and fails the job at once with the resource
  named (mtld.executor.ray.resources).

A cluster that cannot be reached never fails a run: `poll` says "still
running" and logs the outage once; `start` raises ClusterUnreachable, which
the daemon treats as "wait and try again".
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import signal as signals
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mtld.disk import open_private
from mtld.executor import CannotRun, ClusterRefused, ClusterUnreachable, ExitStatus
from mtld.executor.ray.api import JobMissing, JobsApi, cluster_reason, first_line
from mtld.executor.ray.resources import asked, request_text
from mtld.logs.events import get_logger
from mtld.runs.child import ALLOTTED_ENV, CHILD_MODULE, SAFE_PATH
from mtld.runs.rundir import RunDir

if TYPE_CHECKING:
    from mtld.executor.ray.settings import RaySettings
    from mtld.store import Run
STOP_SIGNALS = (signals.SIGTERM, signals.SIGINT, signals.SIGKILL)
RECHECK_PENDING_S = 60.0  # how often a waiting run's request is checked again against the live nodes
# Finished jobs whose entrypoint never ran to an exit status because of the cluster, not the run: the run is
# lost (it resumes from its checkpoint) rather than failed (JobErrorType, ray/dashboard/modules/job/common.py).
# Of those, the ones that say the job never got a node: its request is checked against the nodes again.
CLUSTER_FAILURES = {"JOB_SUPERVISOR_ACTOR_DIED", "JOB_SUPERVISOR_ACTOR_START_TIMEOUT",
                    "JOB_SUPERVISOR_ACTOR_UNSCHEDULABLE", "JOB_SUPERVISOR_ACTOR_UNKNOWN_FAILURE",
                    "JOB_SUPERVISOR_ACTOR_START_FAILURE"}
NEVER_PLACED = {"JOB_SUPERVISOR_ACTOR_START_TIMEOUT", "JOB_SUPERVISOR_ACTOR_UNSCHEDULABLE"}


def submission_id(owner: str, run: Run) -> str:
    """The Ray submission id of a run, derived from the run's record alone (so a daemon that crashed between
    submitting and recording it finds it again): its daemon (the state folder), its id, and when it started
    (a state folder made again at the same path starts its ids at 1 again; a cluster keeps old jobs)."""
    tag = hashlib.sha256(owner.encode()).hexdigest()[:10]
    return f"mtld-{tag}-run-{run.id}-{int(run.started_at * 1000)}"


class RayRun:
    """One run's Ray job: polled through the Jobs API, stopped with Ray's stop (SIGTERM, grace, SIGKILL)."""

    pid = None  # not a process here

    def __init__(self, api: JobsApi, ref: str, run_dir: Path, run: Run, node: str | None = None,
                 wanted: dict[str, float] | None = None, clock: Callable[[], float] = time.monotonic):
        self.api, self.ref, self.run_dir, self.run = api, ref, Path(run_dir), run
        self.node = node
        self.wanted = wanted or {}  # what it asks for, as submitted (the job's metadata says, once read)
        self.waiting: str | None = None  # what its PENDING job waits for, as one line
        self.status: ExitStatus | None = None
        self.stop_pending = False  # a stop asked for that the cluster has not taken yet: sent again each poll
        self.unreachable = False
        self.clock = clock
        self.checked_at: float | None = None  # when its request was last checked against the live nodes
        self.log = get_logger(run_id=run.id, submission_id=ref)

    def signal(self, signum: int) -> None:
        """SIGTERM, SIGINT and SIGKILL all stop the job: Ray signals the run, which checkpoints within the
        grace period (`executor.ray.stop_grace_s`), and kills it after that."""
        if self.status is None and signum in STOP_SIGNALS:
            self.stop_pending = True
            self._send_stop()

    def _send_stop(self) -> None:
        try:
            self.api.call(lambda c: c.stop_job(self.ref))
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
            info = self.api.call(lambda c: c.get_job_info(self.ref))
        except JobMissing:  # the cluster lost it (a head restarted without its state): the run is lost
            self.status = ExitStatus(code=self._result_code(), detail=f"the Ray cluster at {self.api.address} no "
                                     "longer knows this job (its head restarted without its state?)")
            return self.status
        except Exception as e:  # the cluster is out: as far as we know, the run goes on
            self._unreachable("poll", e)
            return None
        if self.unreachable:
            self.log.info("executor.reachable")
            self.unreachable = False
        self.node = info.driver_node_id or self.node
        state = getattr(info.status, "value", info.status)
        if state == "PENDING":
            return self._pending(info)
        self.waiting = None
        if not info.status.is_terminal():
            return None
        self._append_output()
        error_type = getattr(info.error_type, "value", info.error_type)
        status = exit_status(state, info.driver_exit_code, info.message, self._result_code(), error_type=error_type)
        if error_type in NEVER_PLACED and status.code is None:  # Ray gave up placing it: can any node ever?
            never = self._cannot_run(info)
            if never is not None:
                status = ExitStatus(detail=status.detail, cannot_run=f"{never}; Ray: {cluster_reason(info.message)}")
        self.status = status
        return self.status

    def _pending(self, info: Any) -> ExitStatus | None:
        """A job Ray holds PENDING: what it waits for; and, now and then, whether any node could ever start it
        (a node left since): if none can, the job is stopped and the run cannot run."""
        self.wanted = _asked_by(info, self.wanted)
        self.waiting = f"waiting for the Ray cluster to start it: a node with {request_text(self.wanted)} free"
        now = self.clock()
        if self.checked_at is not None and now - self.checked_at < RECHECK_PENDING_S:
            return None
        self.checked_at = now
        never = self._cannot_run(info)
        if never is None:
            return None
        try:
            self.api.call(lambda c: c.stop_job(self.ref))
        except Exception as e:  # it waits on a node that will never come: stopping it is a courtesy
            self.log.warning("executor.unreachable", action="stop", error=first_line(e))
        self.status = ExitStatus(cannot_run=never)
        return self.status

    def _cannot_run(self, info: Any) -> str | None:
        try:
            return self.api.cannot_run(_asked_by(info, self.wanted))
        except Exception as e:  # nobody can tell now: the job goes on waiting (or is lost, as Ray said)
            self._unreachable("check_resources", e)
            return None

    def _unreachable(self, action: str, error: Exception) -> None:
        if not self.unreachable:  # once per outage
            self.log.warning("executor.unreachable", action=action, error=first_line(error),
                             refused=isinstance(error, ClusterRefused))
        self.unreachable = True

    def _result_code(self) -> int | None:
        """The exit status this attempt's result.json records, if this attempt wrote one."""
        result = RunDir(self.run_dir).result_of(self.run.id, self.run.started_at)
        return result.exit_code if result else None

    def _append_output(self) -> None:
        """Ray keeps the entrypoint's output: add it to the run folder's child.log, as a local child's."""
        try:
            text = self.api.call(lambda c: c.get_job_logs(self.ref))
            if text:
                with os.fdopen(open_private(self.run_dir / "child.log", os.O_WRONLY | os.O_APPEND), "ab") as out:
                    out.write(text.encode())
        except Exception as e:  # the output is a convenience; the run's own log is in its folder
            self.log.warning("executor.output_lost", error=first_line(e))


ASKED_KEY = "mtld_asks"  # the job's metadata: what the run asked for, as JSON (Ray's JobDetails has no entrypoint_*)


def _asked_by(info: Any, known: dict[str, float]) -> dict[str, float]:
    """What a Ray job asks for: as its metadata says (what was submitted, even by an earlier daemon whose
    settings differed), else `known`."""
    try:
        wanted = json.loads((getattr(info, "metadata", None) or {})[ASKED_KEY])
        return {str(name): float(amount) for name, amount in wanted.items()}
    except (KeyError, TypeError, ValueError, AttributeError):
        return known


def exit_status(status: str, exit_code: int | None, message: str | None, result_code: int | None, *,
                error_type: str | None = None) -> ExitStatus:
    """A finished Ray job as the daemon judges a run: its exit status, else its result.json's, else lost or
    failed with Ray's own message as the detail. The entrypoint runs under `sh -c "exec ..."`, so a run
    killed by a signal reports minus the signal (or, through a shell that did not exec, 128 + the signal)."""
    if exit_code is not None and exit_code < 0:
        return ExitStatus(signal=-exit_code)
    if exit_code is not None and 128 < exit_code < 160 and result_code is None:
        return ExitStatus(signal=exit_code - 128)
    if exit_code is not None:  # the run's own words are in its result.json, or its output's last line
        return ExitStatus(code=exit_code)
    if result_code is not None:
        return ExitStatus(code=result_code)
    if status == "STOPPED":
        return ExitStatus(detail="stopped on the cluster before it wrote its result")  # lost: resumes
    if status == "SUCCEEDED":
        return ExitStatus(code=0)
    if error_type in CLUSTER_FAILURES:  # the cluster's failure, not the run's: lost, it resumes
        return ExitStatus(detail=f"the Ray cluster did not run it: {cluster_reason(message) or error_type}")
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
        self.api = JobsApi(settings.address, settings.token_file)

    def check(self) -> None:
        """One cheap request (the Jobs API's version): ClusterUnreachable while the cluster does not answer,
        ClusterRefused while it refuses the token."""
        self.api.call(lambda c: c.get_version())

    def entrypoint(self, run_dir: Path) -> str:
        # exec: the run replaces Ray's `sh -c`, so Ray's stop signals it directly and a signal death is
        # reported as such (minus the signal), not as the shell's 128 + N
        return f"exec {shlex.quote(self.settings.python)} {SAFE_PATH} -m {CHILD_MODULE} {shlex.quote(str(run_dir))}"

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

    def asked(self) -> dict[str, float]:
        s = self.settings
        return asked(s.num_cpus, s.num_gpus, s.memory_mb, s.resources)

    def job_options(self) -> dict[str, Any]:
        """What every Ray job of mtld's asks for (a run, and doctor's check job, which must land where a run
        would): its runtime_env and the entrypoint resources."""
        s = self.settings
        return {"runtime_env": self.runtime_env(), "entrypoint_num_cpus": s.num_cpus,
                "entrypoint_num_gpus": s.num_gpus or None, "entrypoint_memory": int(s.memory_mb * 1_000_000) or None,
                "entrypoint_resources": s.resources or None}

    def start(self, run: Run, run_dir: Path) -> RayRun:
        """Submit the run. CannotRun when no live node has, in total, what it asks for; ClusterUnreachable when
        the cluster did not answer: the submission may or may not have arrived, so the run stays open and
        `adopt` settles it (by its derived id) once the cluster answers."""
        ref = submission_id(self.owner, run)
        wanted = self.asked()
        never = self.api.cannot_run(wanted)
        if never is not None:
            raise CannotRun(never)
        try:
            self.api.call(lambda c: c.submit_job(
                entrypoint=self.entrypoint(run_dir), submission_id=ref,
                metadata={"mtld_run_id": str(run.id), "mtld_run_dir": str(run_dir), ASKED_KEY: json.dumps(wanted)},
                **self.job_options(),
            ))
        except ClusterUnreachable:
            raise
        except Exception:
            if not self._exists(ref):  # else: submitted before (a crash between submitting and recording it)
                raise
        return RayRun(self.api, ref, run_dir, run, wanted=wanted)

    def adopt(self, run: Run, run_dir: Path) -> RayRun | None:
        """The Ray job of `run`, finished or not (its status tells): by its stored submission id, or, for a run
        whose start was never recorded, by the id it was submitted under. None when the cluster does not know
        it; ClusterUnreachable when the cluster does not answer (then nobody can tell: try again later)."""
        if run.executor != self.kind:
            return None  # a local child's
        ref = run.ref or submission_id(self.owner, run)
        if not self._exists(ref):
            return None
        return RayRun(self.api, ref, run_dir, run, node=run.node, wanted=self.asked())

    def _exists(self, ref: str) -> bool:
        try:
            self.api.call(lambda c: c.get_job_info(ref))
            return True
        except JobMissing:
            return False
