"""The daemon's bookkeeping of a run's end: how it ended, what that means for its job, and the settling
of jobs marked running that have no live run (at start-up, and at each idle tick).

A mixin of mtld.daemon.loop.Daemon (split out to keep each module readable): it
uses the daemon's `store`, `settings`, `executor`, `log` and `active`. A
failure here fails the one run or job it concerns, with the reason in its
`last_error`, never the tick: when recording a run's end fails, the job is
settled as at start-up (its result.json, its cancel request); when even that
fails, it is failed; when even that cannot be written (the store is out), the
next tick tries again.
"""

from __future__ import annotations

import signal
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from mtld.decide import policy
from mtld.executor import ClusterUnreachable, Executor, ExitStatus, RunHandle, make_executor, wait_for_exit
from mtld.decide.family import pressure_interrupt
from mtld.config.jobspec import JobFileError
from mtld.platform.power import SleepInhibitor, notify
from mtld.runs.rundir import RunDir
from mtld.runs.files import RunResult
from mtld.store import QUEUED, RUNNING, Job, Run

FORCED_STOP_GRACE_S = 5.0


@dataclass
class ActiveRun:
    job_id: int
    run: Run
    handle: RunHandle
    run_dir: RunDir
    inhibitor: SleepInhibitor | None = None
    stop_reason: str | None = None  # why we asked the child to stop, if we did
    last_progress: dict[str, Any] | None = field(default=None, repr=False)
    node: str | None = None  # the cluster node it runs on, once known (stored with the run)


