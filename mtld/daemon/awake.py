"""Awake for the night: while a queued job waits for a run window that opens soon, the machine is kept from
idle-sleeping until it opens, so that a Mac left idle at 21:30 is still awake for a 22:00 window.

Only on mains power, only within `power.stay_awake_before_window_s` of the opening, and only while
`daemon.prevent_sleep` holds. Closing a MacBook's lid still sleeps it (an idle-sleep assertion does not
prevent that: caffeinate(8) `-i`), and logging out stops the agent; the next login starts it again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mtld.config.settings import Settings
from mtld.decide import schedule
from mtld.platform.power import SleepInhibitor, on_battery

MARGIN_S = 120  # held a little past the opening: the run that starts then holds its own assertion


class WindowAwake:
    """The daemon's one assertion for the wait before a window (a run's own is held with the run)."""

    def __init__(self, settings: Settings, log: Any, *, power: Callable[[], bool | None] = on_battery,
                 inhibitor: Callable[[], SleepInhibitor] = SleepInhibitor) -> None:
        self.settings, self.log, self.power, self.make = settings, log, power, inhibitor
        self.held: SleepInhibitor | None = None
        self.until: float | None = None

    def update(self, opens_at: float | None, now: float) -> None:
        """Hold the assertion until `opens_at` if the rules say so; let it go otherwise."""
        want = self.settings.daemon.prevent_sleep and schedule.keep_awake(
            opens_at, now, ahead_s=self.settings.power.stay_awake_before_window_s, on_mains=self.power() is not True)
        if want and opens_at is not None:
            if self.until == opens_at and self.held is not None and self.held.active:
                return
            self.release(None)
            held = self.make()
            if held.start_for(int(opens_at - now) + MARGIN_S, "mtld: a queued job waits for the run window"):
                self.held, self.until = held, opens_at
                self.log.info("power.awake_until_window", opens_in_s=round(opens_at - now))
        elif self.held is not None:
            self.release("the wait is over" if opens_at is None else "on battery, or the window is not near")

    def release(self, why: str | None) -> None:
        if self.held is not None:
            self.held.stop()
            if why:
                self.log.info("power.awake_released", reason=why)
        self.held, self.until = None, None
