"""The daemon's side of disk space and log size.

- Before a run starts: is there room on its run folder's filesystem for what
  the run will write (mtld.disk.space_needed)? If not, the job stays queued on
  hold, "disk full: N GB needed on PATH, M GB free", a notification says so,
  and the queue goes on with the other jobs.
- Every `disk.recheck_s`: a job held for disk space whose need now fits is
  released (`mtld retry ID` releases it at once).
- The daemon log rotates by size (mtld.logs.files.rotate; the daemon is its only rotator).

The need of a job's next run uses what its own last run measured (a run that
stopped for lack of space also says what it needed), else the family's last
run, else the model folder's weight files; so a job released here is not
started only to stop again at its first checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from mtld import disk
from mtld.estimate.history import job_family
from mtld.config.jobspec import JobSpec, spec_from_json
from mtld.config.models import looks_like_path
from mtld.logs.files import rotate
from mtld.runs.rundir import RunDir
from mtld.runs.figures import Figures
from mtld.config.settings import Settings
from mtld.store import Job, Store


class DiskGuard:
    def __init__(self, settings: Settings, store: Store, log: Any, *, device: str,
                 free_bytes: Callable[[Path], int] = disk.free_bytes, notify: Callable[[str, str], Any] | None = None):
        self.settings, self.store, self.log, self.device = settings, store, log, device
        self.free_bytes, self.notify = free_bytes, notify
        self.last_recheck: float | None = None

    # ------------------------------------------------------------ space

    def need(self, job: Job, spec: JobSpec, fam: str) -> int:
        """Free bytes the job's next run needs (mtld.disk.space_needed), from the best sizes known."""
        own = [r for r in self.store.runs_for(job.id) if r.ended_at is not None]
        measured = _last_measured(own) or _last_measured(self.store.family_runs(fam))
        weights = disk.weight_files_bytes(_model_folder(spec.model) or "")
        rd = RunDir(job.run_dir)
        need = disk.space_needed(
            checkpoint_bytes=(measured.checkpoint_bytes if measured else None) or 3 * weights,
            export_bytes=(measured.export_bytes if measured else None) or weights,
            keep=spec.train.keep_checkpoints, checkpoints_on_disk=len(rd.checkpoint_files()),
            exports_on_disk=sum(d.is_dir() for d in (rd.model_dir, rd.best_dir)),
            margin_bytes=self.settings.disk.margin_bytes,
        )
        if own and own[-1].outcome == "disk_full":  # what that run said it needed: never less
            need = max(need, Figures.read(own[-1].figures).disk_needed_bytes or 0)
        return need

    def shortfall(self, job: Job, spec: JobSpec, fam: str) -> str | None:
        """None when the job's next run fits; else the hold text (how much is needed, where, what is free)."""
        need, where = self.need(job, spec, fam), Path(job.run_dir)
        free = self.free_bytes(where)
        return None if free >= need else disk.shortfall_text(need, free, disk.existing_ancestor(where))

    def hold_if_short(self, job: Job, spec: JobSpec, fam: str, now: float) -> bool:
        """Before a run: hold the job (True) when its run would not fit."""
        text = self.shortfall(job, spec, fam)
        if text is None:
            return False
        self.store.set_hold(job.id, text, now=now)
        self.held(job, text)
        return True

    def held(self, job: Job, text: str) -> None:
        """Say that a job went on hold, for whatever reason (the daemon announces every hold here): the log,
        and a notification (a held job waits for a condition or a person)."""
        self.log.warning("job.held", job_id=job.id, hold=text)
        if self.notify is not None:
            self.notify(f"mtld: {job.name} is on hold", text)

    def release_holds(self, now: float) -> None:
        """Every `disk.recheck_s`: release the disk holds whose need now fits."""
        if self.last_recheck is not None and now - self.last_recheck < self.settings.disk.recheck_s:
            return
        self.last_recheck = now
        for job in self.store.list_jobs(["queued"]):
            if not (job.hold or "").startswith(disk.HOLD_PREFIX):
                continue
            spec = spec_from_json(job.spec_json)
            if self.shortfall(job, spec, job_family(spec, self.device)) is None:
                self.store.set_hold(job.id, None, now=now)
                self.log.info("job.released", job_id=job.id, reason="enough free disk space again")

    # ------------------------------------------------------------ the daemon log

    def rotate_log(self) -> None:
        settings = self.settings.disk
        path = self.settings.daemon_log
        if rotate(path, max_bytes=int(settings.log_max_mb * disk.MB), keep=settings.log_keep):
            self.log.info("log.rotated", path=str(path), previous=str(path.with_name(f"{path.name}.1")))


def _last_measured(runs: list[Any]) -> Figures | None:
    """The newest figures with a measured checkpoint size."""
    for run in reversed(runs):
        figures = Figures.read(run.figures)
        if figures.checkpoint_bytes:
            return figures
    return None


def _model_folder(model: str) -> Path | None:
    """The job's model as a folder: itself, or a hub id's snapshot in the local cache."""
    if Path(model).is_dir():
        return Path(model)
    if looks_like_path(model):  # a folder that is not there (any more): nothing to measure
        return None
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(model, "config.json")
    except Exception:  # not a repo id, no cache: no size to go by
        return None
    return Path(found).parent if isinstance(found, str) else None
