"""The sampler thread: reads a probe about once a second and keeps the latest `Sample`.

Torch-free: the run child passes its device figures in as plain numbers
through `read_device`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from mtld.memory.levels import Probe, Reading, error_text
from mtld.config.settings import MemorySettings


@dataclass(frozen=True)
class Sample:
    reading: Reading
    device: dict[str, Any]  # from read_device; "used_bytes" is what the guard compares with the budget
    at: float  # the sampler's clock (monotonic seconds)

    def fields(self) -> dict[str, Any]:
        return {**self.reading.to_dict(), "device": dict(self.device)}


class _NullLog:
    def info(self, event: str, **fields: Any) -> None:
        pass

    warning = info


class Sampler:
    """Reads a probe every `every_s` seconds in a daemon thread; `latest` is the newest Sample.

    The loop reads `latest` without a lock (one attribute assignment is
    atomic). Logs `memory.sample` at the first sample, at once when the level
    changes, and otherwise every `log_every_s`; `memory.sample_failed` when a
    read fails (the first at once, then at most every `log_every_s`), keeping
    the last good sample and trying again next tick. Nothing escapes the thread.

    `read_device` (the child's torch figures, e.g. {"used_bytes": ...,
    "total_bytes": ...}) is called in the sampler thread. `log` is a bound
    structlog logger (fields bound by mtld.logs.events.configure cross threads).
    """

    def __init__(self, probe: Probe, *, every_s: float = 1.0, log_every_s: float = 30.0,
                 read_device: Callable[[], Mapping[str, Any]] | None = None, log: Any = None,
                 clock: Callable[[], float] = time.monotonic):
        self.probe, self.every_s, self.log_every_s = probe, every_s, log_every_s
        self.read_device, self.log, self.clock = read_device, log or _NullLog(), clock
        self.latest: Sample | None = None
        self.failures = 0  # since the last memory.sample_failed event
        self._logged_at: float | None = None
        self._failure_logged_at: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def from_settings(cls, probe: Probe, settings: MemorySettings, **kwargs: Any) -> Sampler:
        return cls(probe, every_s=settings.sample_every_s, log_every_s=settings.log_every_s, **kwargs)

    def tick(self) -> Sample | None:
        """One read (what the thread does each period); returns the latest sample. Never raises."""
        try:
            return self._tick()
        except Exception as e:  # a failing logger, or a bug: the loop must not notice
            self._failed("sampler", e, self.clock())
            return self.latest

    def _tick(self) -> Sample | None:
        now = self.clock()
        try:
            reading = self.probe.read()
        except Exception as e:
            self._failed("probe", e, now)
            return self.latest
        device: dict[str, Any] = {}
        if self.read_device is not None:
            try:
                device = dict(self.read_device())
            except Exception as e:
                self._failed("device", e, now)
        previous, sample = self.latest, Sample(reading, device, now)
        self.latest = sample
        if previous is None:
            trigger = "first"
        elif previous.reading.level is not reading.level:
            trigger = "level_changed"
        elif self._logged_at is None or now - self._logged_at >= self.log_every_s:
            trigger = "periodic"
        else:
            return sample
        self._logged_at = now
        extra = {"previous_pressure": previous.reading.level.value} if trigger == "level_changed" and previous else {}
        self.log.info("memory.sample", trigger=trigger, **extra, **sample.fields())
        return sample

    def _failed(self, what: str, exc: Exception, now: float) -> None:
        self.failures += 1
        if self._failure_logged_at is not None and now - self._failure_logged_at < self.log_every_s:
            return
        self._failure_logged_at = now
        try:
            self.log.warning("memory.sample_failed", what=what, error=error_text(exc), failures=self.failures)
            self.failures = 0
        except Exception:
            pass  # nowhere left to say it

    def start(self) -> Sampler:
        """Take the first sample now (the guard has one from the start), then one every `every_s`."""
        self.tick()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="mtld-memory-sampler", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.tick()

    def stop(self, timeout: float = 1.0) -> None:
        """Wakes the thread at once; waits for a read in progress at most `timeout` (the thread is a daemon)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def __enter__(self) -> Sampler:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
