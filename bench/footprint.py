"""The idle daemon's CPU share and resident memory, and submit-to-start latency."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent


def _events(log_file: Path) -> list[dict[str, Any]]:
    if not log_file.exists():
        return []
    return [json.loads(line) for line in log_file.read_text(encoding="utf-8").splitlines() if line.strip()]


def _when(event: dict[str, Any]) -> float:
    value = event.get("timestamp") or event.get("ts") or event.get("time")
    return value if isinstance(value, float | int) else datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()


def daemon_footprint(idle_s: float, job: Path) -> dict[str, Any]:
    """Start `mtld daemon`, let it idle `idle_s` seconds, then submit `job` and read the latency
    from its log (job.submitted → run.launched)."""
    with tempfile.TemporaryDirectory(prefix="mtld-bench-home-") as home:
        env = {**os.environ, "MTLD_HOME": home}
        daemon = subprocess.Popen([sys.executable, "-m", "mtld", "daemon", "--quiet"], env=env, cwd=ROOT,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            proc = psutil.Process(daemon.pid)
            time.sleep(3.0)  # start-up (imports, store) is not idling
            before, started = proc.cpu_times(), time.monotonic()
            time.sleep(idle_s)
            after, elapsed = proc.cpu_times(), time.monotonic() - started
            rss = proc.memory_info().rss
            cpu = (after.user + after.system) - (before.user + before.system)
            subprocess.run([sys.executable, "-m", "mtld", "submit", str(job)], env=env, cwd=ROOT, check=True,
                           stdout=subprocess.DEVNULL)
            log_file = Path(home) / "logs" / "mtld.jsonl"
            latency = None
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and latency is None:
                events = _events(log_file)
                submitted = [e for e in events if e.get("event") == "job.submitted"]
                launched = [e for e in events if e.get("event") == "run.launched"]
                if submitted and launched:
                    latency = _when(launched[0]) - _when(submitted[0])
                time.sleep(0.2)
        finally:
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(30)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()
    return {"idle_s": round(elapsed, 1), "idle_cpu_percent": round(100 * cpu / elapsed, 3),
            "rss_mib": round(rss / 2**20, 1), "submit_to_start_ms": round(latency * 1000, 1) if latency is not None else None}
