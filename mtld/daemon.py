"""The daemon: runs the queue one job at a time, unattended.

An APScheduler BlockingScheduler ticks every `poll_interval_s`; a tick
supervises the running child (exit, cancel, pause --now) or starts the next
eligible job. The queue itself is the SQLite store. Signal handlers only set
flags; SIGUSR1 (sent by the CLI) and stop signals also make the next tick run
at once. The daemon never imports torch: each run is a child process.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, TextIO

from apscheduler.events import EVENT_JOB_ERROR, JobExecutionEvent
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers import SchedulerNotRunningError
from apscheduler.schedulers.blocking import BlockingScheduler

from mtld import __version__, policy, schedule
from mtld.executor import ExitStatus, LocalExecutor, RunHandle, wait_for_exit
from mtld.family import family, family_run, next_size, resolve_device
from mtld.estimating import launch_history
from mtld.jobs import fired_job_name
from mtld.jobspec import spec_from_json
from mtld.logs import format_event, get_logger, last_event
from mtld.memory import Reading, make_probe
from mtld.pidfile import PidFile
from mtld.platform.power import SleepInhibitor, notify, on_battery
from mtld.rundir import Launch, RunDir
from mtld.settings import Settings
from mtld.store import Run, Store

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
FORCED_STOP_GRACE_S = 5.0
RESULT_FIGURES = (
    "step", "total_steps", "micro_batch_start", "micro_batch_end", "scaled_down", "oom_count",
    "peak_memory_bytes", "budget_bytes", "samples_per_s", "tokens_per_s", "duration_s", "device", "best_score",
    "train_seconds", "samples", "timing", "resumed_from_step",
)


@dataclass
class ActiveRun:
    job_id: int
    run: Run
    handle: RunHandle
    run_dir: RunDir
    inhibitor: SleepInhibitor | None = None
    stop_reason: str | None = None  # why we asked the child to stop, if we did
    last_progress: dict[str, Any] | None = field(default=None, repr=False)


class Daemon:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        *,
        executor: LocalExecutor | None = None,
        exit_when_idle: bool = False,
        console: TextIO | None = None,
    ):
        self.settings = settings
        self.store = store
        self.executor = executor or LocalExecutor()
        self.exit_when_idle = exit_when_idle
        self.console = console
        self.log = get_logger()
        self.active: ActiveRun | None = None
        self.stop_signals = 0
        self.wake = threading.Event()
        self.finished = False
        self.deferred_because: str | None = None
        self.scheduler: BlockingScheduler | None = None
        self.probe = make_probe(settings.memory)
        self.windows = settings.schedule.parsed()

    # ------------------------------------------------------------ lifecycle

    def handle_signal(self, signum: int, frame: object = None) -> None:
        """Only set flags: the next tick (woken now) does the work."""
        if signum in STOP_SIGNALS:
            self.stop_signals += 1
        self.wake.set()

    def run(self) -> int:
        """Serve until stopped (or idle, with exit_when_idle). Raises AlreadyRunning."""
        pidfile = PidFile(self.settings.pid_file)
        pidfile.acquire()
        # SIGUSR1: the CLI queued or changed something. SIGCHLD: a run ended. Either way: tick now.
        for signum in (*STOP_SIGNALS, signal.SIGUSR1, signal.SIGCHLD):
            signal.signal(signum, self.handle_signal)
        try:
            self.log.info("daemon.started", version=__version__, state_dir=str(self.settings.state_dir),
                          poll_interval_s=self.settings.daemon.poll_interval_s, exit_when_idle=self.exit_when_idle)
            self.reconcile(now=time.time())
            self.scheduler = BlockingScheduler(
                executors={"default": ThreadPoolExecutor(max_workers=1)},  # one tick at a time
                job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
                timezone=timezone.utc,
            )
            self.scheduler.add_listener(self._on_job_error, EVENT_JOB_ERROR)
            self.scheduler.add_job(self.tick, "interval", seconds=self.settings.daemon.poll_interval_s,
                                   id="tick", next_run_time=datetime.now(timezone.utc))
            threading.Thread(target=self._waker, name="mtld-waker", daemon=True).start()
            self.scheduler.start()  # blocks until finish()
        finally:
            self.finished = True
            self.wake.set()
            pidfile.release()
            self.log.info("daemon.stopped")
        return 0

    def _waker(self) -> None:
        """Turn a signal's flag into an immediate tick (the handler itself must not touch the scheduler)."""
        while True:
            self.wake.wait()
            self.wake.clear()
            if self.finished:
                return
            try:
                self.scheduler.modify_job("tick", next_run_time=datetime.now(timezone.utc))
            except (JobLookupError, SchedulerNotRunningError, AttributeError):
                pass

    def _on_job_error(self, event: JobExecutionEvent) -> None:
        self.log.error("daemon.tick_failed", exc_info=(type(event.exception), event.exception, event.exception.__traceback__))

    def finish(self, reason: str) -> None:
        self.log.info("daemon.stopping", reason=reason)
        self.finished = True
        self.wake.set()
        if self.scheduler is not None:
            try:
                self.scheduler.shutdown(wait=False)
            except SchedulerNotRunningError:
                pass

    # ------------------------------------------------------------ the tick

    def tick(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        if self.stop_signals:
            self.stop(now)
            return
        self.fire_schedules(now)
        if self.active is not None:
            self.supervise(now)
        if self.store.get_flag("pause_now") == "1":  # seen: the running child (if any) was asked to stop
            self.store.set_flag("pause_now", None)
        if self.active is None:
            if self.store.get_flag("paused") != "1":
                self.dispatch(now)
            if self.active is None and self.exit_when_idle and self._queue_is_empty():
                self.finish("idle")

    def _queue_is_empty(self) -> bool:
        counts = self.store.counts()
        return counts.get("queued", 0) == 0 and counts.get("running", 0) == 0

    def dispatch(self, now: float) -> None:
        """Start the next eligible job, if any, as a child process."""
        if self.settings.daemon.hold_on_battery and on_battery():
            self._defer("on_battery", "the machine runs on battery (daemon.hold_on_battery)")
            return
        local = datetime.fromtimestamp(now).astimezone()
        if not schedule.inside(self.windows, local):
            if self.store.next_eligible(now=now) is not None:
                opens = schedule.next_opening(self.windows, local)
                self._defer("outside_window", f"outside the run windows; the next opens at {opens:%a %H:%M}",
                            opens_at=opens.isoformat())
            return
        job = self.store.next_eligible(now=now)
        if job is None:
            self.deferred_because = None
            return
        spec = spec_from_json(job.spec_json)
        fam = family(spec, resolve_device(self.settings.train.device))
        history = [family_run(r) for r in self.store.family_runs(fam)]
        pinned = None if job.batch_size == "auto" else int(job.batch_size)
        size, why = next_size(self.store, self.settings, job, history)
        reading = self._read_pressure()
        placement = policy.place_run(
            size, pressure=reading.level.value if reading else "normal",
            available_bytes=reading.available_bytes if reading else None,
            peaks=policy.peaks_by_size(history), pinned=pinned is not None,
        )
        if placement.micro_batch is None:
            self._defer(placement.deferred, placement.reason, job_id=job.id)
            return
        self.deferred_because = None
        micro_batch = placement.micro_batch
        why = f"{why}; {placement.reason}" if placement.reason else why
        log = self.log.bind(job_id=job.id)
        log.info("policy.decided", micro_batch=micro_batch, reason=why, family=fam,
                 pressure=reading.level.value if reading else None)

        run = self.store.start_run(job.id, micro_batch=micro_batch, family=fam, reason=why, now=now)
        log = log.bind(run_id=run.id)
        run_dir = RunDir(job.run_dir)
        run_dir.write_job(spec)
        run_dir.write_launch(Launch(
            micro_batch=micro_batch, device=self.settings.train.device, job_id=job.id, run_id=run.id,
            memory_fraction=self.settings.memory.budget_fraction, progress_every_s=self.settings.train.progress_every_s,
            memory=self.settings.memory.model_dump(mode="json"),
            timing_prior=launch_history(self.store, fam, self.settings.state_dir / "estimates"),
            threads=self.settings.train.threads,
        ))
        try:
            handle = self.executor.start(run_dir.path)
        except OSError as e:
            self.store.finish_run(run.id, outcome="crashed", now=now)
            self.store.transition(job.id, "failed", reason=f"could not start the run: {e}", last_error=str(e), now=now)
            log.error("run.start_failed", error=str(e))
            return
        self.store.set_run_pid(run.id, handle.pid)
        self.active = ActiveRun(job.id, run, handle, run_dir)
        if self.settings.daemon.prevent_sleep:
            inhibitor = SleepInhibitor()
            if inhibitor.start(handle.pid, f"mtld: training job {job.id} ({job.name})"):
                self.active.inhibitor = inhibitor
        log.info("run.launched", pid=handle.pid, attempt=run.attempt, micro_batch=micro_batch,
                 run_dir=str(run_dir.path), sleep_inhibited=self.active.inhibitor is not None)

    def supervise(self, now: float) -> None:
        active = self.active
        status = active.handle.poll()
        if status is not None:
            self.record_exit(active, status, now)
            return
        if active.stop_reason is None:
            if self.store.get(active.job_id).cancel_requested:
                self.ask_to_stop(active, "cancel")
            elif self.store.get_flag("pause_now") == "1":
                self.ask_to_stop(active, "pause")
            elif (self.settings.schedule.at_window_end == "checkpoint"
                  and not schedule.inside(self.windows, datetime.fromtimestamp(now).astimezone())):
                self.ask_to_stop(active, "window_end")
        self._echo_progress(active)

    def fire_schedules(self, now: float) -> None:
        """Submit a job for every schedule that is due; missed firings coalesce into one."""
        local = datetime.fromtimestamp(now).astimezone()
        for recurring in self.store.list_schedules():
            due = datetime.fromtimestamp(recurring.next_fire_at).astimezone()
            fire, next_at = schedule.firing(recurring.cron, due, local)
            if not fire:
                continue
            job = self.store.fire_schedule(recurring.id, due_at=recurring.next_fire_at, next_fire_at=next_at.timestamp(),
                                           name=fired_job_name(recurring.name, due), now=now)
            if job is not None:
                self.log.info("schedule.fired", schedule_id=recurring.id, job_id=job.id, due_at=due.isoformat(),
                              missed=local - due > timedelta(minutes=1), next_fire_at=next_at.isoformat())

    def ask_to_stop(self, active: ActiveRun, reason: str) -> None:
        """SIGTERM: the child finishes its micro-step, checkpoints and exits 75."""
        active.stop_reason = reason
        active.handle.signal(signal.SIGTERM)
        self.log.info("run.stop_requested", job_id=active.job_id, run_id=active.run.id, reason=reason)

    def stop(self, now: float) -> None:
        """Forward the stop to the child, wait (bounded) for its checkpoint, requeue, exit."""
        active = self.active
        if active is not None:
            if active.stop_reason is None:
                self.ask_to_stop(active, "shutdown")
            deadline = time.monotonic() + self.settings.daemon.stop_timeout_s
            status = None
            while status is None and time.monotonic() < deadline and self.stop_signals < 2:
                status = wait_for_exit(active.handle, 0.2)
            forced = status is None
            if forced:  # out of time, or a second signal: the last periodic checkpoint will have to do
                active.handle.signal(signal.SIGKILL)
                status = wait_for_exit(active.handle, FORCED_STOP_GRACE_S) or ExitStatus(signal=signal.SIGKILL)
            self.record_exit(active, status, time.time(), forced_stop=forced)
        self.finish("signal")

    # ------------------------------------------------------------ exits

    def record_exit(self, active: ActiveRun, status: ExitStatus, now: float, *, forced_stop: bool = False) -> None:
        self.active = None
        if active.inhibitor is not None:
            active.inhibitor.stop()
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
                message=(result or {}).get("message"), now=now,
            )
        self._apply(job.id, active.run, status, decision, result, now, stop_reason=active.stop_reason)

    def _apply(self, job_id: int, run: Run, status: ExitStatus, decision: policy.ExitDecision,
               result: dict[str, Any] | None, now: float, stop_reason: str | None = None) -> None:
        figures = {k: result[k] for k in RESULT_FIGURES if result and k in result}
        if status.max_rss_bytes:
            figures["max_rss_bytes"] = status.max_rss_bytes
        self.store.finish_run(run.id, outcome=decision.outcome, exit_code=status.code, signal=status.signal,
                              micro_batch_end=(result or {}).get("micro_batch_end"), figures=figures, now=now)
        job = self.store.transition(
            job_id, decision.job_state, reason=decision.reason, now=now,
            last_error=decision.reason if decision.job_state == "failed" else None,
            next_attempt_at=decision.retry_at,
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

    def reconcile(self, now: float) -> None:
        """After a crash or SIGKILL of an earlier daemon: settle every run still marked running."""
        for run in self.store.active_runs():
            job = self.store.get(run.job_id)
            run_dir = RunDir(job.run_dir)
            adopted = self.executor.adopt(run.pid, run_dir.path, run.started_at) if run.pid else None
            action = "gone"
            if adopted is not None:  # still training: stop it cleanly, then requeue
                action = "stopped"
                adopted.signal(signal.SIGTERM)
                if wait_for_exit(adopted, self.settings.daemon.stop_timeout_s) is None:
                    adopted.signal(signal.SIGKILL)
                    wait_for_exit(adopted, FORCED_STOP_GRACE_S)
            result = fresh_result(run_dir, run)
            if result and result.get("outcome") == "succeeded":
                decision = policy.ExitDecision("succeeded", "succeeded", "finished while no daemon was watching")
                status = ExitStatus(code=0)
            else:
                decision = policy.ExitDecision("lost", "queued", f"recovered at daemon start (child {action}); "
                                               "it resumes from its last checkpoint")
                status = ExitStatus(code=(result or {}).get("exit_code"))
            self.log.info("daemon.recovered", job_id=job.id, run_id=run.id, pid=run.pid, child=action)
            self._apply(job.id, run, status, decision, result, now)
        for job in self.store.list_jobs(["running"]):  # its run was recorded, its move was not
            if not any(r.ended_at is None for r in self.store.runs_for(job.id)):
                self.store.transition(job.id, "queued", reason="recovered at daemon start", now=now)
                self.log.info("daemon.recovered", job_id=job.id, child="none")

    # ------------------------------------------------------------ helpers

    def _defer(self, reason: str, message: str, **fields: Any) -> None:
        if self.deferred_because != reason:  # log changes, not every tick
            self.log.info("run.deferred", reason=reason, message=message, **fields)
        self.deferred_because = reason

    def _read_pressure(self) -> Reading | None:
        """The probe's reading now; None (and a log line) if it cannot be read."""
        try:
            return self.probe.read()
        except Exception as e:  # a broken probe must not stop the queue
            self.log.warning("memory.sample_failed", what="probe", error=f"{type(e).__name__}: {e}")
            return None

    def _echo_progress(self, active: ActiveRun) -> None:
        """For a person watching the daemon's terminal: the child's latest progress line."""
        if self.console is None:
            return
        event = last_event(active.run_dir.log_file, {"step.progress"}, scan_limit=200)
        if event is not None and event != active.last_progress:
            active.last_progress = event
            self.console.write(format_event(event) + "\n")
            self.console.flush()


def fresh_result(run_dir: RunDir, run: Run) -> dict[str, Any] | None:
    """The child's result.json if this attempt wrote it (not a leftover of an earlier one)."""
    result = run_dir.read_result()
    if result is None:
        return None
    if result.get("run_id") is not None:
        return result if result["run_id"] == run.id else None
    return result if run_dir.result_file.stat().st_mtime >= run.started_at else None


def serve(settings: Settings, *, exit_when_idle: bool = False, console: TextIO | None = sys.stderr) -> int:
    with Store(settings.db_path) as store:
        return Daemon(settings, store, exit_when_idle=exit_when_idle, console=console).run()
