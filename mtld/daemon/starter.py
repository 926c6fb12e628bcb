"""The start of an attempt: where the next job goes and how it is launched.

`Starter.start(job, now)` places the job (the disk guard's hold, the cluster's
answer, this machine's pressure, then the policy's start size: decide.family)
and launches it: the store's record of the attempt, its run folder (claimed,
fenced by a new generation, job.json and launch.json), the executor's start.
It returns the run to watch, or None when the job waits (`run.deferred`, said
once per reason through the daemon's `Deferral`) or could not start (the job
fails with the step that failed). Nothing accepted stalls the queue: only a
store that cannot be used at all defers the job to the next tick.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from mtld.config.jobspec import JobSpec, stored_spec
from mtld.config.settings import Settings
from mtld.daemon.diskguard import DiskGuard
from mtld.daemon.ledger import ActiveRun, RunLedger, describe
from mtld.daemon.watchdog import Watchdog
from mtld.decide import policy
from mtld.decide.family import pinned_size, start_size
from mtld.estimate.history import earlier_runs, family_figures, family_history, job_family, probe_dir
from mtld.executor import PROBLEM_FLAG, CannotRun, ClusterRefused, ClusterUnreachable, Executor
from mtld.memory import Probe, Reading
from mtld.platform.power import SleepInhibitor
from mtld.runs.files import launch_for
from mtld.runs.rundir import RunDir
from mtld.store import InvalidTransition, Job, Run, Store


class Deferral:
    """Why the queue waits now: `run.deferred` is logged when the reason changes, not at every tick."""

    def __init__(self, log: Any) -> None:
        self.log = log
        self.because: str | None = None

    def __call__(self, reason: str, message: str, **fields: Any) -> None:
        if self.because != reason:
            self.log.info("run.deferred", reason=reason, message=message, **fields)
        self.because = reason

    def clear(self) -> None:
        self.because = None


class Starter:
    """Places and launches the daemon's next attempt (the module says how)."""

    def __init__(self, settings: Settings, store: Store, executor: Executor, probe: Probe, *, disk: DiskGuard,
                 watchdog: Watchdog, ledger: RunLedger, defer: Deferral, log: Any) -> None:
        self.settings, self.store, self.executor, self.probe = settings, store, executor, probe
        self.disk, self.watchdog, self.ledger, self.defer, self.log = disk, watchdog, ledger, defer, log
        self.calm_since: float | None = None  # since when the pressure level has read normal (policy.calm_since)
        self.executor_problem: str | None = None  # what the store's PROBLEM_FLAG flag says (None: unset)

    def start(self, job: Job, now: float) -> ActiveRun | None:
        """The job's next attempt, started; None when it waits or could not start (said in the log)."""
        try:
            planned = self._plan(job, now)
        except sqlite3.OperationalError as e:  # the store is out (locked, full): the job waits for the next tick
            self.defer("store_unavailable", describe(e), job_id=job.id)
            return None
        except Exception as e:
            self._start_failed(job.id, "reading its stored spec and history", e, now)
            return None
        return self._launch(job, *planned, now) if planned is not None else None

    def pressure_interrupted(self) -> None:
        """A run stopped for critical pressure: the next start waits for the level to stay normal again."""
        self.calm_since = None

    def _plan(self, job: Job, now: float) -> tuple[JobSpec, str, int, str] | None:
        """(spec, family, micro-batch, why) of the job's next attempt; None when it must wait (logged)."""
        spec = stored_spec(job.spec_json, shown_as=f"job {job.id}")  # an older mtld may have let it through
        fam = job_family(spec, self.executor.device)
        if self.disk.hold_if_short(job, spec, fam, now):  # the next tick looks at the rest of the queue
            return None
        if self.executor.remote:  # this machine's memory says nothing of a worker's: the run's own guard decides
            if not self._cluster_ready(job):
                return None
            reading = None
        else:
            reading = self._read_pressure()
        self.calm_since = policy.calm_since(self.calm_since, reading.level.value if reading else None, now)
        start = start_size(self.settings, family_history(self.store, fam), pinned=pinned_size(job.batch_size),
                           effective_batch=spec.train.effective_batch_size,
                           earlier=earlier_runs(self.store, job), reading=reading,
                           calm_for_s=None if self.calm_since is None else now - self.calm_since)
        if start.micro_batch is None:
            self.defer(start.deferred or "deferred", start.reason, job_id=job.id)
            return None
        self.defer.clear()
        self.log.info("policy.decided", job_id=job.id, micro_batch=start.micro_batch, reason=start.reason, family=fam,
                      pressure=reading.level.value if reading else None)
        return spec, fam, start.micro_batch, start.reason

    def _launch(self, job: Job, spec: JobSpec, fam: str, micro_batch: int, reason: str,
                now: float) -> ActiveRun | None:
        """Record the attempt, write its run folder, start its child. A failure fails the job (the run folder
        cannot be written, the child cannot start); once the child runs, nothing here stops it."""
        log = self.log.bind(job_id=job.id)
        try:
            run = self.store.start_run(job.id, micro_batch=micro_batch, family=fam, reason=reason, now=now,
                                       executor=self.executor.kind)  # who to ask about it, even if the start fails
        except InvalidTransition:
            return None  # cancelled or changed since it was picked: the next tick picks again
        except sqlite3.OperationalError as e:
            self.defer("store_unavailable", describe(e), job_id=job.id)
            return None
        except Exception as e:
            self._start_failed(job.id, "recording its start", e, now)
            return None
        log = log.bind(run_id=run.id)
        run_dir = RunDir(job.run_dir)
        step = "claiming the run folder"  # a folder mtld did not make for this job is never used: nothing in it is loaded
        try:
            run_dir.claim({"job_id": job.id, "store": str(self.settings.db_path)},
                          adopt_unmarked=run.attempt > 1)  # an earlier attempt ran there (an older mtld)
            step = "reading the family's figures"
            history = family_figures(self.store, fam, probe_dir(self.settings))
            step = "writing the run folder"
            generation = run_dir.next_generation()  # this attempt owns the folder now: an older one stops writing
            run_dir.write_job(spec)
            run_dir.write_launch(launch_for(self.settings, micro_batch=micro_batch, job_id=job.id, run_id=run.id,
                                            history=history,  # on a cluster: the device its family names
                                            device=self.executor.device if self.executor.remote else None,
                                            generation=generation))
            step = "starting the child"
            handle = self.executor.start(run, run_dir.path)
        except ClusterUnreachable as e:  # the cluster, not the job: the run stays open until it can ask
            self._cluster_lost(job, run, e)
            return None
        except CannotRun as e:  # no node could ever start it as asked: retrying cannot help
            log.warning("run.cannot_start", reason=str(e))
            self.ledger.fail_job(job.id, str(e), now, outcome="cannot_run")
            return None
        except Exception as e:
            self._start_failed(job.id, step, e, now)
            return None
        try:
            self.store.set_run_handle(run.id, executor=self.executor.kind, ref=handle.ref, pid=handle.pid)
        except Exception as e:  # only a restarted daemon needs it, to find the run: the run goes on
            log.warning("run.pid_unrecorded", error=describe(e))
        active = ActiveRun(job.id, run, handle, run_dir, watch=self.watchdog.watch(run_dir, micro_batch, history, now))
        if self.settings.daemon.prevent_sleep and handle.pid is not None:
            inhibitor = SleepInhibitor()
            if inhibitor.start(handle.pid, f"mtld: training job {job.id} ({job.name})"):
                active.inhibitor = inhibitor
        log.info("run.launched", pid=handle.pid, attempt=run.attempt, micro_batch=micro_batch,
                 run_dir=str(run_dir.path), sleep_inhibited=active.inhibitor is not None,
                 executor=self.executor.kind, ref=handle.ref)
        return active

    def _start_failed(self, job_id: int, step: str, error: Exception, now: float) -> None:
        self.log.error("run.start_failed", job_id=job_id, step=step, error=describe(error))
        self.ledger.fail_job(job_id, f"could not start: {step}: {describe(error)}", now, outcome="start_failed")

    def _cluster_ready(self, job: Job) -> bool:
        """The cluster answers (checked before each start, so that an outage defers the queue, not fails it).
        One that refuses mtld's credentials is a configuration error: the queue waits with the reason, which
        `mtld status` shows until the cluster takes runs again."""
        try:
            self.executor.check()
        except ClusterRefused as e:
            self.defer("executor_refused", str(e), job_id=job.id)
            self._executor_problem(str(e))
            return False
        except ClusterUnreachable as e:
            self.defer("cluster_unreachable", str(e), job_id=job.id)
            return False
        self._executor_problem(None)
        return True

    def _executor_problem(self, problem: str | None) -> None:
        if problem != self.executor_problem:
            try:
                self.store.set_flag(PROBLEM_FLAG, problem)
            except sqlite3.OperationalError:  # status misses it until the next tick; the queue waits anyway
                return
            self.executor_problem = problem

    def _cluster_lost(self, job: Job, run: Run, error: Exception) -> None:
        """The cluster stopped answering while the run was being submitted: it may or may not have arrived.
        The run stays open; `reconcile` finds it by its submission id once the cluster answers (and watches it),
        or requeues the job if it never arrived. Nothing is submitted twice."""
        self.log.warning("run.submit_unconfirmed", job_id=job.id, run_id=run.id, error=describe(error))
        self.defer("cluster_unreachable", str(error), job_id=job.id)

    def _read_pressure(self) -> Reading | None:
        """The probe's reading now; None (and a log line) if it cannot be read."""
        try:
            return self.probe.read()
        except Exception as e:  # a broken probe must not stop the queue
            self.log.warning("memory.sample_failed", what="probe", error=f"{type(e).__name__}: {e}")
            return None
