"""What the daemon's loop waits on: a self-pipe that signals and code can both write to.

A signal handler must not take a lock (the handler runs on the main thread,
which may already hold the lock it wants), so `threading.Event.set()` is not
safe there. Instead the interpreter's own C-level handler writes the signal
number to our pipe (`signal.set_wakeup_fd`, async-signal-safe), and the loop
waits with `select` on the pipe's read end: a signal ends the wait at once,
and the Python-level handler only has to count what it needs to.
https://docs.python.org/3/library/signal.html#signal.set_wakeup_fd
"""

from __future__ import annotations

import os
import select
import signal


class Wakeup:
    def __init__(self) -> None:
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        os.set_blocking(self._write, False)  # a full pipe already means "wake up": never block on it
        self._previous_fd: int | None = None

    def install(self) -> None:
        """From now on every signal with a Python handler also writes to the pipe (main thread only)."""
        self._previous_fd = signal.set_wakeup_fd(self._write, warn_on_full_buffer=False)

    def uninstall(self) -> None:
        if self._previous_fd is not None:
            signal.set_wakeup_fd(self._previous_fd)
            self._previous_fd = None

    def set(self) -> None:
        """Wake the waiting loop (from code: another thread, or the loop itself)."""
        try:
            os.write(self._write, b"\0")
        except BlockingIOError:
            pass  # the pipe is full of wake-ups already

    def wait(self, timeout_s: float) -> bool:
        """Until something wrote to the pipe or `timeout_s` passed; True when woken. Drains the pipe."""
        ready, _, _ = select.select([self._read], [], [], timeout_s)
        if not ready:
            return False
        try:
            while os.read(self._read, 4096):
                pass
        except BlockingIOError:
            pass
        return True

    def close(self) -> None:
        self.uninstall()
        os.close(self._read)
        os.close(self._write)
