"""The training child: `python -P -m mtld.train RUN_DIR` runs one attempt of a run.

Importing this package is cheap and torch-free (the daemon may import it);
torch, transformers and the rest load only inside `run_attempt`.

    run_attempt(run_dir, console=None, guard=None) -> exit status
    mtld.train.predict.predict(model_dir, input_path, output_path) -> rows written
"""

from __future__ import annotations

from pathlib import Path
from typing import TextIO

from mtld.train.errors import BadInput
from mtld.train.guard import Advice, Guard, NoGuard

__all__ = ["Advice", "BadInput", "Guard", "NoGuard", "run_attempt"]


def run_attempt(run_dir: Path, *, console: TextIO | None = None, guard: Guard | None = None) -> int:
    """Run the attempt described by RunDir(run_dir) in this process; returns its exit status.

    Resumes from the newest checkpoint if there is one. Writes run.jsonl,
    result.json (always, unless a newer attempt owns the folder), checkpoints, metrics.json, and model/ and best/.
    `console` (e.g. sys.stderr) also gets a readable line per event.
    """
    from mtld.train.attempt import run_attempt as run

    return run(Path(run_dir), console=console, guard=guard)
