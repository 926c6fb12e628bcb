"""The run ledger: what happened to a run, written down. How a run ended and what that means for its job,
and the settling of jobs marked running that have no live run (at start-up, and at each idle tick).

The daemon holds one ledger and hands it what it knows (the run, how it exited, the runs it is watching);
the ledger reads and writes the store and says what it did (`Recorded`, the runs it adopted). It never
touches the daemon's own state. What an exit means is mtld.decide.policy's (`after_exit`, `settle`).

A failure here fails the one run or job it concerns, with the reason in its `last_error`, never the tick:
when recording a run's end fails, the job is settled as at start-up (its result.json, its cancel request);
when even that fails, it is failed; when even that cannot be written (the store is out), the next tick
tries again.
"""

from __future__ import annotations

import signal
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

from mtld.config.jobspec import JobFileError
from mtld.config.settings import FORCED_STOP_GRACE_S, Settings
from mtld.daemon.watchdog import Watch
from mtld.decide import policy
from mtld.decide.family import in_precision
from mtld.estimate.history import pressure_interrupt
from mtld.executor import ClusterUnreachable, Executor, ExitStatus, RunHandle, wait_for_exit
from mtld.platform.power import SleepInhibitor
from mtld.disk import full_text
from mtld.runs import exitcodes
from mtld.runs.files import RunResult
from mtld.runs.rundir import RunDir
from mtld.store import QUEUED, RUNNING, Job, Run, Store


@dataclass
class ActiveRun:
    """A run the daemon watches: its handle, and what the daemon asked of it."""

    job_id: int
    run: Run
    handle: RunHandle
    run_dir: RunDir
    inhibitor: SleepInhibitor | None = None
    stop_reason: str | None = None  # why we asked the child to stop, if we did
    stop_detail: str | None = None  # what the daemon saw (a stall: how long it was quiet)
    stop_asked_at: float | None = None
    killed: bool = False  # it did not stop in time and was sent SIGKILL
    poll_failed: bool = False  # asking about it failed (logged once; it is asked again each tick)
    watch: Watch | None = field(default=None, repr=False)  # the progress watchdog's (mtld.daemon.watchdog)
    last_progress: dict[str, Any] | None = field(default=None, repr=False)
    node: str | None = None  # the cluster node it runs on, once known (stored with the run)
    waiting: str | None = None  # what it waits for on the cluster before it starts (stored with the run)


@dataclass(frozen=True)
class Recorded:
    """What recording a run's end did. `pressure_interrupt`: the run stopped itself for memory pressure (the
    daemon waits for calm before the next start)."""

    decision: policy.ExitDecision | None  # None: it could not be recorded (the job is settled later)
    pressure_interrupt: bool = False


