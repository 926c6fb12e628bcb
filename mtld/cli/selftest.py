"""`mtld doctor --selftest`: run, write the report, print the table or the JSON."""

from __future__ import annotations

import sys
from pathlib import Path

from mtld.config.settings import Settings


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


def run(settings: Settings, *, quick: bool, out_file: Path | None, as_json: bool) -> int:
    from mtld.cli.common import emit_json, out
    from mtld.doctor.selftest import default_out, run_selftest, write_report
    from mtld.doctor.selftest.show import line, table

    path = out_file or default_out()
    from mtld.platform.agent import stop_grace_s

    shared = {"user_folders": user_folders(settings), "exit_timeout_s": stop_grace_s(settings),
              "budget_fraction": settings.memory.budget_fraction}
    report = run_selftest(quick=quick, out_dir=path.parent, shared=shared,
                          progress=lambda check: print(line(check), file=sys.stderr, flush=True))
    write_report(report, path)
    if as_json:
        emit_json(report.model_dump(mode="json"))
    else:
        table(out, report, str(path))
    return 0 if report.ok else 1
