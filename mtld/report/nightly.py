"""The night's page on disk: written by `mtld report` (and so by the daemon, through a child), found by `status`.

Pages go to STATE/reports/night-YYYYMMDD-HHMM.html (the end of their window), unless `--out` says
otherwise; `latest_page` is the newest there. `NightReport` is the daemon's side: when the queue empties
after a night's work it starts `mtld report` as a child process, so matplotlib never loads in the daemon
and the drawing's memory goes back to the system when the child ends; each tick looks at the child, and a
page written is announced once (a notification naming it, where notifications are on).

Imports nothing heavy: the daemon holds a NightReport.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from mtld.config.settings import Settings
from mtld.disk import write_atomic
from mtld.logs.events import get_logger, iso
from mtld.report.night import Night, collect_night, last_stretch
from mtld.store import Store

FALLBACK_WINDOW_S = 12 * 3600.0  # when the queue was never busy: the last 12 hours
MARGIN_S = 60.0  # the default window goes on a little after the queue emptied: 3 % of it, at most this
FIGURE_DPI = 72  # the per-run figures on the page (a 9-inch-wide figure: 648 pixels)
Start = Callable[[list[str]], Any]  # starts a command; returns a handle with poll(), wait(timeout), communicate()


def reports_dir(settings: Settings) -> Path:
    return settings.state_dir / "reports"


def page_path(settings: Settings, until: float) -> Path:
    return reports_dir(settings) / f"night-{datetime.fromtimestamp(until):%Y%m%d-%H%M}.html"


def latest_page(settings: Settings) -> Path | None:
    """The newest night's page in the reports folder (the names sort as their times do)."""
    try:
        pages = sorted(reports_dir(settings).glob("night-*.html"))
    except OSError:
        return None
    return pages[-1] if pages else None


def write_night(settings: Settings, store: Store, *, since: float | None, until: float,
                out: Path | None = None) -> tuple[Path, Night]:
    """Collect the night from `since` to `until`, draw each job's run, write the page; logs `report.written`.
    Returns the page's path and the night. `since` None: the last stretch in which the queue was busy (from
    when it went from empty to busy to when it was empty again, if it is by `until`)."""
    from mtld.report.figure import figure_png
    from mtld.report.page import render_page
    from mtld.report.run import run_series

    stretch = last_stretch(store, until) if since is None else None
    if stretch is not None:
        since, until = stretch[0], min(until, stretch[1] + min(MARGIN_S, 0.03 * (stretch[1] - stretch[0])))
    night = collect_night(settings, store, since if since is not None else until - FALLBACK_WINDOW_S, until)
    night.default_window = stretch is not None
    figures = {}
    for view in night.jobs:
        if view.run_dir is not None and (view.run_dir / "run.jsonl").is_file():
            figures[view.job.id] = figure_png(run_series(view.run_dir), dpi=FIGURE_DPI)
    out = Path(out) if out else page_path(settings, until)
    write_atomic(out, render_page(night, figures).encode("utf-8"))  # user-only, like every file mtld writes
    get_logger().info("report.written", path=str(out), since=iso(night.since), until=iso(night.until),
                      jobs=len(night.jobs), failed=sum(v.needs_attention for v in night.jobs))
    return out, night


def _start_child(argv: list[str]) -> subprocess.Popen[bytes]:
    # its own session: a stop signal for the daemon's process group does not cut a page half-written
    return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)


class NightReport:
    """Watches the queue through the daemon's ticks: busy (a job running, or queued that could start) to
    empty after at least one run → the night's page, written by a child (`mtld report --out PAGE`)."""

    def __init__(self, settings: Settings, log: Any, *, notify: Callable[[str, str], Any] | None = None,
                 start: Start = _start_child) -> None:
        self.settings, self.log, self.notify, self.start = settings, log, notify, start
        self.busy = False
        self.ran = False  # a run was active since the queue went busy
        self.child: Any = None
        self.page: Path | None = None

    def observe(self, *, busy: bool, running: bool, now: float) -> None:
        """One tick's look: `busy` (work to do or being done), `running` (a run is active now)."""
        self.look()
        self.ran = self.ran or running
        if self.busy and not busy and self.ran and self.child is None:
            self.write(now)
        if not busy:
            self.ran = False
        self.busy = busy

    def write(self, now: float) -> None:
        self.page = page_path(self.settings, now)
        config = ["--config", str(self.settings.config_file)] if self.settings.config_file else []
        try:
            self.child = self.start([sys.executable, "-m", "mtld", *config, "report", "--out", str(self.page)])
        except OSError as e:  # the queue goes on without its page
            self.log.warning("report.failed", path=str(self.page), error=f"{type(e).__name__}: {e}")

    def look(self) -> None:
        """The child has ended: announce the page, or log why there is none."""
        if self.child is None or self.child.poll() is None:
            return
        child, self.child = self.child, None
        _, stderr = child.communicate()
        if child.returncode == 0 and self.page is not None:
            if self.notify is not None:
                self.notify("mtld: the night's report", f"What ran overnight: {self.page}")
            return
        error = (stderr or b"").decode("utf-8", "replace").strip().splitlines()
        self.log.warning("report.failed", path=str(self.page), exit_code=child.returncode,
                         error=error[-1] if error else None)

    def close(self, timeout_s: float) -> None:
        """At the daemon's end: give a page being written up to `timeout_s` to finish."""
        if self.child is not None:
            try:
                self.child.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                return  # it goes on alone; the next daemon does not wait for it
            self.look()
