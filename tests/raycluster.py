"""A local Ray head for the tests, bound to 127.0.0.1 only.

    python -m tests.raycluster start DIR   # prints the Jobs API address; state and logs in DIR
    python -m tests.raycluster stop DIR

`.ci/run` starts one for the whole suite (MTLD_TEST_RAY_ADDRESS); without it,
tests/test_ray.py starts its own and stops it at the end. Binding: `ray start`
turns --node-ip-address=127.0.0.1 into the machine's routable address on Linux
(ray/_private/services.py, resolve_ip_for_localhost) unless Ray's cluster mode is
off, as it is by default on macOS and Windows: RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
(ray/_private/ray_constants.py) keeps every Ray port on the loopback.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

LOOPBACK_ONLY = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray_command() -> list[str]:
    return [sys.executable, "-m", "ray.scripts.scripts"]


def start(folder: Path, *, num_cpus: int = 4, timeout_s: float = 90) -> str:
    """Start a head whose state lives in `folder` (a short path: Ray's socket names must fit); its address."""
    folder.mkdir(parents=True, exist_ok=True)
    gcs, dashboard = free_port(), free_port()
    (folder / "head.json").write_text(json.dumps({"gcs_port": gcs, "dashboard_port": dashboard}))
    env = {**os.environ, **LOOPBACK_ONLY}
    subprocess.run(
        [*ray_command(), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={gcs}",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", f"--num-cpus={num_cpus}",
         "--include-dashboard=true", "--disable-usage-stats", f"--temp-dir={folder}"],
        env=env, check=True, capture_output=True, timeout=timeout_s,
    )
    address = f"http://127.0.0.1:{dashboard}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:  # the Jobs API answers a little after `ray start` returns
        try:
            with urllib.request.urlopen(f"{address}/api/version", timeout=2) as answer:
                if answer.status == 200:
                    return address
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"the Ray head's Jobs API did not answer at {address}")


def stop(folder: Path, grace_s: float = 10.0) -> None:
    """Stop the head started in `folder`, and only it (`ray stop` would stop every Ray on the machine): the
    processes whose command line names its folder or its GCS address, and everything they started."""
    import psutil

    try:
        gcs = json.loads((folder / "head.json").read_text())["gcs_port"]
    except (OSError, ValueError, KeyError):
        return
    marks = (str(folder), f"127.0.0.1:{gcs}")
    heads = []
    for process in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        if process.pid != os.getpid() and any(mark in cmdline for mark in marks):
            heads.append(process)
    victims = {p.pid: p for p in heads}
    for process in heads:
        try:
            victims.update({c.pid: c for c in process.children(recursive=True)})
        except psutil.NoSuchProcess:
            pass
    for process in victims.values():
        try:
            process.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(list(victims.values()), timeout=grace_s)
    for process in alive:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass


if __name__ == "__main__":
    verb, folder = sys.argv[1], Path(sys.argv[2])
    if verb == "start":
        print(start(folder))
    else:
        stop(folder)
