"""Executors start, signal and watch runs: a local child process, or a job on a Ray cluster.

The daemon talks to a run only through `RunHandle` (signal, poll) and to an
executor only through `Executor` (start, adopt), so every executor hands the
same `python -m mtld.train RUN_DIR` entry point to whatever runs it. A run is
judged by how it exits (mtld.runs.exitcodes); its run folder holds everything else.

- `LocalExecutor` (mtld.executor.local): a child process of the daemon.
- `RayExecutor` (mtld.executor.ray.jobs): a Ray job, through Ray's Jobs API
  (`pip install 'mtld[ray]'`); the run folder must be on storage both sides see.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from mtld.config.settings import Settings
    from mtld.store import Run

@dataclass(frozen=True)
class ExitStatus:
    """How a run ended: an exit code, or the signal that killed it, or unknown (lost).
    `detail`: what the executor knows when the run left no result.json (e.g. Ray's message)."""

    code: int | None = None
    signal: int | None = None
    max_rss_bytes: int | None = None
    detail: str | None = None


class ClusterUnreachable(ConnectionError):
    """A remote executor's cluster does not answer: runs wait (deferred), they do not fail."""


class RunHandle(Protocol):
    pid: int | None  # a process on this machine (the sleep inhibitor watches it); None for a remote run
    ref: str  # what finds the run again after a daemon restart: the pid, or the Ray submission id
    node: str | None  # where it runs, when not here

    def signal(self, signum: int) -> None: ...

    def poll(self) -> ExitStatus | None: ...


class Executor(Protocol):
    """Starts runs and finds the still-running ones of an earlier daemon."""

    kind: str  # "local" or "ray": stored with each run, so a restarted daemon knows whose it is
    # A remote run trains elsewhere: this machine's memory does not gate it, and a restarted daemon keeps
    # watching it (adopt) instead of stopping it.
    remote: bool

    def check(self) -> None:
        """Raise ClusterUnreachable when runs cannot be started now (a remote executor's cluster is out)."""

    def start(self, run_dir: Path, run: Run) -> RunHandle: ...

    def adopt(self, run: Run, run_dir: Path) -> RunHandle | None: ...


def make_executor(settings: Settings, kind: str | None = None) -> Executor:
    """The executor `executor.kind` (or `kind`) names (the Ray client is imported only for "ray")."""
    if (kind or settings.executor.kind) == "ray":
        from mtld.executor.ray.jobs import RayExecutor

        return RayExecutor(settings.executor.ray, owner=str(settings.state_dir))
    from mtld.executor.local import LocalExecutor

    return LocalExecutor()


def wait_for_exit(handle: RunHandle, timeout_s: float, poll_s: float = 0.05) -> ExitStatus | None:
    """Poll until the run exits or the timeout passes (bounded waits on shutdown)."""
    deadline = time.monotonic() + timeout_s
    while True:
        status = handle.poll()
        if status is not None or time.monotonic() >= deadline:
            return status
        time.sleep(poll_s)
