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

import typer

try:  # typer bundles its own click from 0.2x on; before, it used click itself
    from typer._click import exceptions as click
except ImportError:  # pragma: no cover - an older typer
    from click import exceptions as click  # type: ignore[no-redef]

from mtld.cli.common import _contexts, app

__all__ = ["app", "main"]


def main(argv: list[str] | None = None) -> None:
    """The console script. A usage error (an unknown option, a value of the wrong kind) is one line and exit 2,
    as a bad job file is. The last resort: no traceback reaches a user; an internal error prints one line
    naming a crash report (mtld.cli.crash) and exits 1."""
    try:
        # standalone_mode=False: click hands usage errors back instead of drawing its boxes (click's
        # BaseCommand.main); a command's typer.Exit comes back as its code
        code = app(args=argv, prog_name="mtld", standalone_mode=False)  # also `python -m mtld`: completions call mtld
    except click.UsageError as e:
        sys.stderr.write(usage_line(e) + "\n")
        sys.exit(2)
    except typer.Abort:  # Ctrl-C at a prompt
        sys.stderr.write("mtld: aborted\n")
        sys.exit(1)
    except Exception as e:  # SystemExit and KeyboardInterrupt are not Exceptions: they pass
        from mtld.cli.crash import write_report

        settings = _contexts[-1]._settings if _contexts else None
        report = write_report(e, sys.argv[1:] if argv is None else argv, settings.state_dir if settings else None)
        where = f"; report: {report}" if report else " (no report could be written)"
        summary = " ".join(str(e).split())[:200]
        sys.stderr.write(f"mtld: internal error: {type(e).__name__}: {summary}{where}\n")
        sys.exit(1)
    finally:
        _contexts.clear()  # each call its own (tests call main again and again in one process)
    sys.exit(code if isinstance(code, int) else 0)


def usage_line(error: click.UsageError) -> str:
    """A usage error as one line: `--option: message` (or the argument's name), else click's message."""
    command = error.ctx.command_path if error.ctx else "mtld"
    if isinstance(error, click.NoSuchOption):
        return f"{error.option_name}: no such option for `{command}` (see {command} --help)"
    if isinstance(error, click.MissingParameter) and error.param is not None:
        return f"{(error.param.name or 'argument').upper()}: missing (see {command} --help)"
    if isinstance(error, click.BadParameter) and error.param is not None:
        opts = getattr(error.param, "opts", None)
        hint = opts[0] if error.param.param_type_name == "option" and opts else (error.param.name or "argument").upper()
        return f"{hint}: {' '.join(error.message.split())}"
    return f"{command}: {' '.join(error.format_message().split())}"


# The commands register themselves on `app` when their modules load (in the order `mtld --help` lists them).
from mtld.cli import queue, lifecycle, training, service, cleaning  # noqa: E402,F401,I001
