"""The docs stay in step with the code: every event the code logs is in the event vocabulary (docs/logs.md)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOG_CALL = re.compile(r"\.(?:debug|info|warning|error|exception)\(\s*\"([a-z_]+(?:\.[a-z_]+)+)\"")


def test_every_logged_event_is_in_the_vocabulary():
    logged = {m for path in (ROOT / "mtld").rglob("*.py") for m in LOG_CALL.findall(path.read_text(encoding="utf-8"))}
    first_cells = re.findall(r"^\| (`[^|]+) \|", (ROOT / "docs" / "logs.md").read_text(encoding="utf-8"), re.M)
    vocabulary = {name for cell in first_cells for name in re.findall(r"`([a-z_.]+)`", cell)}
    assert len(logged) > 20  # the pattern still finds the log calls
    assert sorted(logged - vocabulary) == []
