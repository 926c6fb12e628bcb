"""The daemon: runs the queue unattended, as many runs at once as its executor has slots (one on this machine).

One plain loop: wait on the wake-up (a timeout of `poll_interval_s`), then
`tick(now)`. A tick supervises the running runs (exit, cancel, pause --now,
window end) and, while a slot is free, has the next eligible job started
(mtld.daemon.starter: where it goes, and its launch). The queue itself is the SQLite
store. Signal handlers only count stop signals; every signal (SIGTERM/SIGINT,
SIGUSR1 from the CLI, SIGCHLD when a run ends) also ends the wait at once,
through `signal.set_wakeup_fd` (no lock is ever taken in a handler). The
daemon never imports torch: each run is a child process, here or on a cluster (mtld.executor). APScheduler supplies
only the calendar arithmetic (mtld.decide.schedule), not threads.

Nothing accepted may stall the queue: a failure while starting, recording or
finishing a run fails that run or its job (the reason in `last_error`), never
the tick and never the start-up; each idle tick settles a job marked running
that has no live run (`reconcile`), as the start-up does. Only a store that
cannot be used at all (sqlite3.OperationalError: locked, full, I/O) defers
the job instead (`run.deferred`, reason `store_unavailable`): the next tick
tries again.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TextIO

from mtld import __version__, disk
from mtld.config.settings import FORCED_STOP_GRACE_S, Settings
from mtld.daemon.awake import WindowAwake
from mtld.daemon.diskguard import DiskGuard
from mtld.daemon.ledger import ActiveRun, RunLedger, describe
from mtld.daemon.recurring import Recurring
from mtld.daemon.starter import Deferral, Starter
from mtld.daemon.wakeup import Wakeup
from mtld.daemon.watchdog import Watchdog
from mtld.decide import schedule
from mtld.executor import PROBLEM_FLAG, Executor, ExitStatus, wait_for_exit
from mtld.executor.registry import make_executor
from mtld.logs.events import format_event, get_logger, last_event
from mtld.memory import Probe, make_probe
from mtld.platform.pidfile import PidFile
from mtld.platform.power import notify, on_battery
from mtld.report.nightly import NightReport
from mtld.store import Store

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
NIGHT_PAGE_WAIT_S = 120.0  # --exit-when-idle waits this long for the night's page (a stop signal does not wait)
MAX_FAILED_TICKS = 10  # in a row: then the daemon exits 1 rather than fail every poll interval forever


class Daemon:
    """The queue's one loop. Tests drive `tick(now)` with their own clock and a fake executor.
    How a run's end is recorded, and runs without a live child are settled: its `ledger` (mtld.daemon.ledger)."""

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
        night: NightReport | None = None,
    ):
        self.settings = settings
        self.store = store
        self.executor = executor or make_executor(settings)
        self.probe = probe or make_probe(settings.memory)
        self.clock = clock
        self.exit_when_idle = exit_when_idle
        self.console = console
        self.log = get_logger()
        self.active: list[ActiveRun] = []
        self.stop_signals = 0
        self.wakeup = Wakeup()
        self.finished = False
        self.exit_code = 0
        self.defer = Deferral(self.log)
        self.windows = settings.schedule.parsed()
        self.schedules = Recurring(store, self.log)
        self.disk = DiskGuard(settings, store, self.log, device=self.executor.device, free_bytes=free_bytes,
                              notify=notify if settings.daemon.notify else None)
        self.awake = WindowAwake(settings, self.log)
        self.watchdog = Watchdog(settings, self.log, remote=self.executor.remote)
        self.night = night  # writes the night's page when the queue empties after runs (`serve` makes one)
        self.ledger = RunLedger(settings, store, self.executor, self.log,
                                make_executor=lambda kind: make_executor(settings, kind), on_hold=self.disk.held,
                                notify=notify if settings.daemon.notify else None)
        self.starter = Starter(settings, store, self.executor, self.probe, disk=self.disk, watchdog=self.watchdog,
                               ledger=self.ledger, defer=self.defer, log=self.log)

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
            try:
                self.store.set_flag(PROBLEM_FLAG, None)  # an earlier daemon's: this one looks again
                self.reconcile(self.clock())
            except Exception as e:  # the store may be out for now: each idle tick settles what is left
                self.log.error("daemon.recover_failed", error=describe(e), exc_info=e)
            self.loop()
        finally:
            if self.night is not None:
                self.night.close(0.0 if self.stop_signals else NIGHT_PAGE_WAIT_S)
            self.wakeup.uninstall()
            self.awake.release("the daemon stopped")
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            pidfile.release()
            self.log.info("daemon.stopped")
        return self.exit_code

    def loop(self) -> None:
        """Tick, then wait for a signal, a wake-up or the poll interval; until `finish`. A tick that fails is
        tried again at the next one; MAX_FAILED_TICKS failures in a row end the daemon with status 1 instead
        of a spin (launchd's and systemd's own throttling then apply, and `mtld doctor` says why)."""
        failed = 0
        while not self.finished:
            try:
                self.tick(self.clock())
                failed = 0
            except Exception as e:  # a bug or a broken store must not end the daemon at once
                failed += 1
                self.log.error("daemon.tick_failed", error=f"{type(e).__name__}: {e}", in_a_row=failed, exc_info=e)
                if failed >= MAX_FAILED_TICKS:
                    self.log.error("daemon.giving_up", ticks=failed, error=f"{type(e).__name__}: {e}")
                    self.exit_code = 1
                    self.finish("ticks_failing")
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
        self.schedules.fire_due(now)
        for active in list(self.active):
            self.supervise(active, now)
        if self.store.get_flag("pause_now") == "1":  # seen: the running runs (if any) were asked to stop
            self.store.set_flag("pause_now", None)
        window_wait = None  # when the run window a due job waits for opens (the machine stays awake for it)
        if len(self.active) < self.executor.slots:
            self.reconcile(now, at_start=False)  # a job whose start or end could not be recorded: settle it now
            self.disk.release_holds(now)
            if self.store.get_flag("paused") != "1":
                window_wait = self.dispatch(now)
        self._look_back(now)
        if not self.active and self.exit_when_idle and self._queue_is_empty():
            self.finish("idle")
        self.awake.update(window_wait if not self.finished else None, now)

    def _look_back(self, now: float) -> None:
        """When the queue has just emptied after a night's work, have its page written (mtld.report.nightly);
        a failure there is logged and never fails the tick."""
        if self.night is None:
            return
        try:
            self.night.observe(busy=bool(self.active) or not self._queue_is_empty(), running=bool(self.active), now=now)
        except Exception as e:
            self.log.warning("report.failed", error=describe(e))

    def _queue_is_empty(self) -> bool:
        """Nothing runs and nothing queued could start without a person: a job on hold waits for a condition
        or `mtld retry`, so `--exit-when-idle` does not wait for it."""
        if self.store.counts().get("running", 0):
            return False
        return all(job.hold is not None for job in self.store.list_jobs(["queued"]))

    def dispatch(self, now: float) -> float | None:
        """Start eligible jobs, in priority order, while a slot is free; stop at the first that must wait.
        Returns when the run window opens that a due job waits for, if one does."""
        while len(self.active) < self.executor.slots:
            started = len(self.active)
            window_wait = self.dispatch_one(now)
            if len(self.active) == started:
                return window_wait
        return None

    def dispatch_one(self, now: float) -> float | None:
        """Start the next eligible job, if any (or: when the window opens that it waits for)."""
        if self.settings.daemon.hold_on_battery and on_battery():
            self.defer("on_battery", "the machine runs on battery (daemon.hold_on_battery)")
            return None
        local = datetime.fromtimestamp(now).astimezone()
        if not schedule.inside(self.windows, local):
            if self.store.next_eligible(now=now) is None:
                return None
            opens = schedule.next_opening(self.windows, local)
            assert opens is not None  # outside every window: there are windows, so one opens next
            self.defer("outside_window", f"outside the run windows; the next opens at {opens:%a %H:%M}",
                        opens_at=opens.isoformat())
            return opens.timestamp()
        job = self.store.next_eligible(now=now)
        if job is None:
            self.defer.clear()
            return None
        active = self.starter.start(job, now)
        if active is not None:
            self.active.append(active)
        return None

    def record_exit(self, active: ActiveRun, status: ExitStatus, now: float, *, forced_stop: bool = False) -> None:
        """The run ended: stop watching it and have the ledger record it (after a pressure interrupt the next
        start waits for the level to stay normal: the starter's `calm_since` starts again)."""
        if active in self.active:
            self.active.remove(active)
        recorded = self.ledger.record_exit(active, status, now, forced_stop=forced_stop)
        if recorded.pressure_interrupt:
            self.starter.pressure_interrupted()

    def reconcile(self, now: float, *, at_start: bool = True) -> None:
        """Have the ledger settle jobs marked running with no live run here; watch again what it adopts."""
        self.active.extend(self.ledger.reconcile(now, self.active, at_start=at_start))

    def supervise(self, active: ActiveRun, now: float) -> None:
        try:
            status = active.handle.poll()
        except ChildProcessError:  # reaped elsewhere: gone, how it ended unknown (its result.json may say)
            status = ExitStatus()
        except Exception as e:  # an executor's bug or an answer of another shape: this run, not the tick
            if not active.poll_failed:
                self.log.error("run.poll_failed", job_id=active.job_id, run_id=active.run.id, error=describe(e),
                               exc_info=e)
            active.poll_failed = True
            return
        if active.handle.node and active.handle.node != active.node:
            self.ledger.record_node(active, active.handle.node)
        waiting = getattr(active.handle, "waiting", None)  # a plugin's handle from before `waiting` has none
        if waiting != active.waiting:
            self.ledger.record_waiting(active, waiting)
        if status is not None:
            self.record_exit(active, status, now)
            return
        if active.stop_reason is not None:
            self.watchdog.kill_if_overdue(active, now)
        elif (stall := self.watchdog.stalled(active, now)) is not None:
            self.log.warning("run.stalled", job_id=active.job_id, run_id=active.run.id, phase=stall.phase,
                             quiet_s=round(stall.quiet_s, 1), allowance_s=round(stall.allowance_s, 1))
            self.ask_to_stop(active, "stalled", now, detail=stall.text())
        if active.stop_reason is None:
            job = self.store.get(active.job_id)
            if job is None or job.cancel_requested:
                self.ask_to_stop(active, "cancel", now)
            elif self.store.get_flag("pause_now") == "1":
                self.ask_to_stop(active, "pause", now)
            elif (self.settings.schedule.at_window_end == "checkpoint"
                  and not schedule.inside(self.windows, datetime.fromtimestamp(now).astimezone())):
                self.ask_to_stop(active, "window_end", now)
        self._echo_progress(active)

    def ask_to_stop(self, active: ActiveRun, reason: str, now: float, *, detail: str | None = None) -> None:
        """SIGTERM: the child finishes its micro-step, checkpoints and exits 75 (the watchdog kills it if not)."""
        active.stop_reason, active.stop_detail, active.stop_asked_at = reason, detail, now
        active.handle.signal(signal.SIGTERM)
        self.log.info("run.stop_requested", job_id=active.job_id, run_id=active.run.id, reason=reason)

    def stop(self, now: float) -> None:
        """Forward the stop to every run, wait (bounded) for their checkpoints, requeue, exit. A run on a
        cluster still stopping when the time is up is left to finish its checkpoint there: the next daemon
        adopts it and records its end."""
        for active in self.active:
            if active.stop_reason is None:
                self.ask_to_stop(active, "shutdown", now)
        deadline = time.monotonic() + self.settings.daemon.stop_timeout_s  # real seconds, whatever the clock
        pending = list(self.active)
        while pending and time.monotonic() < deadline and self.stop_signals < 2:
            for active in list(pending):
                status = wait_for_exit(active.handle, 0.2 / len(pending))
                if status is not None:
                    pending.remove(active)
                    self.record_exit(active, status, self.clock())
        for active in pending:  # out of time, or a second signal
            if active.handle.pid is None:
                self.log.info("run.left_running", job_id=active.job_id, run_id=active.run.id, ref=active.handle.ref)
                continue
            active.handle.signal(signal.SIGKILL)  # the last periodic checkpoint will have to do
            status = wait_for_exit(active.handle, FORCED_STOP_GRACE_S) or ExitStatus(signal=signal.SIGKILL)
            self.record_exit(active, status, self.clock(), forced_stop=True)
        self.finish("signal")

    # ------------------------------------------------------------ helpers

    def _echo_progress(self, active: ActiveRun) -> None:
        """For a person watching the daemon's terminal: the child's latest progress line."""
        if self.console is None:
            return
        try:
            event = last_event(active.run_dir.log_file, {"step.progress"}, scan_limit=200)
        except OSError:
            return
        if event is not None and event != active.last_progress:
            active.last_progress = event
            self.console.write(format_event(event) + "\n")
            self.console.flush()


def serve(settings: Settings, *, exit_when_idle: bool = False, console: TextIO | None = sys.stderr) -> int:
    """Open the store (refused in one line when damaged: StoreDamaged), keep a backup of it, and run."""
    os.umask(0o077)  # whatever the daemon creates is user-only (mtld.disk also sets modes explicitly)
    with Store(settings.db_path) as store:
        try:
            get_logger().info("store.backed_up", path=str(store.db.backup()))
        except (OSError, sqlite3.Error) as e:  # a full disk: the queue still runs, without a fresh backup
            get_logger().warning("store.backup_failed", error=describe(e))
        night = NightReport(settings, get_logger(), notify=notify if settings.daemon.notify else None)
        return Daemon(settings, store, exit_when_idle=exit_when_idle, console=console, night=night).run()
