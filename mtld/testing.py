"""Fakes for tests and demos (like `structlog.testing`): none of them is used by production code.

- `ScriptedProbe`: a memory probe (mtld.memory.Probe) that reads a script.
- `ScriptedGuard`: a step-loop guard (mtld.train.guard.Guard) that gives
  scripted advice at given optimizer steps.
- `RecordingRunner`: a service-manager Runner (mtld.platform.runner.Runner)
  that records every argv and answers from a script, instead of patching
  subprocess.
- `FakeExecutor` / `FakeRun`: the daemon's executor seam (mtld.executor):
  runs that end when a test says so, or with 75 (checkpointed) on SIGTERM, so
  that a test drives `Daemon.tick(now)` with its own clock.
- `FaultyStore`: a real mtld.store.Store whose named methods fail on cue, to
  drill what the daemon does when its bookkeeping cannot be written.

Torch-free and light to import.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from mtld.memory.guard import Advice
from mtld.memory.levels import Level, Reading
from mtld.executor import CannotRun, ClusterRefused, ClusterUnreachable, ExitStatus
from mtld.platform.runner import Result

__all__ = ["FakeExecutor", "FakeRun", "FaultyStore", "RecordingRunner", "ScriptedGuard", "ScriptedProbe"]


class ScriptedProbe:
    """A fake: each read gives the next item (a Reading, a Level, or an exception to raise); the last repeats."""

    source = "scripted"

    def __init__(self, items: Iterable[Reading | Level | str | BaseException]):
        self.items = list(items)
        self.reads = 0

    def read(self) -> Reading:
        item = self.items[min(self.reads, len(self.items) - 1)]
        self.reads += 1
        if isinstance(item, BaseException):
            raise item
        if isinstance(item, Reading):
            return item
        return Reading(Level(item), None, None, None, self.source)


class ScriptedGuard:
    """A fake for tests and demos: gives scripted advice at given optimizer steps.

    `script` maps an optimizer step (0-based: the step about to run) to advice,
    given once, at the first micro-step of that step.
    """

    def __init__(self, script: dict[int, Advice] | Iterable[tuple[int, Advice]]):
        self.script = dict(script)
        self.step = 0
        self.given: list[tuple[int, Advice]] = []

    def at_step(self, step: int) -> None:
        self.step = step

    def advice(self) -> Advice:
        advice = self.script.pop(self.step, "ok")
        if advice != "ok":
            self.given.append((self.step, advice))
        return advice


class RecordingRunner:
    """A fake Runner: records each argv in `calls` and answers from a script.

    `on("launchctl", "bootout", returncode=3, stderr="...")` scripts the answer
    for every argv starting with those words (the longest matching prefix
    wins); anything unscripted succeeds with empty output. Scripting one
    prefix several times queues answers, used in turn (the last one repeats).
    """

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self._script: dict[tuple[str, ...], list[Result]] = {}

    def on(self, *prefix: str, returncode: int = 0, stdout: str = "", stderr: str = "") -> RecordingRunner:
        self._script.setdefault(prefix, []).append(Result(list(prefix), returncode, stdout, stderr))
        return self

    def run(self, argv: list[str]) -> Result:
        self.calls.append(list(argv))
        matches = [p for p in self._script if tuple(argv[: len(p)]) == p]
        if not matches:
            return Result(list(argv), 0, "", "")
        answers = self._script[max(matches, key=len)]
        answer = answers.pop(0) if len(answers) > 1 else answers[0]
        return Result(list(argv), answer.returncode, answer.stdout, answer.stderr)


class FakeRun:
    """A run that never finishes on its own: it ends when `end()` is called, or (75, checkpointed) on SIGTERM.
    While it runs it shows progress as a real run does (a `step.progress` line in its run log at each poll,
    what the daemon's watchdog reads), unless `hang()` was called."""

    def __init__(self, pid: int | None, run_dir: Path, ref: str | None = None, node: str | None = None,
                 ends_on_term: bool = True):
        self.pid, self.run_dir, self.ends_on_term = pid, run_dir, ends_on_term
        self.ref = ref or str(pid)
        self.node = node
        self.waiting: str | None = None  # what it waits for on a cluster (a test sets it, as a PENDING job)
        self.signals: list[int] = []
        self.status: ExitStatus | None = None
        self.hung = False
        self.steps = 0

    def hang(self) -> None:
        """From now on it shows no progress (a GPU call that never returns)."""
        self.hung = True

    def _progress(self) -> None:
        self.steps += 1
        line = json.dumps({"ts": "fake", "event": "step.progress", "step": self.steps})
        with open(Path(self.run_dir) / "run.jsonl", "a", encoding="utf-8") as log:
            log.write(line + "\n")

    def signal(self, signum: int) -> None:
        self.signals.append(signum)
        if self.status is not None:
            return
        if signum == signal.SIGKILL and self.pid is not None:  # a process here cannot ignore it
            self.status = ExitStatus(signal=signum)
        elif signum in (signal.SIGTERM, signal.SIGKILL) and self.ends_on_term:
            self.status = ExitStatus(code=75) if signum == signal.SIGTERM else ExitStatus(signal=signum)

    def poll(self) -> ExitStatus | None:
        if self.status is None and not self.hung and Path(self.run_dir).is_dir():
            self._progress()
        return self.status

    def end(self, code: int = 0) -> None:
        self.status = ExitStatus(code=code)

    def lose(self, detail: str | None = None, *, cannot_run: str | None = None) -> None:
        """It ends with no status and no result, as a run whose node died (`detail`: the cluster's words), or
        as one the cluster found can never start (`cannot_run`)."""
        self.status = ExitStatus(detail=detail, cannot_run=cannot_run)


class FakeExecutor:
    """Starts FakeRuns (no process); `runs` lists them in the order started. `remote=True` plays a cluster:
    runs have no pid here, a restarted daemon adopts the ones not ended (by ref), and `reachable` False makes
    `check`, `start` and `adopt` raise ClusterUnreachable (`refused`: ClusterRefused; `never`: start raises CannotRun); `lose_reply` True: the next start submits the run but
    raises ClusterUnreachable, as when the cluster's answer is lost. `ends_on_term` False: runs ignore stop requests (still
    checkpointing on a slow cluster). `slots`: runs at once (one locally); `device`: where runs train."""

    def __init__(self, *, remote: bool = False, ends_on_term: bool = True, slots: int | None = None,
                 device: str = "cpu", kind: str | None = None) -> None:
        self.runs: list[FakeRun] = []
        self.remote = remote
        self.ends_on_term = ends_on_term
        self.kind = kind or ("ray" if remote else "local")
        self.slots = slots or 1
        self.device = device
        self.reachable = True
        self.lose_reply = False
        self.refused: str | None = None  # set: the cluster refuses the credentials (ClusterRefused, this line)
        self.never: str | None = None  # set: no node could ever start a run (start raises CannotRun, this line)

    def check(self) -> None:
        if self.refused is not None:
            raise ClusterRefused(self.refused)
        if not self.reachable:
            raise ClusterUnreachable("cannot reach the cluster (fake)")

    def start(self, run: Any, run_dir: Path) -> FakeRun:
        self.check()
        if self.never is not None:
            raise CannotRun(self.never)
        n = len(self.runs)
        handle = (FakeRun(None, Path(run_dir), ref=f"fake-run-{run.id}", ends_on_term=self.ends_on_term) if self.remote
                  else FakeRun(100000 + n, Path(run_dir), ends_on_term=self.ends_on_term))
        self.runs.append(handle)
        if self.lose_reply:  # submitted, but the answer never came back
            self.lose_reply = False
            raise ClusterUnreachable("the cluster stopped answering during the submission (fake)")
        return handle

    def adopt(self, run: Any, run_dir: Path) -> FakeRun | None:
        if not self.remote:
            return None
        self.check()
        ref = run.ref or f"fake-run-{run.id}"  # a run whose submission was never recorded: its derived id
        return next((r for r in self.runs if r.ref == ref), None)  # ended or not: its status tells


class FaultyStore:
    """A Store that fails on cue: `fail("finish_run", OSError(...), times=1, when=lambda *a, **kw: ...)` makes
    the next `times` calls of that method for which `when` holds raise the error; everything else is the real
    store's (pass this where a Store goes). `failed` lists the methods that raised, in order."""

    def __init__(self, store: Any):
        self.store = store
        self.faults: dict[str, list[Any]] = {}
        self.failed: list[str] = []

    def fail(self, method: str, error: BaseException, *, times: int = 1,
             when: Callable[..., bool] | None = None) -> FaultyStore:
        self.faults[method] = [error, times, when]
        return self

    def __getattr__(self, name: str) -> Any:
        real = getattr(self.store, name)
        if name not in self.faults:
            return real

        def maybe_failing(*args: Any, **kwargs: Any) -> Any:
            fault = self.faults[name]
            error, times, when = fault
            if times > 0 and (when is None or when(*args, **kwargs)):
                fault[1] -= 1
                self.failed.append(name)
                raise error
            return real(*args, **kwargs)

        return maybe_failing
