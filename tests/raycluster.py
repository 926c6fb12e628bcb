"""A local Ray head for the tests, bound to 127.0.0.1 only, and a second node beside it when a test needs two.

    python -m tests.raycluster start DIR   # prints the Jobs API address; state and logs in DIR
    python -m tests.raycluster stop DIR

`.ci/run` starts one for the whole suite (MTLD_TEST_RAY_ADDRESS); without it,
tests/test_ray.py starts its own and stops it at the end. Binding: `ray start`
turns --node-ip-address=127.0.0.1 into the machine's routable address on Linux
(ray/_private/services.py, resolve_ip_for_localhost) unless Ray's cluster mode is
off, as it is by default on macOS and Windows: RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
(ray/_private/ray_constants.py) keeps every Ray port on the loopback.

Every node's dashboard agent gets a free port of its own: its default, 52365, is one per machine, and a
second head (another test's, CI's) whose agent cannot bind it answers every submission with "No available
agent to submit job" (ray/dashboard/agent.py: "the HTTP service will be disabled").

A second node (`add_node`) with cluster mode off is refused ("Multi-node Ray clusters are not supported on
Windows and OSX": ray/scripts/scripts.py, `start`), and with it on, its addresses go to the routable one:
`ray start` runs here with the mode's check passed and 127.0.0.1 taken as given (the two names above,
patched in that one process), while everything it starts keeps the loopback-only environment.
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


def start(folder: Path, *, num_cpus: int = 4, timeout_s: float = 90, env: dict[str, str] | None = None,
          token: str | None = None) -> str:
    """Start a head whose state lives in `folder` (a short path: Ray's socket names must fit); its address.
    `env`: more of the head's environment (RAY_AUTH_MODE=token and RAY_AUTH_TOKEN_PATH for token
    authentication; never ~/.ray/auth_token, which Ray would write when no token is given); `token`: the one
    the readiness check sends."""
    folder.mkdir(parents=True, exist_ok=True)
    gcs, dashboard = free_port(), free_port()
    (folder / "head.json").write_text(json.dumps({"gcs_port": gcs, "dashboard_port": dashboard}))
    return _start_head(folder, gcs, dashboard, num_cpus=num_cpus, timeout_s=timeout_s, env=env, token=token)


def restart(folder: Path, *, num_cpus: int = 4, timeout_s: float = 90) -> str:
    """Start the head stopped in `folder` (`stop`) again on its ports: the same address, a new cluster (a head
    without external storage for its GCS forgets its jobs when it goes: Ray's "GCS fault tolerance" page)."""
    ports = json.loads((folder / "head.json").read_text())
    return _start_head(folder, ports["gcs_port"], ports["dashboard_port"], num_cpus=num_cpus, timeout_s=timeout_s)


def _start_head(folder: Path, gcs: int, dashboard: int, *, num_cpus: int, timeout_s: float,
                env: dict[str, str] | None = None, token: str | None = None) -> str:
    subprocess.run(
        [*ray_command(), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={gcs}",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", f"--num-cpus={num_cpus}",
         f"--dashboard-agent-listen-port={free_port()}",
         "--include-dashboard=true", "--disable-usage-stats", f"--temp-dir={folder}"],
        env=_environment(env), check=True, capture_output=True, timeout=timeout_s,
    )
    address = f"http://127.0.0.1:{dashboard}"
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:  # the Jobs API answers a little after `ray start` returns
        try:
            request = urllib.request.Request(f"{address}/api/version", headers=headers)
            with urllib.request.urlopen(request, timeout=2) as answer:
                if answer.status == 200:
                    return address
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"the Ray head's Jobs API did not answer at {address}")


def add_node(folder: Path, *, num_cpus: int = 1, resources: dict[str, float] | None = None,
             env: dict[str, str] | None = None, timeout_s: float = 90) -> int:
    """Start a second node of the head started in `folder`, on 127.0.0.1 too; the pid of its raylet (stop it
    with `stop_node`)."""
    import psutil

    gcs = json.loads((folder / "head.json").read_text())["gcs_port"]
    before = set(_raylets(folder))
    code = ("import ray._private.ray_constants as c; c.ENABLE_RAY_CLUSTER = True; "
            "import ray._private.services as s; s.resolve_ip_for_localhost = lambda host: host; "
            "from ray.scripts.scripts import main; main()")
    subprocess.run(
        [sys.executable, "-c", code, "start", f"--address=127.0.0.1:{gcs}", "--node-ip-address=127.0.0.1",
         f"--num-cpus={num_cpus}", f"--resources={json.dumps(resources or {})}",
         f"--dashboard-agent-listen-port={free_port()}", "--disable-usage-stats"],
        env=_environment(env), check=True, capture_output=True, timeout=timeout_s,
    )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        new = [pid for pid in _raylets(folder) if pid not in before]
        if new:
            return new[0]
        time.sleep(0.2)
    raise RuntimeError(f"no new raylet of {folder} after `ray start --address`; psutil sees {psutil.pids()[:5]}...")


def stop_node(raylet: int, grace_s: float = 5.0) -> None:
    """Kill a node as a machine dies: its raylet and everything under it (workers, the runs they started)."""
    import psutil

    try:
        process = psutil.Process(raylet)
        victims = [process, *process.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for victim in victims:
        try:
            victim.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(victims, timeout=grace_s)


def _raylets(folder: Path) -> list[int]:
    import psutil

    found = []
    for process in psutil.process_iter(["cmdline"]):
        cmdline = process.info["cmdline"] or []
        if cmdline and cmdline[0].endswith("/raylet") and any(str(folder) in arg for arg in cmdline):
            found.append(process.pid)
    return found


def _environment(extra: dict[str, str] | None) -> dict[str, str]:
    """Loopback only, and token authentication only where a test asks for it: with RAY_AUTH_MODE unset, a
    head enables it by itself when it finds a token (~/.ray/auth_token, a developer's):
    ray/_private/authentication/authentication_token_setup.py, maybe_enable_token_auth_if_token_available."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH_")}
    return {**env, **LOOPBACK_ONLY, "RAY_AUTH_MODE": "disabled", **(extra or {})}


def stop(folder: Path, grace_s: float = 3.0) -> None:
    """Stop the head started in `folder`, and only it (`ray stop` would stop every Ray on the machine): the
    processes whose command line names its folder or its GCS address, and everything they started. The GCS,
    the raylets and the runtime_env agent outlast 10 s of SIGTERM: a test's cluster is killed after a short
    grace (its state is thrown away anyway)."""
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
