"""`mtld doctor --selftest`: every check this machine allows, on throwaway state, into one report.

Nothing touches the user's queue or agent: checks get a fresh temporary
MTLD_HOME, a throwaway launchd label or systemd unit name, and a tiny model
built on the spot. A check of another platform is reported as skipped, with why.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform as platform_module
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mtld import __version__
from mtld.doctor.selftest import common, cuda, linux, macos, macos_agent
from mtld.doctor.selftest.base import Context, Failed, Skipped, Spec, run_check
from mtld.doctor.selftest.report import Check, Report, write_report

__all__ = ["ALL_CHECKS", "Context", "Failed", "Report", "Skipped", "Spec", "default_out", "run_selftest",
           "write_report"]  # write_report: mtld.doctor.selftest.report's

ALL_CHECKS: list[Spec] = [*common.CHECKS, *linux.CHECKS, *macos.CHECKS, *macos_agent.CHECKS, *cuda.CHECKS]


def default_out(folder: Path, now: datetime | None = None) -> Path:
    """The report's file in `folder` (the CLI's: the state folder's selftest/), named by the time."""
    now = now or datetime.now()
    return folder / f"mtld-selftest-{now:%Y%m%d-%H%M%S}.json"


def run_selftest(*, quick: bool, out_dir: Path, checks: Iterable[Spec] | None = None,
                 context: Callable[[Path], Context] | None = None, shared: dict[str, Any] | None = None,
                 progress: Callable[[Check], None] | None = None) -> Report:
    """Run the checks on a fresh temporary MTLD_HOME (removed afterwards) and return the report. `out_dir`:
    where files that outlive the run go, beside the report (a Mac's memory trace)."""
    started = time.monotonic()
    home = Path(tempfile.mkdtemp(prefix="mtld-selftest-"))
    try:
        ctx = context(home) if context else Context(home=home)
        ctx.quick, ctx.out_dir = quick, out_dir
        ctx.shared.update(shared or {})
        results = []
        for spec in ALL_CHECKS if checks is None else checks:
            results.append(run_check(spec, ctx))
            if progress:
                progress(results[-1])
    finally:
        shutil.rmtree(home, ignore_errors=True)
    counts = {status: sum(1 for c in results if c.status == status) for status in ("pass", "fail", "skipped")}
    return Report(created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"), quick=quick,
                  platform=platform_facts(), versions=versions(), seconds=round(time.monotonic() - started, 2),
                  counts=counts, checks=results, files=ctx.files)


def platform_facts() -> dict[str, Any]:
    import psutil

    facts: dict[str, Any] = {"sys_platform": sys.platform, "machine": platform_module.machine(),
                             "release": platform_module.release(), "os": platform_module.platform(),
                             "cpus": os.cpu_count(), "memory_bytes": psutil.virtual_memory().total}
    if sys.platform == "darwin":
        facts["macos"] = platform_module.mac_ver()[0]
    return facts


def versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {"mtld": __version__, "python": platform_module.python_version()}
    for package in ("torch", "transformers", "psutil", "pydantic"):
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = None
    return found
