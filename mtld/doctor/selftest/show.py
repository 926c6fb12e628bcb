"""The self-test's table (the JSON report is the model itself)."""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console

from mtld.doctor.selftest.report import Check, Report

MARKS = {"pass": "pass", "fail": "FAIL", "skipped": "skipped"}


def line(check: Check) -> str:
    """One line per finished check, for stderr while the test runs."""
    why = f": {check.why}" if check.why else ""
    return f"{check.status:>7}  {check.name} ({check.seconds:.1f} s){why}"


def figures_text(figures: dict[str, Any], limit: int = 160) -> str:
    text = ", ".join(f"{k}={json.dumps(v, default=str)}" for k, v in figures.items() if v is not None)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def table(out: Console, report: Report, path: str) -> None:
    """One line per check (never wrapped): name, result, seconds, then its figures, or why it failed or was
    skipped and, for a failure, what that means for an overnight run."""
    for check in report.checks:
        detail = check.why if check.status != "pass" else figures_text(check.figures)
        out.print(f"{check.name:<32} {MARKS[check.status]:<8} {check.seconds:>6.1f}  ", end="")
        out.print(detail or "", markup=False)
        if check.status == "fail":
            out.print(f"{'':<49}{check.meaning}", markup=False)
    c = report.counts
    out.print(f"{c.get('pass', 0)} passed, {c.get('fail', 0)} failed, {c.get('skipped', 0)} skipped "
              f"in {report.seconds:.0f} s; the report is {path}", markup=False)
