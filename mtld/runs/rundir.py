"""The run directory: the contract between whoever launches a run and the child.

One folder per job holds everything about it across attempts:

    job.json        the resolved job spec (written at launch; the child reads it)
    launch.json     how to run this attempt (mtld.runs.files.Launch)
    run.jsonl       the run log (one writer at a time: the current child)
    result.json     the child's summary at exit (mtld.runs.files.RunResult)
    checkpoints/    step-NNNNNNNN.pt, newest last; resuming starts from the newest
    model/  best/   the final and the best model (encoder, heads, tokenizer, labels)
    metrics.json    per-task metrics of every evaluation
    .mtld-run       who made the folder (the daemon's job, or `mtld train`): see `claim`
    .mtld-generation  the generation of the attempt that owns the folder now: see `Fence`

A launcher claims the folder before anything is written to it: mtld uses
only folders it made for that run, so it never loads a checkpoint or a model
someone else placed there. Folders are user-only (0700), files 0600.

One writer per run folder (fencing): every attempt gets a generation, one
more than the folder's last (`next_generation`, written by the launcher
before the attempt starts, in launch.json too). The attempt checks the
folder's generation before each checkpoint, export, metrics and result write
(`Fence.check`) and stops without writing when a newer attempt owns the folder:
an attempt the launcher took for lost (a cluster that forgot its job, a node
that came back) never writes over the one that replaced it. Nothing here
relies on locks (flock is not reliable on NFS or SMB): the generation file is
replaced by a rename, so a reader sees the old number or the new one, and NFS's
close-to-open consistency makes each fresh open see the server's latest
(nfs(5), "Data and metadata coherence").

Torch-free: the daemon and the CLI use it without importing torch.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Any

from mtld.disk import private_dir, write_atomic, write_json_atomic
from mtld.config.jobspec import JobSpec, spec_from_json, spec_to_json
from mtld.runs.files import Launch, RunResult, load, to_json

MARKER = ".mtld-run"
GENERATION = ".mtld-generation"


class RunDirRefused(Exception):
    """A run folder mtld did not make for this run; the message is one line."""


class Superseded(Exception):
    """A newer attempt owns the run folder: this one must write nothing more (the message says what it
    did not write, and the two generations)."""


class Fence:
    """An attempt's side of one writer per run folder: `check(what)` before each write raises Superseded
    once the folder's generation is newer than the attempt's own. An attempt without a generation (launched
    by an older mtld) is never fenced."""

    def __init__(self, run_dir: RunDir, generation: int | None):
        self.run_dir, self.generation = run_dir, generation

    def check(self, what: str) -> None:
        if self.generation is None:
            return
        current = self.run_dir.generation()
        if current is not None and current > self.generation:
            raise Superseded(f"a newer attempt (generation {current}) owns {self.run_dir.path}; this one "
                             f"(generation {self.generation}) did not write {what} and stops")


class RunDir:
    def __init__(self, path: Path | str):
        self.path = Path(path)

    job_file = property(lambda self: self.path / "job.json")
    launch_file = property(lambda self: self.path / "launch.json")
    log_file = property(lambda self: self.path / "run.jsonl")
    result_file = property(lambda self: self.path / "result.json")
    metrics_file = property(lambda self: self.path / "metrics.json")
    checkpoints = property(lambda self: self.path / "checkpoints")
    model_dir = property(lambda self: self.path / "model")
    best_dir = property(lambda self: self.path / "best")
    marker_file = property(lambda self: self.path / MARKER)
    generation_file = property(lambda self: self.path / GENERATION)

    def claim(self, owner: dict[str, Any], *, adopt_unmarked: bool = False, adopt_empty: bool = False) -> None:
        """Make the folder for `owner` (who runs in it: {"job_id": 5, "store": ...}) and mark it, or
        check that an existing one carries the same mark. RunDirRefused: a folder without the mark
        (unless `adopt_unmarked`: the caller knows an older mtld made it; or `adopt_empty` and it is
        empty: nothing in it can be loaded, as a user's `--out` folder made beforehand), or with
        another owner's."""
        private_dir(self.path.parent)
        try:
            os.mkdir(self.path, 0o700)
        except FileExistsError:
            self._check_owner(owner, adopt_unmarked or (adopt_empty and self._is_empty_folder()))
            return
        os.chmod(self.path, 0o700)
        write_json_atomic(self.marker_file, {"made_by": "mtld", **owner})

    def _is_empty_folder(self) -> bool:
        return self.path.is_dir() and not self.path.is_symlink() and not any(self.path.iterdir())

    def made_for(self, owner: dict[str, Any]) -> bool:
        """Whether this folder carries mtld's mark for `owner` (mtld clean removes only such folders)."""
        try:
            self._check_owner(owner, adopt_unmarked=False)
        except RunDirRefused:
            return False
        return True

    def _check_owner(self, owner: dict[str, Any], adopt_unmarked: bool) -> None:
        if not self.path.is_dir() or self.path.is_symlink():
            raise RunDirRefused(f"{self.path} exists and is not a folder mtld made: refusing to use it")
        try:
            found = json.loads(self.marker_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            if adopt_unmarked:
                os.chmod(self.path, 0o700)
                write_json_atomic(self.marker_file, {"made_by": "mtld", **owner})
                return
            raise RunDirRefused(f"{self.path} already exists and mtld did not make it for this run (no {MARKER} "
                                "in it): refusing to use it or load anything from it; remove it or choose "
                                "another output folder") from None
        except (OSError, ValueError) as e:
            raise RunDirRefused(f"{self.marker_file} cannot be read ({type(e).__name__}): refusing the folder") from None
        theirs = {k: found.get(k) for k in owner} if isinstance(found, dict) else None
        if theirs != owner:
            raise RunDirRefused(f"{self.path} was made for another run ({_owner_text(found)}), not for "
                                f"{_owner_text(owner)}: refusing to use it")

    def generation(self) -> int | None:
        """The generation of the attempt that owns the folder now; None when none was written (or it cannot
        be read as one: then nobody is fenced out by it)."""
        for _ in range(3):  # ESTALE: another machine replaced the file under this one's cached handle
            try:
                text = self.generation_file.read_text(encoding="utf-8")
            except FileNotFoundError:
                return None
            except OSError as e:
                if e.errno == errno.ESTALE:
                    continue
                raise
            try:
                return int(text.strip())
            except ValueError:
                return None
        return None

    def next_generation(self) -> int:
        """Make a new attempt the folder's owner: one more than its generation now (written atomically, before
        the attempt starts). The launcher calls it; an older attempt still running stops at its next write."""
        generation = (self.generation() or 0) + 1
        write_atomic(self.generation_file, f"{generation}\n".encode())
        return generation

    def write_job(self, spec: JobSpec) -> None:
        private_dir(self.path)
        write_json_atomic(self.job_file, json.loads(spec_to_json(spec)))

    def read_job(self) -> JobSpec:
        return spec_from_json(self.job_file.read_text(encoding="utf-8"))

    def write_launch(self, launch: Launch) -> None:
        write_atomic(self.launch_file, to_json(launch))

    def read_launch(self) -> Launch:
        """FileNotFoundError when there is none; RunFileError when it is not one this mtld can use."""
        return load(Launch, self.launch_file)

    def write_result(self, result: RunResult) -> None:
        write_atomic(self.result_file, to_json(result))

    def read_result(self) -> RunResult | None:
        """None when the attempt left none; RunFileError when it is not one this mtld can use."""
        try:
            return load(RunResult, self.result_file)
        except FileNotFoundError:
            return None

    def result_of(self, run_id: int, started_at: float) -> RunResult | None:
        """The result.json of the attempt `run_id` (started at `started_at`), if that attempt wrote it: not a
        leftover of an earlier attempt, and one this mtld can read. The one test of "is this result ours",
        whoever asks (the daemon's ledger, an executor). A result from before results named their run counts
        when it was written after the attempt started. Never raises: a result that cannot be read is none
        (the exit status still decides)."""
        try:
            result = self.read_result()
            if result is None:
                return None
            if result.run_id is not None:
                return result if result.run_id == run_id else None
            return result if self.result_file.stat().st_mtime >= started_at else None
        except Exception:  # RunFileError, OSError, or worse: reading a result never stops the queue
            return None

    def checkpoint_files(self) -> list[Path]:
        """Complete checkpoints, oldest first (temporary files are never listed)."""
        if not self.checkpoints.is_dir():
            return []
        return sorted(self.checkpoints.glob("step-*.pt"))

    def latest_checkpoint(self) -> Path | None:
        files = self.checkpoint_files()
        return files[-1] if files else None


def _owner_text(owner: Any) -> str:
    if not isinstance(owner, dict):
        return "unknown"
    return ", ".join(f"{k} {v}" for k, v in owner.items() if k != "made_by") or "unknown"