class Bookkeeping:
    """What mtld.daemon.loop.Daemon does when a run ends, or when it finds a job running with no live run."""

    def record_exit(self, active: ActiveRun, status: ExitStatus, now: float, *, forced_stop: bool = False) -> None:
        """Record how the run ended and move its job. When that fails, the same tick's `reconcile` settles
        the job as a start-up would (its result.json, its cancel request), and fails it if even that fails."""
        if active in self.active:
            self.active.remove(active)
        if active.inhibitor is not None:
            active.inhibitor.stop()
        try:
            self._record(active, status, now, forced_stop=forced_stop)
        except Exception as e:
            self.log.error("run.record_failed", job_id=active.job_id, run_id=active.run.id, error=describe(e),
                           exc_info=e)

    def _record(self, active: ActiveRun, status: ExitStatus, now: float, *, forced_stop: bool) -> None:
        job = self.store.get(active.job_id)
        result = fresh_result(active.run_dir, active.run)
        earlier_failures = sum(
            1 for r in self.store.runs_for(job.id) if r.id != active.run.id and r.outcome in policy.FAILED_OUTCOMES
        )
        if forced_stop:
            decision = policy.ExitDecision("interrupted", "queued", "stopped at daemon shutdown without a final "
                                           "checkpoint; it resumes from its last one")
        else:
            decision = policy.after_exit(
                exit_code=status.code, signal=status.signal, earlier_failures=earlier_failures,
                max_attempts=self.settings.daemon.max_attempts, backoff_s=self.settings.daemon.retry_backoff_s,
                cancel_requested=job.cancel_requested, stop_reason=active.stop_reason,
                message=result.message if result else status.detail, now=now,
            )
            if decision.outcome == "interrupted" and result is not None and result.stop_reason == "memory_critical":
                decision = self._pressure_interrupted(job.id, active.run, decision, now)
        self._apply(job.id, active.run, status, decision, result, now, stop_reason=active.stop_reason)

    def _pressure_interrupted(self, job_id: int, run: Run, decision: policy.ExitDecision,
                              now: float) -> policy.ExitDecision:
        """The run stopped itself for memory pressure: the next start waits for calm (dispatch), and the
        job's pressure interrupts since it was last released may put it on hold (policy.pressure_hold)."""
        self.calm_since = None
        released = max((t.at for t in self.store.transitions_for(job_id) if t.reason == "released"), default=0.0)
        earlier = [r.ended_at for r in self.store.runs_for(job_id)
                   if r.id != run.id and pressure_interrupt(r) and r.ended_at is not None and r.ended_at >= released]
        memory = self.settings.memory
        hold = policy.pressure_hold([*earlier, now], now=now, limit=memory.interrupt_limit,
                                    window_s=memory.interrupt_window_s, job_id=job_id)
        return replace(decision, hold=hold, reason=f"{decision.reason}; held: {hold}") if hold else decision

    def _apply(self, job_id: int, run: Run, status: ExitStatus, decision: policy.ExitDecision,
               result: RunResult | None, now: float, stop_reason: str | None = None) -> None:
        measured = result.figures() if result else None
        if status.max_rss_bytes and measured is not None:
            measured = measured.model_copy(update={"max_rss_bytes": status.max_rss_bytes})
        figures = measured.stored() if measured is not None else (
            {"max_rss_bytes": status.max_rss_bytes} if status.max_rss_bytes else {})
        self.store.finish_run(run.id, outcome=decision.outcome, exit_code=status.code, signal=status.signal,
                              micro_batch_end=result.micro_batch_end if result else None, figures=figures, now=now)
        job = self.store.transition(
            job_id, decision.job_state, reason=decision.reason, now=now,
            last_error=decision.reason if decision.job_state == "failed" else None,
            next_attempt_at=decision.retry_at, hold=decision.hold,
        )
        log = self.log.bind(job_id=job_id, run_id=run.id)
        if decision.outcome == "interrupted" and stop_reason:
            log.info("run.interrupted", reason=stop_reason, step=figures.get("step"))
        log.info("run.exited", outcome=decision.outcome, exit_code=status.code, signal=status.signal,
                 wall_s=round(now - run.started_at, 3), **figures)
        event = {"succeeded": "job.succeeded", "failed": "job.failed", "cancelled": "job.cancelled"}.get(
            job.state, "job.requeued")
        (log.warning if job.state == "failed" else log.info)(event, reason=decision.reason, retry_at=decision.retry_at)
        if job.state in ("succeeded", "failed", "cancelled") and self.settings.daemon.notify:
            notify(f"mtld: {job.name} {job.state}", decision.reason)
        if decision.hold:  # disk full, or memory pressure too often: logged and notified in one place
            self.disk.held(job, decision.hold)

    def _fail_job(self, job_id: int, reason: str, now: float, *, outcome: str) -> None:
        """The last resort: close the job's open runs (`outcome`) and fail it (cancelled, if that was asked),
        `reason` in its last_error. Never raises: when even this cannot be written, the next tick tries again."""
        try:
            for run in self.store.runs_for(job_id):
                if run.ended_at is None:
                    self.store.finish_run(run.id, outcome=outcome, now=now)
            job = self.store.get(job_id)
            if job is None or job.state not in (QUEUED, RUNNING):
                return
            cancelled = job.state == RUNNING and job.cancel_requested
            job = self.store.transition(job_id, "cancelled" if cancelled else "failed", reason=reason, now=now,
                                        last_error=None if cancelled else reason)
        except Exception as e:
            self.log.error("daemon.bookkeeping_failed", job_id=job_id, reason=reason, error=describe(e), exc_info=e)
            return
        log = self.log.bind(job_id=job_id)
        (log.info if cancelled else log.warning)(f"job.{job.state}", reason=reason, retry_at=None)
        if self.settings.daemon.notify:
            notify(f"mtld: {job.name} {job.state}", reason)

    def reconcile(self, now: float, *, at_start: bool = True) -> None:
        """Settle every job marked running that has no live run here (a child still alive is stopped cleanly
        first): at start-up, after a crash or SIGKILL of an earlier daemon, and at each idle tick, for a run
        whose start or end could not be recorded. A job that cannot be settled is failed; the others go on."""
        watched_runs = {a.run.id for a in self.active}
        for run in self.store.active_runs():
            if run.id not in watched_runs:
                self._settle(run.job_id, now, self._recover_run, run, now, at_start)
        watched_jobs = {a.job_id for a in self.active}
        for job in self.store.list_jobs([RUNNING]):  # its run was recorded, its move was not
            if job.id not in watched_jobs and not any(r.ended_at is None for r in self.store.runs_for(job.id)):
                self._settle(job.id, now, self._recover_move, job, now)

    def _settle(self, job_id: int, now: float, settle: Callable[..., None], *args: Any) -> None:
        try:
            settle(*args)
        except Exception as e:
            self.log.error("daemon.recover_failed", job_id=job_id, error=describe(e), exc_info=e)
            # the store is out (locked, full), or the cluster does not answer (nobody can tell whether its run
            # still trains there): the next tick tries again
            if not isinstance(e, (sqlite3.OperationalError, ClusterUnreachable)):
                self._fail_job(job_id, f"the daemon could not settle its run: {describe(e)}", now, outcome="lost")

    def _recover_run(self, run: Run, now: float, at_start: bool) -> None:
        job = self.store.get(run.job_id)
        run_dir = RunDir(job.run_dir)
        executor = self.executor_for(run)
        adopted = executor.adopt(run, run_dir.path)
        if adopted is not None and executor.remote and job.state == RUNNING:
            # a run on a cluster goes on without us: watch it again (its end is recorded as it comes)
            self.active.append(ActiveRun(job.id, run, adopted, run_dir, node=run.node))
            self.log.info("daemon.adopted", job_id=job.id, run_id=run.id, submission_id=run.ref, node=run.node)
            return
        action = "gone"
        if adopted is not None:  # still training here: stop it cleanly, then requeue
            action = "stopped"
            adopted.signal(signal.SIGTERM)
            if wait_for_exit(adopted, self.settings.daemon.stop_timeout_s) is None:
                adopted.signal(signal.SIGKILL)
                wait_for_exit(adopted, FORCED_STOP_GRACE_S)
        result = fresh_result(run_dir, run)
        if result and result.outcome == "succeeded":
            decision = policy.ExitDecision("succeeded", "succeeded", "finished while no daemon was watching")
            status = ExitStatus(code=0)
        elif job.cancel_requested:
            decision = policy.ExitDecision("cancelled", "cancelled", "cancelled by the user")
            status = ExitStatus(code=result.exit_code if result else None)
        else:
            when = "at daemon start" if at_start else "with no live run"
            decision = policy.ExitDecision("lost", "queued", f"recovered {when} (child {action}); "
                                           "it resumes from its last checkpoint")
            status = ExitStatus(code=result.exit_code if result else None)
        self.log.info("daemon.recovered", job_id=job.id, run_id=run.id, pid=run.pid, child=action)
        if job.state != RUNNING:  # only the run was left open: close it
            self.store.finish_run(run.id, outcome="lost", now=now)
            return
        self._apply(job.id, run, status, decision, result, now)

    def executor_for(self, run: Run) -> Executor:
        """The executor that started `run`: the daemon's, or the other kind when the configuration changed
        while it ran (its run is found and settled by its own kind, never taken for gone). A run from before
        runs named their executor was a local child."""
        if (run.executor or "local") == self.executor.kind:
            return self.executor
        return make_executor(self.settings, kind=run.executor or "local")

    def _recover_move(self, job: Job, now: float) -> None:
        latest = self.store.latest_run(job.id)
        if latest is not None and latest.outcome == "succeeded":
            self.store.transition(job.id, "succeeded", reason="its run had succeeded", now=now)
        elif job.cancel_requested:
            self.store.transition(job.id, "cancelled", reason="cancelled by the user", now=now)
        else:
            self.store.transition(job.id, "queued", reason="recovered with no live run", now=now)
        self.log.info("daemon.recovered", job_id=job.id, child="none")


def fresh_result(run_dir: RunDir, run: Run) -> RunResult | None:
    """The child's result.json if this attempt wrote it (not a leftover of an earlier one), and
    this mtld can read it; a result it cannot read counts as none (the exit status still decides)."""
    try:
        result = run_dir.read_result()
        if result is None:
            return None
        if result.run_id is not None:
            return result if result.run_id == run.id else None
        return result if run_dir.result_file.stat().st_mtime >= run.started_at else None
    except Exception:  # RunFileError, OSError, or worse: reading a result never stops the queue
        return None


def describe(error: BaseException) -> str:
    """An error as one line: its type and message (a JobFileError's problems joined by "; ")."""
    text = "; ".join(str(error).splitlines())
    return text if isinstance(error, JobFileError) else f"{type(error).__name__}: {text}"
