"""Commands that free disk space: clean, remove (mtld.queue.cleanup does the work)."""

from __future__ import annotations

import time
from typing import Annotated, Optional

import typer

from mtld.cli import render
from mtld.queue import cleanup
from mtld.cli.common import Context, JsonFlag, app, emit_json, fail, out
from mtld.config.durations import parse_duration
from mtld.store import InvalidTransition, UnknownJob

KeepModels = Annotated[bool, typer.Option("--keep-models", help="Keep model/ and best/ (and the small records); "
                                          "remove the checkpoints and the rest.")]
DryRun = Annotated[bool, typer.Option("--dry-run", help="Say what would go and how much it frees; remove nothing.")]


@app.command()
def clean(
    ctx: typer.Context,
    older_than: Annotated[Optional[str], typer.Option("--older-than", help="Only jobs that finished at least this "
                                                      "long ago: 30m, 12h, 7d (default: every finished job).")] = None,
    keep_models: KeepModels = False,
    dry_run: DryRun = False,
    as_json: JsonFlag = False,
) -> None:
    """Remove finished jobs' run folders (checkpoints, models, logs) and say how much space that freed."""
    c: Context = ctx.obj
    try:
        seconds = parse_duration(older_than) if older_than is not None else None
    except ValueError as e:
        fail(f"--older-than: {e}", code=2)
    info = cleanup.clean(c.settings, c.store, now=time.time(), older_than_s=seconds, keep_models=keep_models,
                         dry_run=dry_run)
    emit_json(info) if as_json else render.cleaned(out, info)


@app.command()
def remove(ctx: typer.Context, job_id: int, keep_models: KeepModels = False, dry_run: DryRun = False,
           as_json: JsonFlag = False) -> None:
    """Remove one finished job and its run folder."""
    c: Context = ctx.obj
    try:
        info = cleanup.remove(c.settings, c.store, job_id, now=time.time(), keep_models=keep_models, dry_run=dry_run)
    except (UnknownJob, InvalidTransition) as e:
        fail(str(e))
    emit_json(info) if as_json else render.cleaned(out, info)