class RunLedger:
    """Records runs' ends and settles runs with no live child. `make_executor(kind)`: the executor of another
    kind, for a run started before the configuration changed. `on_hold(job, text)` announces a hold;
    `notify(title, text)` a job's end (None: no notifications)."""

    def __init__(self, settings: Settings, store: Store, executor: Executor, log: Any, *,
                 make_executor: Callable[[str], Executor], on_hold: Callable[[Job, str], None],
                 notify: Callable[[str, str], Any] | None = None) -> None:
        self.settings, self.store, self.executor, self.log = settings, store, executor, log
        self.make_executor, self.on_hold, self.notify = make_executor, on_hold, notify
        # exits seen but not recorded (a full or busy store): settled by what was seen, not as "lost"
        self.unrecorded: dict[int, ExitStatus] = {}

    # ------------------------------------------------------------ a run's end

    def record_exit(self, active: ActiveRun, status: ExitStatus, now: float, *, forced_stop: bool = False) -> Recorded:
        """Record how the run ended and move its job. When that fails, the same tick's `reconcile` settles the
        job as a start-up would (its result.json, its cancel request), and fails it if even that fails."""
        if active.inhibitor is not None:
            active.inhibitor.stop()
        try:
            return self._record(active, status, now, forced_stop=forced_stop)
        except Exception as e:
            self.log.error("run.record_failed", job_id=active.job_id, run_id=active.run.id, error=describe(e),
                           exc_info=e)
            full = full_text(active.run_dir.path) if status.code == exitcodes.DISK_FULL else None
            self.unrecorded[active.run.id] = replace(status, detail=full or status.detail)
            return Recorded(None)

    def _record(self, active: ActiveRun, status: ExitStatus, now: float, *, forced_stop: bool) -> Recorded:
        job = self._job(active.job_id)
        result = active.run_dir.result_of(active.run.id, active.run.started_at)
        if forced_stop:
            decision = policy.ExitDecision("interrupted", "queued", "stopped at daemon shutdown without a final "
                                           "checkpoint; it resumes from its last one")
        else:
            stalled = active.stop_reason == "stalled"
            decision = self._after_exit(job, active.run, status.code, status.signal, now,
                                        stop_reason=active.stop_reason,
                                        message=active.stop_detail if stalled else (
                                            result.message if result else child_said(active.run_dir)),
                                        detail=status.detail, cannot_run=status.cannot_run,
                                        gpu_failure=None if status.code == 0 else gpu_failure_in(active.run_dir))
        pressure = decision.outcome == "interrupted" and result is not None and result.stop_reason == "memory_critical"
        if pressure:
            decision = self._pressure_hold(job.id, active.run, decision, now)
        elif decision.outcome == "stalled":
            decision = self._stall_hold(job.id, active.run, decision)
        self._apply(job.id, active.run, status, decision, result, now, stop_reason=active.stop_reason)
        return Recorded(decision, pressure_interrupt=pressure)

    def _after_exit(self, job: Job, run: Run, exit_code: int | None, signum: int | None, now: float, *,
                    stop_reason: str | None, message: str | None, detail: str | None = None,
                    cannot_run: str | None = None, gpu_failure: str | None = None) -> policy.ExitDecision:
        earlier = [r for r in self.store.runs_for(job.id) if r.id != run.id]
        retried = max((t.at for t in self.store.transitions_for(job.id) if t.reason == "retry"), default=0.0)
        # `mtld retry` gives a job its attempts again: only failures since count
        earlier_failures = sum(1 for r in earlier if r.outcome in policy.FAILED_OUTCOMES and r.started_at >= retried)
        daemon = self.settings.daemon
        return policy.after_exit(exit_code=exit_code, signal=signum, earlier_failures=earlier_failures,
                                 max_attempts=daemon.max_attempts, backoff_s=daemon.retry_backoff_s,
                                 cancel_requested=job.cancel_requested, stop_reason=stop_reason, message=message,
                                 now=now, gpu_failure=gpu_failure, detail=detail, cannot_run=cannot_run,
                                 lost_in_a_row=self._lost_in_a_row(job.id, earlier),
                                 max_lost=daemon.max_lost, lost_backoff_s=daemon.lost_backoff_s)

    def _lost_in_a_row(self, job_id: int, earlier: Sequence[Run]) -> int:
        """The job's runs lost one after the other just before this one, since `mtld retry` last queued it
        again or released it from a hold (either starts the count again)."""
        released = max((t.at for t in self.store.transitions_for(job_id) if t.reason in ("released", "retry")),
                       default=0.0)
        count = 0
        for run in reversed([r for r in earlier if r.started_at >= released]):
            if run.outcome != "lost":
                break
            count += 1
        return count

    def _pressure_hold(self, job_id: int, run: Run, decision: policy.ExitDecision, now: float) -> policy.ExitDecision:
        """The job's pressure interrupts since it was last released may put it on hold (policy.pressure_hold)."""
        released = max((t.at for t in self.store.transitions_for(job_id) if t.reason == "released"), default=0.0)
        earlier = [r.ended_at for r in self.store.runs_for(job_id)
                   if r.id != run.id and pressure_interrupt(r) and r.ended_at is not None and r.ended_at >= released]
        memory = self.settings.memory
        hold = policy.pressure_hold([*earlier, now], now=now, limit=memory.interrupt_limit,
                                    window_s=memory.interrupt_window_s, job_id=job_id)
        return replace(decision, hold=hold, reason=f"{decision.reason}; held: {hold}") if hold else decision

    def _stall_hold(self, job_id: int, run: Run, decision: policy.ExitDecision) -> policy.ExitDecision:
        """Stalls in a row since the job was last released (this one included) may put it on hold."""
        released = max((t.at for t in self.store.transitions_for(job_id) if t.reason == "released"), default=0.0)
        in_a_row = 1
        for earlier in reversed([r for r in self.store.runs_for(job_id) if r.id != run.id and r.started_at >= released]):
            if earlier.outcome != "stalled":
                break
            in_a_row += 1
        hold = policy.stall_hold(in_a_row, limit=self.settings.watchdog.max_stalls, job_id=job_id)
        return replace(decision, hold=hold, reason=f"{decision.reason}; held: {hold}") if hold else decision

    def _apply(self, job_id: int, run: Run, status: ExitStatus, decision: policy.ExitDecision,
               result: RunResult | None, now: float, stop_reason: str | None = None) -> None:
        measured = result.figures() if result else None
        if status.max_rss_bytes and measured is not None:
            measured = measured.model_copy(update={"max_rss_bytes": status.max_rss_bytes})
        figures = measured.stored() if measured is not None else (
            {"max_rss_bytes": status.max_rss_bytes} if status.max_rss_bytes else {})
        trained_in = result.precision if result else None  # its autocast check may have fallen back to fp32
        family = in_precision(run.family, trained_in) if run.family and trained_in else None
        self.store.finish_run(run.id, outcome=decision.outcome, exit_code=status.code, signal=status.signal,
                              micro_batch_end=result.micro_batch_end if result else None, figures=figures, now=now,
                              family=family if family != run.family else None, reason=decision.reason)
        shown = decision.job_state == "failed" or decision.outcome in ("stalled", "lost")  # `status` shows why
        job = self.store.transition(
            job_id, decision.job_state, reason=decision.reason, now=now, last_error=decision.reason if shown else None,
            next_attempt_at=decision.retry_at, hold=decision.hold,
        )
        log = self.log.bind(job_id=job_id, run_id=run.id)
        if decision.outcome == "interrupted" and stop_reason:
            log.info("run.interrupted", reason=stop_reason, step=figures.get("step"))
        log.info("run.exited", outcome=decision.outcome, exit_code=status.code, signal=status.signal,
                 wall_s=round(now - run.started_at, 3), reason=decision.reason, detail=status.detail, **figures)
        event = {"succeeded": "job.succeeded", "failed": "job.failed", "cancelled": "job.cancelled"}.get(
            job.state, "job.requeued")
        (log.warning if job.state == "failed" else log.info)(event, reason=decision.reason, retry_at=decision.retry_at)
        if job.state in ("succeeded", "failed", "cancelled") and self.notify is not None:
            self.notify(f"mtld: {job.name} {job.state}", decision.reason)
        if decision.hold:  # disk full, or memory pressure too often: announced in one place
            self.on_hold(job, decision.hold)

    def fail_job(self, job_id: int, reason: str, now: float, *, outcome: str) -> None:
        """The last resort: close the job's open runs (`outcome`) and fail it (cancelled, if that was asked),
        `reason` in its last_error. Never raises: when even this cannot be written, the next tick tries again."""
        try:
            for run in self.store.runs_for(job_id):
                if run.ended_at is None:
                    self.store.finish_run(run.id, outcome=outcome, now=now, reason=reason)
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
        if self.notify is not None:
            self.notify(f"mtld: {job.name} {job.state}", reason)

    # ------------------------------------------------------------ where a cluster run is

    def record_node(self, active: ActiveRun, node: str) -> None:
        """A run on a cluster started on `node` (stored with the run: `mtld status` shows it)."""
        active.node = node
        try:
            self.store.set_run_node(active.run.id, node)
        except Exception as e:  # status shows it; the run goes on without it
            self.log.warning("run.node_unrecorded", job_id=active.job_id, run_id=active.run.id, error=describe(e))
            return
        self.log.info("run.placed", job_id=active.job_id, run_id=active.run.id, node=active.node)

    def record_waiting(self, active: ActiveRun, waiting: str | None) -> None:
        """A run on a cluster waits for a node (or runs now): `mtld status` shows what it waits for."""
        active.waiting = waiting
        try:
            self.store.set_run_waiting(active.run.id, waiting)
        except Exception as e:  # status says less; the run goes on
            self.log.warning("run.node_unrecorded", job_id=active.job_id, run_id=active.run.id, error=describe(e))
            return
        if waiting is not None:
            self.log.info("run.waiting", job_id=active.job_id, run_id=active.run.id, waiting=waiting)

    # ------------------------------------------------------------ runs with no live child

    def reconcile(self, now: float, watched: Sequence[ActiveRun], *, at_start: bool = True) -> list[ActiveRun]:
        """Settle every job marked running that has no live run here (a child still alive is stopped cleanly
        first): at start-up, after a crash or SIGKILL of an earlier daemon, and at each idle tick, for a run
        whose start or end could not be recorded. A job that cannot be settled is failed; the others go on.
        Returns the runs on a cluster it found still going: the daemon watches them again."""
        adopted: list[ActiveRun] = []
        watched_runs = {a.run.id for a in watched}
        for run in self.store.active_runs():
            if run.id not in watched_runs:
                self._settle(run.job_id, now, partial(self._recover_run, run, now, at_start, adopted))
        watched_jobs = {a.job_id for a in [*watched, *adopted]}
        for job in self.store.list_jobs([RUNNING]):  # its run was recorded, its move was not
            if job.id not in watched_jobs and not any(r.ended_at is None for r in self.store.runs_for(job.id)):
                self._settle(job.id, now, partial(self._recover_move, job, now))
        return adopted

    def _settle(self, job_id: int, now: float, settle: Callable[[], None]) -> None:
        try:
            settle()
        except Exception as e:
            self.log.error("daemon.recover_failed", job_id=job_id, error=describe(e), exc_info=e)
            # the store is out (locked, full), or the cluster does not answer (nobody can tell whether its run
            # still trains there): the next tick tries again
            if not isinstance(e, (sqlite3.OperationalError, ClusterUnreachable)):
                self.fail_job(job_id, f"the daemon could not settle its run: {describe(e)}", now, outcome="lost")

    def _recover_run(self, run: Run, now: float, at_start: bool, adopted: list[ActiveRun]) -> None:
        job = self._job(run.job_id)
        run_dir = RunDir(job.run_dir)
        executor = self.executor_for(run)
        handle = executor.adopt(run, run_dir.path)
        if handle is not None and executor.remote and job.state == RUNNING:
            # a run on a cluster goes on without us: watch it again (its end is recorded as it comes)
            adopted.append(ActiveRun(job.id, run, handle, run_dir, node=run.node, waiting=run.waiting))
            self.log.info("daemon.adopted", job_id=job.id, run_id=run.id, ref=run.ref, node=run.node)
            return
        action = "gone"
        if handle is not None:  # still training here: stop it cleanly, then requeue
            action = "stopped"
            handle.signal(signal.SIGTERM)
            if wait_for_exit(handle, self.settings.daemon.stop_timeout_s) is None:
                handle.signal(signal.SIGKILL)
                wait_for_exit(handle, FORCED_STOP_GRACE_S)
        self.log.info("daemon.recovered", job_id=job.id, run_id=run.id, pid=run.pid, child=action)
        if job.state != RUNNING:  # only the run was left open: close it
            self.store.finish_run(run.id, outcome="lost", now=now, reason=f"its job was {job.state} meanwhile")
            return
        result = run_dir.result_of(run.id, run.started_at)
        when = "at daemon start" if at_start else "with no live run"
        seen = self.unrecorded.get(run.id, ExitStatus())  # its exit, if this daemon saw it but could not record it
        status = ExitStatus(code=result.exit_code) if result else seen
        gone = (f"its {run.executor} job is not known there (its submission never arrived, or the cluster forgot "
                f"it); found {when}" if executor.remote else f"the run ended while no daemon was watching (found "
                f"{when})" if action == "gone" else f"recovered {when} (child {action})")
        decision = self._after_exit(job, run, status.code, status.signal, now,
                                    stop_reason=f"stopped by the daemon {when}" if action == "stopped" else None,
                                    message=result.message if result else seen.detail, detail=seen.detail or gone,
                                    cannot_run=seen.cannot_run)
        self._apply(job.id, run, status, decision, result, now)
        self.unrecorded.pop(run.id, None)

    def executor_for(self, run: Run) -> Executor:
        """The executor that started `run`: the daemon's, or the other kind when the configuration changed
        while it ran (its run is found and settled by its own kind, never taken for gone)."""
        return self.executor if run.executor == self.executor.kind else self.make_executor(run.executor)

    def _recover_move(self, job: Job, now: float) -> None:
        latest = self.store.latest_run(job.id)
        decision = policy.settle(last_outcome=latest.outcome if latest else None,
                                 cancel_requested=job.cancel_requested)
        self.store.transition(job.id, decision.job_state, reason=decision.reason, now=now)
        self.log.info("daemon.recovered", job_id=job.id, child="none")

    def _job(self, job_id: int) -> Job:
        job = self.store.get(job_id)
        if job is None:
            raise LookupError(f"job {job_id} is not in the store")
        return job


