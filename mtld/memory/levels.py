"""The shared vocabulary of memory pressure: `Level`, `Reading` and the `Probe` every source implements.

A `Reading` is the level (normal, warn, critical), available and total bytes,
swap used, and in `detail` the raw inputs that explain the level.
`available_level` is here because every probe takes the worst of its own
level and this one. Torch-free, like the whole package.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol


class Level(StrEnum):
    """Memory pressure, ordered: NORMAL < WARN < CRITICAL (not by spelling)."""

    NORMAL = "normal"
    WARN = "warn"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        return _RANK[self]

    def __lt__(self, other: object) -> bool:
        return self.rank < Level(other).rank  # type: ignore[arg-type]

    def __le__(self, other: object) -> bool:
        return self.rank <= Level(other).rank  # type: ignore[arg-type]

    def __gt__(self, other: object) -> bool:
        return self.rank > Level(other).rank  # type: ignore[arg-type]

    def __ge__(self, other: object) -> bool:
        return self.rank >= Level(other).rank  # type: ignore[arg-type]


_RANK = {Level.NORMAL: 0, Level.WARN: 1, Level.CRITICAL: 2}


def worst(*levels: Level) -> Level:
    return max(levels, key=_RANK.__getitem__, default=Level.NORMAL)


def available_level(available: int | None, total: int | None, *, warn: float, critical: float) -> Level:
    """At least warn / critical when the available share of total is below `warn` / `critical`."""
    if available is None or not total or total <= 0:
        return Level.NORMAL
    share = available / total
    if share < critical:
        return Level.CRITICAL
    if share < warn:
        return Level.WARN
    return Level.NORMAL


@dataclass(frozen=True)
class Reading:
    level: Level
    available_bytes: int | None
    total_bytes: int | None
    swap_used_bytes: int | None
    source: str  # "linux", "macos", "simulated", "replay", "scripted"
    detail: dict[str, Any] = field(default_factory=dict)  # raw inputs; "notes": what could not be read
    # What a new run can use, where that is not `available_bytes`: on macOS free + speculative + inactive
    # pages, capped where the kernel would warn (mtld.memory.macos.mac_fit; not kern.memorystatus_level,
    # which counts other programs' active pages). None: `available_bytes` is that figure.
    usable_bytes: int | None = None

    @property
    def fit_bytes(self) -> int | None:
        """What the fits-or-defer check compares a size's peak with."""
        return self.available_bytes if self.usable_bytes is None else self.usable_bytes

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe fields for `memory.sample` events and `mtld doctor`."""
        return {
            "pressure": self.level.value,  # not "level": every log line's "level" is its log level
            "available_bytes": self.available_bytes,
            "total_bytes": self.total_bytes,
            "swap_used_bytes": self.swap_used_bytes,
            "usable_bytes": self.fit_bytes,
            "source": self.source,
            "detail": dict(self.detail),
        }


class Probe(Protocol):
    def read(self) -> Reading:
        """One reading; cheap (called about once a second) and never raising for a missing source."""


def error_text(exc: BaseException) -> str:
    """An exception as a short note or event field: `OSError: ...`, at most 200 characters."""
    return f"{type(exc).__name__}: {exc}"[:200]
