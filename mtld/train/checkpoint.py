"""Checkpoints: one torch.save'd dict per file, written to a temporary file and renamed.

    checkpoints/.step-N.pt.tmp  →  os.replace  →  checkpoints/step-%08d.pt

The previous checkpoint stays until the new one is complete, then the oldest
beyond `keep` are removed. A checkpoint holds everything an exact resume
needs: model and heads, optimizer, scheduler, RNG states, the position in the
batch plan, the micro-batch, the best score and the evaluation history.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

CHECKPOINT_FORMAT = 1


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}.pt"


def save_checkpoint(directory: Path, step: int, state: dict[str, Any], *, keep: int) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / checkpoint_name(step)
    tmp = directory / f".step-{step}.pt.tmp"
    try:
        with open(tmp, "wb") as f:
            torch.save({"format": CHECKPOINT_FORMAT, **state}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(directory)
    prune(directory, keep)
    return final


def prune(directory: Path, keep: int) -> None:
    """Keep the newest `keep` checkpoints; drop temporary files a killed writer left behind."""
    for old in sorted(directory.glob("step-*.pt"))[:-keep] + list(directory.glob(".step-*.pt.tmp")):
        old.unlink(missing_ok=True)


def load_checkpoint(path: Path) -> dict[str, Any]:
    # weights_only=False: only ever our own files, which hold RNG states (Python
    # tuples, NumPy arrays) that the weights-only unpickler refuses.
    state = torch.load(path, map_location="cpu", weights_only=False)
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
