"""Executors start, signal and watch runs: a local child process, a job on a Ray cluster, or any other kind
that registers itself (mtld.executor.registry).

Two sides, both small:

- `ExecutorPlugin`: one kind of executor as mtld knows it from the settings alone, without starting
  anything: its own settings table (`[executor.KIND]`), how many runs may train at once, the device they
  train on, where their run folders go, how `mtld status` describes it and its runs, and what `mtld doctor`
  checks. The CLI, `status` and `doctor` ask the plugin; nothing outside this package names a kind.
- `Executor` (made by `plugin.executor()`): what the daemon talks to. It starts a run and finds the
  still-running ones of an earlier daemon; each run is a `RunHandle` (signal, poll).

Every executor hands the same `python -P -m mtld.train RUN_DIR` entry point (mtld.runs.child) to whatever runs
it; a run is judged by how it exits (mtld.runs.exitcodes), and its run folder holds everything else.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from pydantic import BaseModel

from mtld.platform.machine import guess_device

if TYPE_CHECKING:
    from mtld.config.settings import Settings
    from mtld.store import Run


@dataclass(frozen=True)
class ExitStatus:
    """How a run ended: an exit code, or the signal that killed it, or unknown (lost).
    `detail`: what the executor knows of how it ended (e.g. the cluster's own message), kept with the run.
    `cannot_run`: the executor found that the run can never start as asked (a resource no node has): the
    job fails with this line instead of being retried."""

    code: int | None = None
    signal: int | None = None
    max_rss_bytes: int | None = None
    detail: str | None = None
    cannot_run: str | None = None


class ClusterUnreachable(ConnectionError):
    """A remote executor's cluster does not answer (or answers only with server errors): runs wait
    (deferred), they do not fail."""


# The store flag that holds why the executor refuses runs now (a ClusterRefused line), while it does: the
# daemon sets and clears it, `mtld status` shows it.
PROBLEM_FLAG = "executor_problem"


class ClusterRefused(ClusterUnreachable):
    """The cluster answers and refuses mtld's credentials (a missing or wrong token): a configuration error.
    Runs wait as for an outage (nothing is failed for it), the reason is shown by `mtld status`, and `mtld
    doctor` exits 1. The message is one line that names the setting to fix."""


class CannotRun(Exception):
    """The run can never start as asked (no node of the cluster has a resource it asks for): its job fails
    at once. The message is one line that names the resource and the setting."""


class RunHandle(Protocol):
    @property
    def pid(self) -> int | None:
        """A process on this machine (the sleep inhibitor watches it); None for a remote run."""

    @property
    def ref(self) -> str:
        """What finds the run again after a daemon restart (stored with the run): a pid, a cluster's job id."""

    @property
    def node(self) -> str | None:
        """Where it runs, when not here (once known)."""

    @property
    def waiting(self) -> str | None:
        """What the run waits for before it starts (a cluster's queue: the resources it asks for), as one
        line; None once it runs, and for an executor that starts runs at once."""

    def signal(self, signum: int) -> None: ...

    def poll(self) -> ExitStatus | None: ...


class Executor(Protocol):
    """Starts runs and finds the still-running ones of an earlier daemon."""

    @property
    def kind(self) -> str:
        """Stored with each run, so that a restarted daemon knows whose it is."""

    @property
    def remote(self) -> bool:
        """Runs train elsewhere: this machine's memory does not gate them, and a restarted daemon keeps
        watching them (adopt) instead of stopping them."""

    @property
    def slots(self) -> int:
        """How many runs may train at once."""

    @property
    def device(self) -> str:
        """The device runs train on ("cpu", "cuda", "mps"): part of the family key and the start size."""

    def check(self) -> None:
        """Raise ClusterUnreachable when runs cannot be started now (a remote executor's cluster is out)."""

    def start(self, run: Run, run_dir: Path) -> RunHandle: ...

    def adopt(self, run: Run, run_dir: Path) -> RunHandle | None:
        """The run's handle if it is still this executor's to watch (or, for a remote run, to settle)."""


class ExecutorPlugin:
    """One kind of executor, known from the settings alone. The defaults are a run on this machine;
    a kind overrides what differs. Made with its own settings table already checked (`section`)."""

    kind: ClassVar[str]
    settings_model: ClassVar[type[BaseModel] | None] = None  # the `[executor.KIND]` table, if it has one
    remote: ClassVar[bool] = False

    def __init__(self, settings: Settings, section: BaseModel | None) -> None:
        self.settings = settings
        self.section = section

    @classmethod
    def unavailable(cls) -> str | None:
        """Why this kind cannot be used on this machine (e.g. a client that is not installed), or None."""
        return None

    @property
    def slots(self) -> int:
        return 1

    @property
    def device(self) -> str:
        return guess_device(self.settings.train.device)

    @property
    def runs_dir(self) -> Path:
        """Where new jobs' run folders go (a job file's `output` wins)."""
        return self.settings.local_runs_dir

    def executor(self) -> Executor:
        raise NotImplementedError

    def setting_files(self) -> dict[str, Path]:
        """Files its settings name that the daemon reads (a cluster's token file), by dotted setting:
        `mtld agent install` carries one set in the shell's environment into the agent's, and checks it."""
        return {}

    def describe(self) -> dict[str, Any]:
        """`mtld status --json`'s `executor`: the kind and its slots, plus what the kind adds."""
        return {"kind": self.kind, "slots": self.slots}

    @classmethod
    def describe_run(cls, run: Run) -> dict[str, Any]:
        """What `mtld status --json` adds to a running attempt of this kind (e.g. a cluster's job id)."""
        return {}

    @classmethod
    def lines(cls, view: dict[str, Any]) -> list[str]:
        """`mtld status`'s lines about the executor (`view`: what `describe` gave); none for a local one."""
        return []

    @classmethod
    def run_lines(cls, run: dict[str, Any]) -> list[str]:
        """`mtld status`'s lines under a running job (`run`: its run view, with `describe_run`'s fields)."""
        return []

    def doctor(self) -> dict[str, Any] | None:
        """`mtld doctor`'s section for this executor; its `problems` (a list of lines) make doctor exit 1."""
        return None

    @property
    def doctor_note(self) -> str | None:
        """What `mtld doctor` says before a check that takes a while (None: nothing to say)."""
        return None


def wait_for_exit(handle: RunHandle, timeout_s: float, poll_s: float = 0.05) -> ExitStatus | None:
    """Poll until the run exits or the timeout passes (bounded waits on shutdown)."""
    deadline = time.monotonic() + timeout_s
    while True:
        status = handle.poll()
        if status is not None or time.monotonic() >= deadline:
            return status
        time.sleep(poll_s)
