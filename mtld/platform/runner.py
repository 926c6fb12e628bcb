"""Running service-manager commands, for real or recorded.

`launchctl` and `systemctl --user` only exist (and only work) on the machines
they manage, so agent code never calls subprocess directly: it asks a Runner.
Tests use `mtld.testing.RecordingRunner`, a fake that records every argv and
answers from a script, instead of patching subprocess.
"""

from __future__ import annotations

import subprocess
from typing import Protocol

Result = subprocess.CompletedProcess  # returncode, stdout, stderr (text)


class Runner(Protocol):
    def run(self, argv: list[str]) -> Result: ...


class SubprocessRunner:
    """Runs the command and captures its output; never raises for a failing or missing command.

    A missing program answers 127 and a hung one 124, like a shell, so callers
    judge every outcome by its return code.
    """

    def __init__(self, timeout_s: float = 60.0):
        self.timeout_s = timeout_s

    def run(self, argv: list[str]) -> Result:
        try:
            return subprocess.run(
                argv, capture_output=True, text=True, timeout=self.timeout_s, check=False, stdin=subprocess.DEVNULL
            )
        except FileNotFoundError:
            return Result(argv, 127, "", f"{argv[0]}: command not found")
        except subprocess.TimeoutExpired:
            return Result(argv, 124, "", f"{argv[0]}: timed out after {self.timeout_s:g} s")
