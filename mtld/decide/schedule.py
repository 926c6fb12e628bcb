"""When training may happen: inside a run window or not, when the next opens, when work started now ends,
and whether a recurring job is due. Pure: `now` is passed in. Windows and cron expressions are parsed
where they are written (mtld.config.calendar).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from mtld.config.calendar import Window, next_firing


def open_window(windows: list[Window], now: datetime) -> tuple[datetime, datetime] | None:
    """(opened, closes) of a window `now` is inside, the one closing last; None outside all."""
    spans = [(s, s + w.length) for w in windows for s in w.openings(now) if s <= now < s + w.length]
    return max(spans, key=lambda span: span[1]) if spans else None


def inside(windows: list[Window], now: datetime) -> bool:
    """No windows means training is always allowed."""
    return not windows or open_window(windows, now) is not None


def next_opening(windows: list[Window], now: datetime) -> datetime | None:
    """When the next window opens after `now` (None without windows)."""
    starts = [s for w in windows for s in w.openings(now) if s > now]
    return min(starts) if starts else None


def first_open(windows: list[Window], at: datetime) -> datetime:
    """`at` if training may happen then, else the next window's opening."""
    if inside(windows, at):
        return at
    return next_opening(windows, at) or at


def finish_time(windows: list[Window], start: datetime, seconds: float, at_window_end: str) -> datetime:
    """When `seconds` of training started at `start` (inside a window) end: straight through with
    at_window_end = "finish"; with "checkpoint", paused at each window's end and resumed at the next opening."""
    if not windows or at_window_end != "checkpoint":
        return start + timedelta(seconds=seconds)
    at, left = start, seconds
    for _ in range(10_000):  # bounded: each pass ends a window or the work
        span = open_window(windows, at)
        if span is None:
            opening = next_opening(windows, at)
            if opening is None:
                break
            at = opening
            continue
        room = (span[1] - at).total_seconds()
        if left <= room:
            break
        left, at = left - room, span[1]
    return at + timedelta(seconds=left)


def keep_awake(opens_at: float | None, now: float, *, ahead_s: float, on_mains: bool) -> bool:
    """Whether the wait for a run window that opens at `opens_at` (None: no job waits for one) keeps the
    machine from idle-sleeping now: within `ahead_s` of the opening, and on mains power only."""
    return opens_at is not None and on_mains and ahead_s > 0 and 0 < opens_at - now <= ahead_s


# ------------------------------------------------------------------ recurring jobs


def firing(expression: str, due_at: datetime, now: datetime) -> tuple[bool, datetime]:
    """(fire now?, the next due time). Firings missed while the machine slept or the
    daemon was down are coalesced: one run, then the next firing after `now`."""
    if due_at > now:
        return False, due_at
    return True, next_firing(expression, now)


def fired_job_name(name: str, at: datetime) -> str:
    """Each firing's job (and so its run folder) is dated: reviews-20261128-0100."""
    return f"{name}-{at.astimezone():%Y%m%d-%H%M}"
