"""What every command shares: the app, the settings and the store opened on first use, one-line failures,
JSON output, the id arguments. The commands import this module, never the package (mtld.cli imports them)."""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console

from mtld import __version__
from mtld.logs.events import configure, get_logger
from mtld.config.settings import Settings, SettingsError, load_settings, warn_unknown_variables
from mtld.executor import registry
from mtld.disk import full_text, is_disk_full
from mtld.store import Job, Store, StoreDamaged, StoreError, unavailable
from mtld.store.schema import MAX_ID

app = typer.Typer(
    help="Train multi-task BERT-style encoders overnight, one job at a time.",
    no_args_is_help=True,
    add_completion=True,  # --install-completion / --show-completion SHELL; nothing is written unless asked
    pretty_exceptions_enable=False,
)
out = Console(highlight=False, soft_wrap=True)  # soft_wrap: long lines are never broken


class Context:
    """What every command needs: settings, and the store opened on first use."""

    def __init__(self, config: Path | None):
        self.config = config
        self._settings: Settings | None = None
        self._store: Store | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            try:
                self._settings = load_settings(self.config)
                registry.check_settings(self._settings)  # each executor checks its own table
            except SettingsError as e:
                fail(str(e), code=2)
            try:
                configure(self._settings.daemon_log, level=self._settings.log_level)
            except OSError as e:
                fail(f"{self._settings.daemon_log}: cannot write the log ({e.strerror or e})", code=2)
            warn_unknown_variables(get_logger())  # a typo in a setting is otherwise silent
        return self._settings

    @property
    def store(self) -> Store:
        if self._store is None:
            path = self.settings.db_path
            try:
                self._store = Store(path)
            except StoreDamaged as e:  # its own line says what to do
                fail(str(e), code=2)
            except (sqlite3.DatabaseError, StoreError, OSError) as e:  # too new, locked, full or not writable
                if unavailable(e, path) == "full" or is_disk_full(e):  # the wording of a write refused for room
                    fail(f"{path}: {full_text(path)}: the job store cannot be opened, nothing was changed; free "
                         "some space and try again", code=2)
                fail(f"{path}: cannot use the job store ({e})", code=2)
        return self._store

    def close(self) -> None:
        """At the command's end (click's call_on_close): the store's connection goes back."""
        if self._store is not None:
            self._store.close()
            self._store = None


def fail(message: str, code: int = 1) -> None:
    sys.stderr.write(message.rstrip("\n") + "\n")  # never wrapped: one problem, one line
    raise typer.Exit(code)


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")


def version_callback(value: bool) -> None:
    if value:
        out.print(f"mtld {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    ctx: typer.Context,
    config: Annotated[Optional[Path], typer.Option("--config", envvar="MTLD_CONFIG", help="Config file (TOML).")] = None,
    version: Annotated[bool, typer.Option("--version", callback=version_callback, is_eager=True)] = False,
) -> None:
    ctx.obj = Context(config)
    ctx.call_on_close(ctx.obj.close)
    _contexts.append(ctx.obj)


_contexts: list[Context] = []  # the command's, for the last-resort handler's report folder


JsonFlag = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


def parse_id(text: str) -> int:
    """A job id as written: ASCII digits only (int() would take "1_0" and "１０" as 10: a slip, not an id)."""
    if not (text.isascii() and text.isdigit()):
        raise typer.BadParameter(f"{text!r} is not a job id (a whole number, digits 0-9)")
    return int(text)


def check_ids(value: int | list[int] | None) -> int | list[int] | None:
    """A job id the store could hold: 1 to 2**63-1 (a larger number is bad input, not an unknown job)."""
    for job_id in value if isinstance(value, list) else [value]:
        if job_id is not None and not 0 < job_id <= MAX_ID:
            fail(f"{job_id}: not a job id (ids run from 1 to {MAX_ID})", code=2)
    return value


JobId = Annotated[int, typer.Argument(metavar="ID", parser=parse_id, callback=check_ids, help="A job id.")]

# ------------------------------------------------------------------ helpers


def get_job(c: Context, job_id: int) -> Job:
    job = c.store.get(job_id)
    if job is None:
        fail(f"no job {job_id}")
    return job
