"""The typed files a run folder carries between the launcher and the run child.

    launch.json   Launch     how to run this attempt (written by the daemon or `mtld train`)
    result.json   RunResult  what the attempt did (written by the child, always)

`Figures` is the measured part of a result: what the store keeps with each run
and what the runtime model (mtld.decide.runtime) and the policy read back. One
model, written by the child, loaded by every reader: nobody spells these keys
a second time.

Each file has a `version`. A reader refuses a file from a newer mtld with one
line (RunFileError) instead of guessing at fields it does not know; files
without one (written before versions existed) read as version 1.

Torch-free and light: the daemon, the store and the CLI import it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mtld.config.settings import DiskSettings, MemorySettings, Settings
from mtld.runs.exitcodes import Outcome

VERSION = 1  # the format this mtld writes and the newest it reads



class RunFileError(ValueError):
    """launch.json or result.json that this mtld cannot use; the message is one line."""


class _File(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    @classmethod
    def load(cls, path: Path) -> Any:
        """The file at `path` (FileNotFoundError when there is none); RunFileError when it is not one of ours."""
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as e:
            raise RunFileError(f"{path}: not JSON ({e})") from None
        return cls.parse(data, shown_as=str(path))

    @classmethod
    def parse(cls, data: Any, *, shown_as: str) -> Any:
        if not isinstance(data, dict):
            raise RunFileError(f"{shown_as}: not a JSON object")
        version = data.get("version", 1)
        if isinstance(version, int) and version > VERSION:
            raise RunFileError(f"{shown_as}: written by a newer mtld (format {version}; this one reads up to "
                               f"{VERSION}): upgrade mtld")
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "(top)"
            raise RunFileError(f"{shown_as}: {where} - {first['msg']}") from None

    def to_json(self) -> bytes:
        return (self.model_dump_json(indent=2) + "\n").encode("utf-8")


# ---------------------------------------------------------------- step timings


class Sum(BaseModel):
    """Running sums over steps of (padded tokens, seconds): mtld.decide.runtime.Sums on disk."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    steps: int = 0
    padded_tokens: int = 0
    seconds: float = 0.0
    tokens_squared: float = 0.0
    tokens_seconds: float = 0.0


class EvalTiming(BaseModel):
    model_config = ConfigDict(frozen=True)

    count: int = 0
    seconds: float = 0.0
    tokens: int = 0


class SaveTiming(BaseModel):
    model_config = ConfigDict(frozen=True)

    count: int = 0
    seconds: float = 0.0


class SizeTiming(Sum):
    """One micro-batch size's steps in one attempt: all of them, the warm-up apart, evaluations, saves."""

    step_overhead_s: float | None = None  # the attempt's own fit, for people reading the file
    s_per_padded_token: float | None = None
    warmup: Sum = Sum()
    eval: EvalTiming = EvalTiming()
    saves: SaveTiming = SaveTiming()


# ---------------------------------------------------------------- result.json


class Figures(BaseModel):
    """What an attempt (or a probe) measured; the store keeps this with the run."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    step: int | None = None
    total_steps: int | None = None
    resumed_from_step: int | None = None
    micro_batch_start: int | None = None
    micro_batch_end: int | None = None
    scaled_down: bool = False
    oom_count: int = 0
    skipped_steps: int = 0  # optimizer steps skipped for a non-finite loss or gradient norm
    stop_reason: str | None = None  # why an interrupted attempt stopped itself: "signal" or "memory_critical"
    peak_memory_bytes: int | None = None
    budget_bytes: int | None = None
    max_rss_bytes: int | None = None  # from the parent's wait4: set by the daemon, not the child
    samples_per_s: float | None = None
    tokens_per_s: float | None = None
    duration_s: float | None = None
    train_seconds: float | None = None
    startup_s: float | None = None  # probes measure it; runs derive it (mtld.decide.runtime.run_record)
    samples: int | None = None
    device: str | None = None
    best_score: float | None = None
    timing: dict[int, SizeTiming] = Field(default_factory=dict)
    probe: bool = False  # a probe's figures (mtld.train.probe), not a run's
    peaks_by_size: dict[int, int] = Field(default_factory=dict)  # a probe measures every size
    checkpoint_bytes: int | None = None  # the last checkpoint's state (mtld.disk: what the next run needs)
    export_bytes: int | None = None  # the model's weights, as model/ and best/ hold them
    disk_needed_bytes: int | None = None  # a disk_full attempt: the free space it needed (mtld.disk.space_needed)
    disk_bytes: int | None = None  # the run folder's size when the attempt ended (what `mtld status` adds up)

    def stored(self) -> dict[str, Any]:
        """JSON-safe, without the fields left at their defaults (what the store keeps)."""
        return self.model_dump(mode="json", exclude_defaults=True)


class RunResult(Figures, _File):
    """result.json: the attempt's outcome, its exit status and what it measured."""

    version: int = VERSION
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


# ---------------------------------------------------------------- launch.json


class Launch(_File):
    """How to run one attempt. Written by the launcher (`launch_for`), read by the child."""

    version: int = VERSION
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


def launch_for(settings: Settings, *, micro_batch: int, device: str | None = None, job_id: int | None = None,
               run_id: int | None = None, history: list[Figures] | None = None) -> Launch:
    """The one way to make a Launch from the settings: the daemon and `mtld train` both call it."""
    return Launch(
        micro_batch=micro_batch, device=device or settings.train.device, job_id=job_id, run_id=run_id,
        memory_fraction=settings.memory.budget_fraction, progress_every_s=settings.train.progress_every_s,
        memory=settings.memory, history=history or [], threads=settings.train.threads, disk=settings.disk,
        max_nonfinite_steps=settings.train.max_nonfinite_steps,
    )
