"""The typed files a run folder carries between the launcher and the run child.

    launch.json   Launch     how to run this attempt (written by the daemon or `mtld train`)
    result.json   RunResult  what the attempt did (written by the child, always)

One model per file, written by one function (`to_json`) and read by one (`load`); nobody spells their keys
a second time. What an attempt measured is `Figures` (mtld.runs.figures).

The rule, for files that cross machines and versions (a Ray worker may run an mtld one minor version behind
the daemon's, or ahead of it):

- Every file says its format: `version` (the major: a change an older reader cannot take) and `minor` (a
  change it can: only new fields, each with a default). Files without them are 1.0.
- Strict where written: the models refuse a field they do not have, so a misspelt field (`disk_byte`)
  fails where it is made instead of vanishing.
- Tolerant where read across versions: a reader takes a file of its own major version; when the file's
  minor is newer than its own, it leaves out the fields it does not know (they are the newer minor's) and
  reads the rest. A file of the same or an older minor with a field the reader does not know is damaged or
  not ours, and is refused. A newer major version is refused with one line (RunFileError): upgrade mtld.
- Adding a field means a new MINOR (tests/test_runfiles.py holds the schema of each version and fails
  when the models change without it); removing or changing one means a new VERSION.

Torch-free and light: the daemon, the store and the CLI import it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypeVar

from pydantic import Field, ValidationError

from mtld.config.settings import DiskSettings, MemorySettings, Settings
from mtld.runs.exitcodes import Outcome
from mtld.runs.figures import Figures, Record, known_only

VERSION = 1  # the major format this mtld writes, and the only one it reads
MINOR = 5  # 1.1: the `minor` field itself; 1.2: result.json's `precision` (what the run really trained in);
# 1.3: launch.json's `tensorboard` (logging.tensorboard)
# 1.4: launch.json's `generation` (the attempt's, for one writer per run folder: mtld.runs.rundir.Fence)
# 1.5: result.json's `compiled` (the run compiled its encoder: mtld.decide.compile)

F = TypeVar("F", bound="RunFile")


class RunFileError(ValueError):
    """launch.json or result.json that this mtld cannot use; the message is one line."""


class RunFile(Record):
    """What both files carry: their format (see the rule above)."""

    version: int = VERSION
    minor: int = MINOR


class RunResult(Figures, RunFile):
    """result.json: the attempt's outcome, its exit status and what it measured."""

    outcome: Outcome
    exit_code: int
    message: str | None = None
    job_id: int | None = None
    run_id: int | None = None
    best_step: int | None = None
    peak_vm_bytes: int | None = None
    checkpoint: str | None = None  # the newest checkpoint when the attempt ended

    def figures(self) -> Figures:
        return Figures.model_validate(self.model_dump(include=set(Figures.model_fields)))


class Launch(RunFile):
    """launch.json: how to run one attempt. Written by the launcher (`launch_for`), read by the child."""

    micro_batch: int
    device: str = "auto"
    job_id: int | None = None
    run_id: int | None = None
    memory_fraction: float = 0.8  # share of the device's memory the run may use
    progress_every_s: float = 5.0  # seconds between step.progress events
    memory: MemorySettings | None = None  # the run samples pressure with these; None: no guard
    disk: DiskSettings = DiskSettings()  # the free-space margin and what stays after a successful run
    history: list[Figures] = Field(default_factory=list)  # the family's earlier runs and probes: for eta_s
    threads: int | str = "auto"  # train.threads: a pinned count, or "auto" (mtld.train.threads)
    threads_every_s: float = 2.0  # seconds between the thread governor's checks
    max_nonfinite_steps: int = 10  # train.max_nonfinite_steps: skipped steps in a row that end the run
    tensorboard: bool = False  # logging.tensorboard: event files in tb/ (a job's own [logging] wins)
    generation: int | None = None  # this attempt's (RunDir.next_generation); None: not fenced (an older launcher)


def to_json(record: RunFile) -> bytes:
    """The file's bytes, as every writer writes them."""
    return (record.model_dump_json(indent=2) + "\n").encode("utf-8")


def load(model: type[F], path: Path) -> F:
    """The file at `path` (FileNotFoundError when there is none); RunFileError when this mtld cannot use it."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise RunFileError(f"{path}: not JSON ({e})") from None
    return parse(model, data, shown_as=str(path))


def parse(model: type[F], data: Any, *, shown_as: str) -> F:
    """`data` as `model`, by the rule above."""
    if not isinstance(data, dict):
        raise RunFileError(f"{shown_as}: not a JSON object")
    version, minor = data.get("version", 1), data.get("minor", 0)
    if not isinstance(version, int) or not isinstance(minor, int):
        raise RunFileError(f"{shown_as}: version and minor must be whole numbers")
    if version > VERSION:
        raise RunFileError(f"{shown_as}: written by a newer mtld (format {version}.{minor}; this one reads "
                           f"{VERSION}.x): upgrade mtld")
    if version < VERSION:  # no older major exists yet; when one does, it is converted here
        raise RunFileError(f"{shown_as}: format {version}.{minor} is older than this mtld reads ({VERSION}.x)")
    if minor > MINOR:
        data = known_only(model, data)  # the newer minor's fields: not ours to know
    try:
        return model.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top)"
        message = "unknown field" if first["type"] == "extra_forbidden" else first["msg"]
        raise RunFileError(f"{shown_as}: {where} - {message}") from None


def launch_for(settings: Settings, *, micro_batch: int, device: str | None = None, job_id: int | None = None,
               run_id: int | None = None, history: list[Figures] | None = None,
               generation: int | None = None) -> Launch:
    """The one way to make a Launch from the settings: the daemon and `mtld train` both call it."""
    return Launch(
        micro_batch=micro_batch, device=device or settings.train.device, job_id=job_id, run_id=run_id,
        memory_fraction=settings.memory.budget_fraction, progress_every_s=settings.train.progress_every_s,
        memory=settings.memory, history=history or [], threads=settings.train.threads, disk=settings.disk,
        max_nonfinite_steps=settings.train.max_nonfinite_steps, tensorboard=settings.logging.tensorboard,
        generation=generation,
    )
