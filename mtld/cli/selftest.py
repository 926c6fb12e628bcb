"""`mtld doctor --selftest`: run, write the report, print the table or the JSON.

The report (and any trace beside it) goes under the state folder's `selftest/`
unless `--out` names the file: never into the current folder, which is often a
project checkout. Its path is printed either way (on stderr with `--json`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

from mtld.config.settings import Settings
from mtld.disk import private_dir


def user_folders(settings: Settings, env: Mapping[str, str] | None = None) -> list[tuple[str, Path]]:
    """What the throwaway agent must be able to read on macOS (read, never written): the state folder, the
    config file, the Hugging Face cache, CA bundle and token file the agent is given (`env`: the installed
    agent's environment, else this shell's), and every queued job's model, data and output."""
    from mtld.platform.privacy import environment_paths, job_paths

    found = [("MTLD_HOME", settings.state_dir)]
    if settings.config_file is not None:
        found.append(("the config file", settings.config_file))
    carried = dict(os.environ if env is None else env)
    carried.pop("MTLD_HOME", None)  # the state folder as these settings have it, above
    found += [(what, Path(path)) for what, path in environment_paths(carried)]
    try:
        from mtld.config.jobspec import spec_from_json
        from mtld.store import Store

        if settings.db_path.exists():
            with Store(settings.db_path) as store:
                for job in store.list_jobs(["queued"]):
                    found += job_paths(f"job {job.id}", spec_from_json(job.spec_json))
    except Exception:  # an unreadable store only narrows the check
        pass
    return list(dict.fromkeys(found))


def agent_python(home: Path | None = None) -> str:
    """The Python mtld's agent runs: the installed LaunchAgent's, else the one `mtld agent install` would
    write (this interpreter, its venv's path unresolved)."""
    from mtld.platform import launchd

    installed = launchd.read_installed(Path.home() if home is None else home)
    program = (installed or {}).get("ProgramArguments") or []
    return str(program[0]) if program else os.path.abspath(sys.executable)


def installed_env(home: Path | None = None) -> dict[str, str] | None:
    """The installed LaunchAgent's EnvironmentVariables, or None when there is none."""
    from mtld.platform import launchd

    installed = launchd.read_installed(Path.home() if home is None else home)
    return None if installed is None else dict(installed.get("EnvironmentVariables") or {})


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
    shared = {"user_folders": user_folders(settings, installed_env()), "agent_python": agent_python(),
              "exit_timeout_s": stop_grace_s(settings), "budget_fraction": settings.memory.budget_fraction}
    report = run_selftest(quick=quick, out_dir=path.parent, shared=shared,
                          progress=lambda check: print(line(check), file=sys.stderr, flush=True))
    write_report(report, path)
    if as_json:
        emit_json(report.model_dump(mode="json"))
        print(f"mtld doctor: the report is {path}", file=sys.stderr)
    else:
        table(out, report, str(path))
    return 0 if report.ok else 1
