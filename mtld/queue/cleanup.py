"""Cleaning up after finished jobs: `mtld clean` and `mtld remove`.

A finished job (succeeded, failed or cancelled) loses its run folder and is
marked removed in the store: `mtld status` no longer lists it, `mtld show`
still does, and its runs stay as its family's batch-size and timing history.
With `keep_models`, model/ and best/ stay, with the small records beside them
(job.json, metrics.json, result.json, run.jsonl); the checkpoints and the rest
go, and the job stays listed.

Only a folder mtld made for that very job is deleted: one carrying its mark
(`.mtld-run`, mtld.runs.rundir), or, made by an mtld from before the mark, one
whose job.json is the job's own spec. Anything else is left alone and said so.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mtld.disk import tree_bytes
from mtld.config.jobspec import spec_from_json
from mtld.logs.events import get_logger
from mtld.runs.rundir import MARKER, RunDir
from mtld.config.settings import Settings
from mtld.store import TERMINAL, InvalidTransition, Job, Store, UnknownJob

KEPT_WITH_MODELS = frozenset({"model", "best", "job.json", "metrics.json", "result.json", "run.jsonl", MARKER})


@dataclass
class Removal:
    """What cleaning one job frees (or would free, in a dry run)."""

    id: int
    name: str
    state: str
    run_dir: str
    bytes: int = 0
    kept: list[str] = field(default_factory=list)
    skipped: str | None = None  # why nothing was removed


def clean(settings: Settings, store: Store, *, now: float, older_than_s: float | None = None,
          keep_models: bool = False, dry_run: bool = False) -> dict[str, Any]:
    """Clean every finished job that ended at least `older_than_s` ago (all of them when None)."""
    jobs = [j for j in store.list_jobs(sorted(TERMINAL)) if j.removed_at is None
            and (older_than_s is None or (j.finished_at or j.updated_at) <= now - older_than_s)]
    removals = [clean_job(settings, store, job, now=now, keep_models=keep_models, dry_run=dry_run) for job in jobs]
    return summary([r for r in removals if r is not None], dry_run=dry_run)


def remove(settings: Settings, store: Store, job_id: int, *, now: float, keep_models: bool = False,
           dry_run: bool = False) -> dict[str, Any]:
    """Clean one finished job. Raises UnknownJob, or InvalidTransition for a job that has not finished."""
    job = store.get(job_id)
    if job is None:
        raise UnknownJob(job_id)
    if job.state not in TERMINAL:
        raise InvalidTransition(f"job {job_id} is {job.state}; only a finished job can be removed (cancel it first)")
    if job.removed_at is not None:
        raise InvalidTransition(f"job {job_id} was removed already")
    removal = clean_job(settings, store, job, now=now, keep_models=keep_models, dry_run=dry_run)
    return summary([removal] if removal is not None else [], dry_run=dry_run)


def clean_job(settings: Settings, store: Store, job: Job, *, now: float, keep_models: bool,
              dry_run: bool) -> Removal | None:
    """Remove (or measure, in a dry run) one job's run folder; None when `keep_models` leaves nothing to remove."""
    rd = RunDir(job.run_dir)
    removal = Removal(job.id, job.name, job.state, job.run_dir)
    if rd.path.exists() and not _made_for(rd, job, settings):
        removal.skipped = f"{rd.path} was not made by mtld for this job: left alone"
        return removal
    doomed = _doomed(rd, keep_models)
    if keep_models and not doomed:
        return None
    removal.bytes = sum(tree_bytes(p) if p.is_dir() else _file_bytes(p) for p in doomed)
    removal.kept = sorted(p.name for p in rd.path.iterdir() if p not in doomed) if keep_models and rd.path.is_dir() else []
    if dry_run:
        return removal
    try:  # claimed in the store before its folder is touched: a `retry` now is refused, one before wins
        store.claim_cleaning(job.id, now=now)
    except InvalidTransition as e:
        removal.skipped = f"{e}: left alone"
        return removal
    for path in doomed:
        _delete(path)
    log = get_logger(job_id=job.id)
    if keep_models:
        latest = store.latest_run(job.id)
        if latest is not None and latest.ended_at is not None:
            store.set_run_figure(latest.id, "disk_bytes", tree_bytes(rd.path))
        store.done_cleaning(job.id, removed=False, reason="cleaned, models kept", now=now)
        log.info("job.cleaned", run_dir=str(rd.path), bytes=removal.bytes, kept=removal.kept)
    else:
        store.done_cleaning(job.id, removed=True, reason=f"removed with its run folder ({removal.bytes} bytes)",
                            now=now)
        log.info("job.removed", run_dir=str(rd.path), bytes=removal.bytes)
    return removal


def _delete(path: Path) -> None:
    """Delete a file or folder; entries a concurrent clean deleted first are gone all the same."""
    if not (path.is_dir() and not path.is_symlink()):
        path.unlink(missing_ok=True)
        return
    for _ in range(3):
        try:
            shutil.rmtree(path)
            return
        except FileNotFoundError:  # something in it vanished under the walk: walk what is left
            if not path.exists():
                return
    shutil.rmtree(path)


def summary(removals: list[Removal], *, dry_run: bool) -> dict[str, Any]:
    done = [r for r in removals if r.skipped is None]
    return {"dry_run": dry_run, "jobs": len(done), "bytes": sum(r.bytes for r in done),
            "removed": [asdict(r) for r in done], "skipped": [asdict(r) for r in removals if r.skipped]}


def _made_for(rd: RunDir, job: Job, settings: Settings) -> bool:
    if rd.made_for({"job_id": job.id, "store": str(settings.db_path)}):
        return True
    if rd.marker_file.exists():  # another's mark
        return False
    try:  # made by an mtld from before the mark: its job.json is this job's spec
        return rd.read_job() == spec_from_json(job.spec_json)
    except (OSError, ValueError):
        return False


def _doomed(rd: RunDir, keep_models: bool) -> list[Path]:
    if not rd.path.is_dir():
        return []
    if not keep_models:
        return [rd.path]
    return sorted(p for p in rd.path.iterdir() if p.name not in KEPT_WITH_MODELS)


def _file_bytes(path: Path) -> int:
    try:
        st = path.lstat()
    except FileNotFoundError:
        return 0
    return getattr(st, "st_blocks", 0) * 512 or st.st_size
