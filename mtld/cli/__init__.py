"""The `mtld` command: parse, call a function, render a table or JSON. Nothing else.

This module holds the app and what every command shares (settings and the
store, one-line failures, JSON output); the commands live by topic:
`queue` (submit, status, show, schedules, cancel, retry, logs), `lifecycle`
(wait, restart, set), `training` (train, predict, estimate, report), `service`
(daemon, pause, resume, agent, doctor) and `cleaning` (clean, remove).
Rendering is mtld.cli.render's.
"""

from __future__ import annotations

import sys

from mtld.cli.common import _contexts, app

__all__ = ["app", "main"]


def main(argv: list[str] | None = None) -> None:
    """The console script. The last resort: no traceback reaches a user; an internal error prints one
    line naming a crash report (mtld.cli.crash) and exits 1."""
    try:
        app(args=argv, prog_name="mtld")  # also under `python -m mtld`: completions call `mtld`
    except Exception as e:  # SystemExit and KeyboardInterrupt are not Exceptions: they pass
        from mtld.cli.crash import write_report

        settings = _contexts[-1]._settings if _contexts else None
        report = write_report(e, sys.argv[1:] if argv is None else argv, settings.state_dir if settings else None)
        where = f"; report: {report}" if report else " (no report could be written)"
        summary = " ".join(str(e).split())[:200]
        sys.stderr.write(f"mtld: internal error: {type(e).__name__}: {summary}{where}\n")
        sys.exit(1)


# The commands register themselves on `app` when their modules load (in the order `mtld --help` lists them).
from mtld.cli import queue, lifecycle, training, service, cleaning  # noqa: E402,F401,I001
