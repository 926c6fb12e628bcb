"""The daemon: runs the queue one job at a time, unattended.

One plain loop: wait on the wake-up (a timeout of `poll_interval_s`), then
`tick(now)`. A tick supervises the running child (exit, cancel, pause --now,
window end) or starts the next eligible job. The queue itself is the SQLite
store. Signal handlers only count stop signals; every signal (SIGTERM/SIGINT,
SIGUSR1 from the CLI, SIGCHLD when a run ends) also ends the wait at once,
through `signal.set_wakeup_fd` (no lock is ever taken in a handler). The
daemon never imports torch: each run is a child process. APScheduler supplies
only the calendar arithmetic (mtld.schedule), not threads.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

from mtld import __version__, disk, policy, schedule
from mtld.diskguard import DiskGuard
from mtld.executor import Executor, ExitStatus, LocalExecutor, RunHandle, wait_for_exit
from mtld.family import earlier_runs, family, family_history, pinned_size, resolve_device, start_size
from mtld.history import family_figures, probe_dir
from mtld.jobs import fired_job_name
from mtld.jobspec import spec_from_json
from mtld.logs import format_event, get_logger, last_event
from mtld.memory import Probe, Reading, make_probe
from mtld.pidfile import PidFile
from mtld.platform.power import SleepInhibitor, notify, on_battery
from mtld.rundir import RunDir, RunDirRefused
from mtld.runfiles import RunFileError, RunResult, launch_for
from mtld.settings import Settings
from mtld.store import Run, Store
from mtld.wakeup import Wakeup

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
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


class Daemon:
    """The queue's one loop. Tests drive `tick(now)` with their own clock and a fake executor."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        *,
        executor: Executor | None = None,
        probe: Probe | None = None,
        clock: Callable[[], float] = time.time,
        exit_when_idle: bool = False,
        console: TextIO | None = None,
        free_bytes: Callable[[Path], int] = disk.free_bytes,
    ):
        self.settings = settings
        self.store = store
        self.executor = executor or LocalExecutor()
        self.probe = probe or make_probe(settings.memory)
        self.clock = clock
        self.exit_when_idle = exit_when_idle
        self.console = console
        self.log = get_logger()
        self.active: ActiveRun | None = None
        self.stop_signals = 0
        self.wakeup = Wakeup()
        self.finished = False
        self.deferred_because: str | None = None
        self.windows = settings.schedule.parsed()
        self.disk = DiskGuard(settings, store, self.log, free_bytes=free_bytes,
                              notify=notify if settings.daemon.notify else None)

    # ------------------------------------------------------------ lifecycle

    def handle_signal(self, signum: int, frame: object = None) -> None:
        """Count stop signals; that is all (the wake-up fd has already ended the loop's wait)."""
        if signum in STOP_SIGNALS:
            self.stop_signals += 1

    def run(self) -> int:
        """Serve until stopped (or idle, with exit_when_idle). Raises AlreadyRunning."""
        pidfile = PidFile(self.settings.pid_file)
        pidfile.acquire()
        previous = {s: signal.getsignal(s) for s in (*STOP_SIGNALS, signal.SIGUSR1, signal.SIGCHLD)}
        # SIGUSR1: the CLI queued or changed something. SIGCHLD: a run ended. Either way: tick now.
        for signum in previous:
            signal.signal(signum, self.handle_signal)
        self.wakeup.install()
        try:
            self.log.info("daemon.started", version=__version__, state_dir=str(self.settings.state_dir),
                          poll_interval_s=self.settings.daemon.poll_interval_s, exit_when_idle=self.exit_when_idle)
            self.reconcile(now=self.clock())
            self.loop()
        finally:
            self.wakeup.uninstall()
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            pidfile.release()
            self.log.info("daemon.stopped")
        return 0

    def loop(self) -> None:
        """Tick, then wait for a signal, a wake-up or the poll interval; until `finish`."""
        while not self.finished:
            try:
                self.tick(self.clock())
            except Exception as e:  # a bug or a broken store must not end the daemon; the next tick tries again
                self.log.error("daemon.tick_failed", error=f"{type(e).__name__}: {e}", exc_info=e)
            if not self.finished:
                self.wakeup.wait(self.settings.daemon.poll_interval_s)

    def finish(self, reason: str) -> None:
        self.log.info("daemon.stopping", reason=reason)
        self.finished = True
        self.wakeup.set()

    # ------------------------------------------------------------ the tick

    def tick(self, now: float) -> None:
        if self.stop_signals:
            self.stop(now)
            return
        self.disk.rotate_log()
        self.fire_schedules(now)
        if self.active is not None:
            self.supervise(now)
        if self.store.get_flag("pause_now") == "1":  # seen: the running child (if any) was asked to stop
            self.store.set_flag("pause_now", None)
        if self.active is None:
            self.disk.release_holds(now)
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
        if self.disk.hold_if_short(job, spec, fam, now):  # the next tick looks at the rest of the queue
            return
        reading = self._read_pressure()
        start = start_size(self.settings, family_history(self.store, fam), pinned=pinned_size(job.batch_size),
                           earlier=earlier_runs(self.store, job), reading=reading)
        if start.micro_batch is None:
            self._defer(start.deferred, start.reason, job_id=job.id)
            return
        self.deferred_because = None
        micro_batch = start.micro_batch
        log = self.log.bind(job_id=job.id)
        log.info("policy.decided", micro_batch=micro_batch, reason=start.reason, family=fam,
                 pressure=reading.level.value if reading else None)

        run = self.store.start_run(job.id, micro_batch=micro_batch, family=fam, reason=start.reason, now=now)
        log = log.bind(run_id=run.id)
        run_dir = RunDir(job.run_dir)
        try:  # a folder mtld did not make for this job is never used: nothing in it is loaded
            run_dir.claim({"job_id": job.id, "store": str(self.settings.db_path)},
                          adopt_unmarked=run.attempt > 1)  # an earlier attempt ran there (an older mtld)
        except RunDirRefused as e:
            self.store.finish_run(run.id, outcome="bad_input", now=now)
            self.store.transition(job.id, "failed", reason=str(e), last_error=str(e), now=now)
            log.error("run.start_failed", error=str(e))
            return
        run_dir.write_job(spec)
        history = family_figures(self.store, fam, probe_dir(self.settings))
        run_dir.write_launch(launch_for(self.settings, micro_batch=micro_batch, job_id=job.id, run_id=run.id,
                                        history=history))
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
            deadline = time.monotonic() + self.settings.daemon.stop_timeout_s  # real seconds, whatever the clock
            status = None
            while status is None and time.monotonic() < deadline and self.stop_signals < 2:
                status = wait_for_exit(active.handle, 0.2)
            forced = status is None
            if forced:  # out of time, or a second signal: the last periodic checkpoint will have to do
                active.handle.signal(signal.SIGKILL)
                status = wait_for_exit(active.handle, FORCED_STOP_GRACE_S) or ExitStatus(signal=signal.SIGKILL)
            self.record_exit(active, status, self.clock(), forced_stop=forced)
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
                message=result.message if result else None, now=now,
            )
        self._apply(job.id, active.run, status, decision, result, now, stop_reason=active.stop_reason)

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
        if decision.hold:
            self.disk.held(job, decision.hold)

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
            if result and result.outcome == "succeeded":
                decision = policy.ExitDecision("succeeded", "succeeded", "finished while no daemon was watching")
                status = ExitStatus(code=0)
            else:
                decision = policy.ExitDecision("lost", "queued", f"recovered at daemon start (child {action}); "
                                               "it resumes from its last checkpoint")
                status = ExitStatus(code=result.exit_code if result else None)
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


def fresh_result(run_dir: RunDir, run: Run) -> RunResult | None:
    """The child's result.json if this attempt wrote it (not a leftover of an earlier one), and
    this mtld can read it; a result it cannot read counts as none (the exit status still decides)."""
    try:
        result = run_dir.read_result()
    except (RunFileError, OSError):
        return None
    if result is None:
        return None
    if result.run_id is not None:
        return result if result.run_id == run.id else None
    return result if run_dir.result_file.stat().st_mtime >= run.started_at else None


def serve(settings: Settings, *, exit_when_idle: bool = False, console: TextIO | None = sys.stderr) -> int:
    os.umask(0o077)  # whatever the daemon creates is user-only (mtld.disk also sets modes explicitly)
    with Store(settings.db_path) as store:
        return Daemon(settings, store, exit_when_idle=exit_when_idle, console=console).run()
