"""`mtld doctor --selftest`: run, write the report, print the table or the JSON.

The report (and any trace beside it) goes under the state folder's `selftest/`
unless `--out` names the file: never into the current folder, which is often a
project checkout. Its path is printed either way (on stderr with `--json`).
"""

from __future__ import annotations

import sys
from pathlib import Path

from mtld.config.settings import Settings
from mtld.disk import private_dir


def user_folders(settings: Settings) -> list[tuple[str, Path]]:
    """The user's state folder and the folders of queued jobs' data (read, never written): what the
    throwaway agent must be able to read on macOS."""
    folders = [("MTLD_HOME", settings.state_dir)]
    try:
        from mtld.config.jobspec import spec_from_json
        from mtld.store import Store

        if settings.db_path.exists():
            with Store(settings.db_path) as store:
                for job in store.list_jobs(["queued"]):
                    for task in spec_from_json(job.spec_json).tasks:
                        folders.append((f"job {job.id} data", Path(task.train).parent))
    except Exception:  # an unreadable store only narrows the check
        pass
    return list(dict.fromkeys(folders))


def report_path(settings: Settings, out_file: Path | None) -> Path:
    """`--out`, else a dated file in the state folder's `selftest/`."""
    from mtld.doctor.selftest import default_out

    return (out_file or default_out(folder=settings.state_dir / "selftest")).absolute()


def run(settings: Settings, *, quick: bool, out_file: Path | None, as_json: bool) -> int:
    from mtld.cli.common import emit_json, out
    from mtld.doctor.selftest import run_selftest
    from mtld.doctor.selftest.report import write_report
    from mtld.doctor.selftest.show import line, table
    from mtld.platform.agent import stop_grace_s

    path = report_path(settings, out_file)
    private_dir(path.parent)  # before the checks: a trace is written beside the report as it is taken
    shared = {"user_folders": user_folders(settings), "exit_timeout_s": stop_grace_s(settings),
              "budget_fraction": settings.memory.budget_fraction}
    report = run_selftest(quick=quick, out_dir=path.parent, shared=shared,
                          progress=lambda check: print(line(check), file=sys.stderr, flush=True))
    write_report(report, path)
    if as_json:
        emit_json(report.model_dump(mode="json"))
        print(f"mtld doctor: the report is {path}", file=sys.stderr)
    else:
        table(out, report, str(path))
    return 0 if report.ok else 1
