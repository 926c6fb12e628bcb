"""The self-test's machinery: a check is a function of a Context that passes, fails or skips.

A check raises `Skipped(why)` when this machine cannot run it and `Failed(why,
figures)` when it ran and found a problem; what it returns are its figures.
Anything else it raises is a failure too (the report names the exception).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mtld.platform.runner import Runner, SubprocessRunner
from mtld.doctor.selftest.report import Check, Group


class Skipped(Exception):
    """This machine cannot run the check; the message says why."""


class Failed(Exception):
    def __init__(self, why: str, figures: dict[str, Any] | None = None):
        super().__init__(why)
        self.figures = figures or {}


@dataclass
class Context:
    """What checks share: the throwaway state folder, the mode, the OS edge, and results of earlier checks."""

    home: Path  # a throwaway MTLD_HOME: never the user's state
    quick: bool = True
    runner: Runner = field(default_factory=lambda: SubprocessRunner(timeout_s=60))
    platform: str = sys.platform
    python: str = sys.executable
    out_dir: Path | None = None  # where traces go, beside the report (unset: the throwaway home, never here)
    label_suffix: str = field(default_factory=lambda: f"{os.getpid()}")  # throwaway agent names
    shared: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep

    def __post_init__(self) -> None:
        if self.out_dir is None:
            self.out_dir = self.home


@dataclass(frozen=True)
class Spec:
    name: str
    group: Group
    meaning: str  # what a failure means for an overnight run
    run: Callable[[Context], dict[str, Any]]


def run_check(spec: Spec, ctx: Context) -> Check:
    started = time.monotonic()
    status, why, figures = "pass", None, {}
    try:
        figures = spec.run(ctx) or {}
    except Skipped as e:
        status, why = "skipped", str(e)
    except Failed as e:
        status, why, figures = "fail", str(e), e.figures
    except Exception as e:  # a check that breaks is a failed check, never a traceback
        status, why = "fail", f"{type(e).__name__}: {e}"
    return Check(name=spec.name, group=spec.group, status=status, why=why, figures=figures, meaning=spec.meaning,
                 seconds=round(time.monotonic() - started, 3))


def require(condition: bool, why: str, **figures: Any) -> None:
    if not condition:
        raise Failed(why, figures)
