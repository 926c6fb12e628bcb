"""Durations as people write them: "90s", "10m", "1h", "7d" (a number and a unit; decimals allowed).

Used by a job's `train.checkpoint_every` (a duration or a number of steps) and
`mtld clean --older-than`. Pure and standard-library only.
"""

from __future__ import annotations

import math
import re

UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
PATTERN = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*([smhd])")  # ASCII digits: \d would take "１０d"


def parse_duration(text: str) -> float:
    """Seconds in `text` ("90s", "10m", "1.5h", "7d"); ValueError with the reason otherwise."""
    match = PATTERN.fullmatch(text.strip().lower())
    if match is None:
        raise ValueError(f"not a duration: {text!r} (use a number and s, m, h or d: 90s, 10m, 1h, 7d)")
    seconds = float(match.group(1)) * UNITS[match.group(2)]
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"a duration must be more than 0, not {text!r}")
    return seconds


def checkpoint_interval(every: int | str) -> tuple[int | None, float | None]:
    """`train.checkpoint_every` as (steps, None) for a number of steps or (None, seconds) for a duration."""
    if isinstance(every, int):
        return every, None
    return None, parse_duration(every)
