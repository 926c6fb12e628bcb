"""The self-test's report: one pydantic model, its JSON schema documented in docs/selftest-schema.json.

A user attaches the file to a bug report; `Report.model_validate_json` reads it
back. Bump SCHEMA_VERSION when a field changes meaning.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from mtld.disk import PRIVATE_FILE, write_atomic

SCHEMA_VERSION = 1
Status = Literal["pass", "fail", "skipped"]
Group = Literal["everywhere", "linux", "macos", "cuda"]


class Check(BaseModel):
    """One check: its outcome, why (for a failure or a skip), what it measured, what a failure means."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="dotted and stable, e.g. `train.micro_batch_independence`")
    group: Group = Field(description="where the check applies")
    status: Status
    why: str | None = Field(default=None, description="for `fail` and `skipped`: the reason in one line")
    figures: dict[str, Any] = Field(default_factory=dict, description="what was measured (units in the key names)")
    meaning: str = Field(description="what a failure means for an unattended overnight run")
    seconds: float = Field(description="wall time of the check")


class Report(BaseModel):
    """`mtld doctor --selftest`'s JSON report."""

    model_config = ConfigDict(extra="forbid")

    schema_version: int = SCHEMA_VERSION
    created_at: str = Field(description="ISO 8601, UTC")
    quick: bool
    platform: dict[str, Any] = Field(description="sys.platform, machine, OS release, CPU count, memory")
    versions: dict[str, str | None] = Field(description="mtld, Python, torch, transformers, psutil")
    seconds: float = Field(description="wall time of the whole self-test")
    counts: dict[Status, int]
    checks: list[Check]
    files: dict[str, str] = Field(default_factory=dict, description="files written beside the report (traces)")

    @property
    def ok(self) -> bool:
        return self.counts.get("fail", 0) == 0


def write_report(report: Report, path: Path) -> None:
    """The report file, written whole (a temporary file renamed into place) and user-only (0600), like the rest
    of mtld's state: it names the machine, its folders and its users' queued jobs' data."""
    write_atomic(path, (report.model_dump_json(indent=2) + "\n").encode(), mode=PRIVATE_FILE)


SCHEMA_FILE = Path(__file__).resolve().parents[3] / "docs/selftest-schema.json"


def schema_text() -> str:
    """docs/selftest-schema.json, as `python -m mtld.doctor.selftest.report > docs/selftest-schema.json` writes it."""
    return json.dumps(Report.model_json_schema(), indent=2) + "\n"


if __name__ == "__main__":
    import sys

    sys.stdout.write(schema_text())
