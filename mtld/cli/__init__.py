"""The `mtld` command: parse, call a function, render a table or JSON. Nothing else.

This module holds the app and what every command shares (settings and the
store, one-line failures, JSON output); the commands live by topic:
`queue` (submit, status, show, schedules, cancel, retry, logs), `training`
(train, predict, estimate, report), `service` (daemon, pause, resume,
agent, doctor) and `cleaning` (clean, remove). Rendering is mtld.render's.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console

from mtld import __version__
from mtld.logs import configure
from mtld.settings import Settings, SettingsError, load_settings
from mtld.store import Job, Store

app = typer.Typer(
    help="Train multi-task BERT-style encoders overnight, one job at a time.",
    no_args_is_help=True,
    add_completion=False,
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
            except SettingsError as e:
                fail(str(e), code=2)
            configure(self._settings.daemon_log, level=self._settings.log_level)
        return self._settings

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = Store(self.settings.db_path)
        return self._store


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


JsonFlag = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]



# ------------------------------------------------------------------ helpers


def get_job(c: Context, job_id: int) -> Job:
    job = c.store.get(job_id)
    if job is None:
        fail(f"no job {job_id}")
    return job



def main() -> None:
    app()


# The commands register themselves on `app` when their modules load (in the order `mtld --help` lists them).
from mtld.cli import queue, training, service, cleaning  # noqa: E402,F401,I001
