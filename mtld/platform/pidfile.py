"""One daemon per state folder: a pid file held under an exclusive flock.

The lock, not the pid in the file, says whether a daemon is alive: a stale
file left by a SIGKILLed daemon is unlocked, so nobody signals a recycled pid.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from mtld.disk import open_private, private_dir


class AlreadyRunning(Exception):
    def __init__(self, path: Path, pid: int | None):
        self.pid = pid
        who = f"pid {pid}" if pid else "another process"
        super().__init__(f"an mtld daemon is already running on this state ({who}, lock {path})")


class PidFile:
    def __init__(self, path: Path):
        self.path = path
        self.fd: int | None = None

    def acquire(self) -> None:
        private_dir(self.path.parent)
        fd = open_private(self.path, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise AlreadyRunning(self.path, running_pid(self.path)) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            self.path.unlink(missing_ok=True)
            os.close(self.fd)
            self.fd = None


def running_pid(path: Path) -> int | None:
    """The pid of the daemon holding the lock on `path`, or None when none does."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.read(fd, 64).decode(errors="replace").strip()
            return int(text) if text.isdigit() else None
        fcntl.flock(fd, fcntl.LOCK_UN)  # we got it: nobody holds the file
        return None
    finally:
        os.close(fd)