def gpu_failure_in(run_dir: RunDir, tail_bytes: int = 64 * 1024) -> str | None:
    """A failed GPU command buffer reported at the end of the child's own output (child.log: what the framework
    printed outside the run log), as policy.gpu_failure reads it; None when there is none or no file."""
    text = _output_tail(run_dir, tail_bytes)
    return None if text is None else policy.gpu_failure(text)


def child_said(run_dir: RunDir, tail_bytes: int = 16 * 1024) -> str | None:
    """The child's own last word on stderr (a line starting "mtld: ", as it writes when it stops before it can
    write result.json: a run folder it cannot see or write, a newer attempt owning it), else None."""
    text = _output_tail(run_dir, tail_bytes) or ""
    said = [line for line in text.splitlines() if line.startswith("mtld: ")]
    return said[-1].removeprefix("mtld: ").strip()[:500] if said else None


def _output_tail(run_dir: RunDir, tail_bytes: int) -> str | None:
    """The end of child.log: the child's output (locally), or its Ray job's (appended when it ended)."""
    try:
        with open(run_dir.path / "child.log", "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - tail_bytes))
            return f.read().decode("utf-8", errors="replace")
    except OSError:
        return None


def describe(error: BaseException) -> str:
    """An error as one line: its type and message (a JobFileError's problems joined by "; ")."""
    text = "; ".join(str(error).splitlines())
    return text if isinstance(error, JobFileError) else f"{type(error).__name__}: {text}"
