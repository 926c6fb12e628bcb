"""Run windows and cron expressions as people write them: parsed and checked (the decisions: mtld.decide.schedule).

A window is a local-time span such as "22:00-07:00", optionally limited to
days of the week ("mon-fri 22:00-07:00", "sat,sun 09:00-18:00"). The days name
the day a window opens, so "fri 22:00-07:00" runs into Saturday morning.
Recurring jobs use cron syntax, parsed and computed by APScheduler's CronTrigger.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, time, timedelta, timezone, tzinfo

from apscheduler.triggers.cron import CronTrigger

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_SPAN = re.compile(r"^(?:(?P<days>[a-z,\-]+)\s+)?(?P<start>\d{1,2}:\d{2})-(?P<end>\d{1,2}:\d{2})$")


class ScheduleError(ValueError):
    """A window or cron expression that cannot be used; the message says why."""


@dataclass(frozen=True)
class Window:
    start: time
    end: time  # may be earlier than start: the window crosses midnight
    days: frozenset[int]  # weekdays (0 = Monday) on which the window opens

    @property
    def length(self) -> timedelta:
        start = timedelta(hours=self.start.hour, minutes=self.start.minute)
        end = timedelta(hours=self.end.hour, minutes=self.end.minute)
        return end - start if end > start else end - start + timedelta(days=1)  # equal: a whole day

    def openings(self, around: datetime) -> list[datetime]:
        """The window's openings from the day before `around` to a week after it."""
        first = around.date() - timedelta(days=1)
        starts = []
        for offset in range(9):
            day = first + timedelta(days=offset)
            if day.weekday() in self.days:
                starts.append(datetime.combine(day, self.start, tzinfo=around.tzinfo))
        return starts


def parse_window(text: str) -> Window:
    match = _SPAN.match(text.strip().lower())
    if not match:
        raise ScheduleError(f"{text!r} is not a window: use 22:00-07:00, mon-fri 22:00-07:00 or sat,sun 09:00-18:00")
    start, end = (_clock(match[k], text) for k in ("start", "end"))
    if start == end and not match["end"].startswith("24"):  # "00:00-24:00" is the whole day
        raise ScheduleError(f"{text!r} is empty: start and end are the same time")
    return Window(start, end, _days(match["days"], text) if match["days"] else frozenset(range(7)))


def _clock(value: str, text: str) -> time:
    hours, minutes = map(int, value.split(":"))
    if hours == 24 and minutes == 0:
        return time(0, 0)
    if hours > 23 or minutes > 59:
        raise ScheduleError(f"{text!r}: {value} is not a time of day")
    return time(hours, minutes)


def _days(spec: str, text: str) -> frozenset[int]:
    days: set[int] = set()
    for part in spec.split(","):
        ends = part.split("-")
        if len(ends) > 2 or any(e not in DAYS for e in ends):
            raise ScheduleError(f"{text!r}: {part!r} is not a day or range of days (mon, tue, ... sun)")
        first, last = DAYS.index(ends[0]), DAYS.index(ends[-1])
        days.update((first + i) % 7 for i in range((last - first) % 7 + 1))
    return frozenset(days)


# ------------------------------------------------------------------ recurring jobs


def cron_trigger(expression: str, timezone: tzinfo) -> CronTrigger:
    try:
        return CronTrigger.from_crontab(expression, timezone=timezone)
    except ValueError as e:
        raise ScheduleError(f"{expression!r} is not a cron expression ({e}): use five fields, e.g. '0 1 * * *'") from None


def check_cron(expression: str) -> str:
    """A cron expression that parses and fires at least once: `0 0 31 2 *` parses but never fires. Five
    fields repeat within 28 years, so one firing after any fixed date means it fires."""
    next_firing(expression, datetime(2000, 1, 1, tzinfo=timezone.utc))
    return expression


def next_firing(expression: str, after: datetime) -> datetime:
    """The first firing strictly after `after` (an aware datetime)."""
    trigger = cron_trigger(expression, after.tzinfo)
    fire = trigger.get_next_fire_time(None, after + timedelta(microseconds=1))
    if fire is None:
        raise ScheduleError(f"{expression!r} never fires")
    return fire
