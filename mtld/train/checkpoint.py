"""Checkpoints: one torch.save'd dict per file, written to a temporary file and renamed.

    checkpoints/.step-N.pt.tmp  →  os.replace  →  checkpoints/step-%08d.pt

The previous checkpoint stays until the new one is complete, then the oldest
beyond `keep` are removed; a write that fails (a full disk: ENOSPC) leaves
only the earlier ones. A checkpoint holds everything an exact resume needs:
model and heads, optimizer, scheduler, RNG states, the position in the batch
plan, the micro-batch, the best score and the evaluation history.

Only tensors and plain data (numbers, strings, lists, tuples, dicts): every
checkpoint loads with `torch.load(weights_only=True)`, whose unpickler builds
nothing else, so a file planted in a run folder cannot run code when it is
loaded; it is refused (`Refused`). Files are user-only (0600).
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from mtld.disk import DiskFull, free_bytes, is_disk_full, open_private, private_dir, space_needed

CHECKPOINT_FORMAT = 2  # 2: plain data only, for weights_only=True (format 1 held NumPy arrays)


class Refused(ValueError):
    """A file in checkpoints/ that is not a plain mtld checkpoint: it is never unpickled in full."""


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}.pt"


def state_bytes(value: Any) -> int:
    """The bytes of the tensors in a (nested) state dict: what a checkpoint of it takes on disk, about."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(state_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(state_bytes(v) for v in value)
    return 0


def save_checkpoint(directory: Path, step: int, state: dict[str, Any], *, keep: int, log: Any = None,
                    commit: Callable[[], None] | None = None) -> Path:
    """Write atomically, then keep the newest `keep` (`prune`). Raises DiskFull (nothing half-written left)
    on ENOSPC. `commit` is called just before the file is renamed into place; what it raises (the run's fence:
    a newer attempt owns the folder) leaves nothing behind."""
    private_dir(directory)
    final = directory / checkpoint_name(step)
    tmp = directory / f".step-{step}.pt.tmp"
    try:
        with os.fdopen(open_private(tmp, os.O_WRONLY | os.O_TRUNC), "wb") as f:
            torch.save({"format": CHECKPOINT_FORMAT, **state}, f)
            f.flush()
            os.fsync(f.fileno())
        if commit is not None:
            commit()
        os.replace(tmp, final)
    except BaseException as e:
        if not is_disk_full(e):
            tmp.unlink(missing_ok=True)
            raise
        free = free_bytes(directory)  # at the refusal, before the partial file gives its space back
        tmp.unlink(missing_ok=True)
        raise DiskFull(state_bytes(state), free, directory.parent,
                       detail=f"writing {final.name} failed: no space left; the earlier checkpoints are intact") from e
    _fsync_dir(directory)
    prune(directory, keep, written=final, log=log)
    return final


def save_within_space(directory: Path, step: int, state: dict[str, Any], *, keep: int, export_bytes: int,
                      exports_on_disk: int, margin_bytes: int, log: Any = None,
                      commit: Callable[[], None] | None = None) -> Path:
    """Save when the free space covers the rest of the run (mtld.disk.space_needed). When it does not,
    save this one checkpoint anyway if it fits, then raise DiskFull naming it (the run stops there);
    when not even that fits, raise DiskFull at once: the earlier checkpoints stay as they are."""
    size = state_bytes(state)
    on_disk = len(list(directory.glob("step-*.pt"))) if directory.is_dir() else 0
    need = space_needed(checkpoint_bytes=size, export_bytes=export_bytes, keep=keep, checkpoints_on_disk=on_disk,
                        exports_on_disk=exports_on_disk, margin_bytes=margin_bytes)
    free = free_bytes(directory)
    fits = free >= need
    if not fits and free < size + max(size // 50, 1 << 16):  # not even this one, with the file's own overhead
        raise DiskFull(need, free, directory.parent, detail="the earlier checkpoints are kept")
    try:
        saved = save_checkpoint(directory, step, state, keep=keep, log=log, commit=commit)
    except DiskFull as e:  # refused for space (something else may have taken it meanwhile): the run needs all of it
        raise DiskFull(need, e.free, directory.parent, detail=e.detail) from e
    if fits:
        return saved
    raise DiskFull(need, free, directory.parent, saved=saved, detail=f"checkpoint at step {step} kept")


def prune(directory: Path, keep: int, *, written: Path | None = None, log: Any = None) -> None:
    """Keep the newest `keep` checkpoints (none when 0); drop temporary files a killed writer left behind.
    `written`: the checkpoint just written, never deleted. A file that claims a later step than it is not
    this run's (steps only grow; the resume set aside every newer one it could not load): it is moved to
    checkpoints/bad/ instead of counting among the newest, so that a planted or damaged file can never
    push a good checkpoint out."""
    files = sorted(directory.glob("step-*.pt"))
    if written is not None:
        for foreign in [f for f in files if f.name > written.name]:
            quarantine(foreign, "it claims a later step than the checkpoint just written: not this run's", log)
        files = [f for f in files if f.name <= written.name]
    doomed = [f for f in (files[:-keep] if keep else files) if f != written]
    for old in doomed + list(directory.glob(".step-*.pt.tmp")):
        old.unlink(missing_ok=True)


def quarantine(path: Path, reason: str, log: Any = None) -> Path:
    """Move a checkpoint this run cannot use to checkpoints/bad/ (kept for a person to look at, never
    loaded or counted again); `checkpoint.quarantined` says why."""
    bad = path.parent / "bad"
    private_dir(bad)
    target = bad / path.name
    os.replace(path, target)
    if log is not None:
        log.warning("checkpoint.quarantined", path=str(path), moved_to=str(target), reason=reason)
    return target


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint this mtld wrote. Refused: anything the weights-only unpickler will not build
    (it never runs code from the file); ValueError: a damaged file or another format."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[-1][:300] if str(e).strip() else type(e).__name__
        raise Refused(f"{path.name} holds more than tensors and plain data, so it was not loaded "
                      f"(torch.load weights_only=True refused it: {first})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path.name} is not an mtld checkpoint of format {CHECKPOINT_FORMAT}")
    return state


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def checkpoint_due(every_steps: int | None, every_s: float | None, *, step: int, seconds_since: float) -> bool:
    """Is a periodic checkpoint due after optimizer step `step` (epoch ends and stops always save)?
    Every `every_steps` steps, or once `every_s` seconds have passed since the last one (or the start)."""
    if every_steps:
        return step % every_steps == 0
    return every_s is not None and seconds_since >= every_s
