"""The local executor: each run is a child process of the daemon, in its own session, on this machine."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import psutil

from mtld.disk import open_private
from mtld.executor import ExecutorPlugin, ExitStatus
from mtld.runs.child import CHILD_MODULE, module_argv

if TYPE_CHECKING:
    from mtld.store import Run


class ChildProcess:
    """A run child this process started: reaped with wait4 for status and rusage."""

    def __init__(self, popen: subprocess.Popen[bytes]):
        self.popen = popen
        self.pid = popen.pid
        self.ref = str(popen.pid)
        self.node: str | None = None
        self.waiting: str | None = None  # a local child starts at once
        self.status: ExitStatus | None = None

    def signal(self, signum: int) -> None:
        if self.status is None:
            _signal_group(self.pid, signum)

    def poll(self) -> ExitStatus | None:
        if self.status is None:
            pid, raw, rusage = os.wait4(self.pid, os.WNOHANG)
            if pid == 0:
                return None
            self.popen.returncode = os.waitstatus_to_exitcode(raw)  # keep Popen from reaping again
            max_rss = rusage.ru_maxrss * (1 if sys.platform == "darwin" else 1024)  # bytes on macOS, KiB on Linux
            if os.WIFSIGNALED(raw):
                self.status = ExitStatus(signal=os.WTERMSIG(raw), max_rss_bytes=max_rss)
            else:
                self.status = ExitStatus(code=os.WEXITSTATUS(raw), max_rss_bytes=max_rss)
        return self.status


class AdoptedProcess:
    """A run child left behind by an earlier daemon: not ours to wait for, so watch it."""

    def __init__(self, process: psutil.Process):
        self.process = process
        self.pid = process.pid
        self.ref = str(process.pid)
        self.node: str | None = None
        self.waiting: str | None = None  # a local child starts at once

    def signal(self, signum: int) -> None:
        if self.process.is_running():
            _signal_group(self.pid, signum)

    def poll(self) -> ExitStatus | None:
        if self.process.is_running() and self.process.status() != psutil.STATUS_ZOMBIE:
            return None
        return ExitStatus()  # its status went to its real parent; the run's result.json tells more


def _signal_group(pid: int, signum: int) -> None:
    """Signal the child's whole process group (it leads one), so helpers it forked stop too."""
    try:
        os.killpg(pid, signum)
    except ProcessLookupError:
        pass
    except PermissionError:
        os.kill(pid, signum)


class LocalExecutor:
    """Runs each attempt as `python -P -m mtld.train RUN_DIR` in its own session."""

    kind = "local"
    remote = False
    slots = 1  # one run at a time: runs on one machine compete for its memory

    def __init__(self, device: str = "cpu", python: str = sys.executable):
        self.device = device
        self.python = python

    def check(self) -> None:
        pass

    def start(self, run: Run, run_dir: Path) -> ChildProcess:
        # tracebacks from before logging starts, fatal errors
        output = os.fdopen(open_private(run_dir / "child.log", os.O_WRONLY | os.O_APPEND), "ab")
        try:
            popen = subprocess.Popen(
                module_argv(self.python, CHILD_MODULE, str(run_dir)),
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # own process group: a signal to the daemon's group misses it
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                close_fds=True,
            )
        finally:
            output.close()
        return ChildProcess(popen)

    def adopt(self, run: Run, run_dir: Path) -> AdoptedProcess | None:
        """The still-running child of an earlier daemon, if the run's pid really is that run."""
        if not run.pid or run.executor != self.kind:
            return None
        return find_child(run.pid, run_dir, run.started_at)


def find_child(pid: int, run_dir: Path, started_at: float) -> AdoptedProcess | None:
    """The process `pid`, if it is the run child `python -m mtld.train run_dir` started about `started_at`."""
    try:
        process = psutil.Process(pid)
        cmdline = process.cmdline()
        created = process.create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None
    is_that_run = CHILD_MODULE in cmdline and str(run_dir) in cmdline and created <= started_at + 60
    return AdoptedProcess(process) if is_that_run else None


class LocalPlugin(ExecutorPlugin):
    """Runs train here, one at a time, on the device `train.device` picks."""

    kind = "local"

    def executor(self) -> LocalExecutor:
        return LocalExecutor(device=self.device)
