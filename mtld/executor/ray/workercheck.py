"""`mtld doctor` on a Ray cluster: can runs go there, and will they find their run folders?

The daemon's side (`check_cluster`): the Jobs API answers at the configured
address, with which Ray version; then one small Ray job, asking for the same
resources as a run, so it lands where a run would (or stays pending where no
node has them). That job is mtld.executor.ray.worker on the worker: it reads back a
token this side wrote in `executor.ray.runs_dir`, and reports its host, its
mtld, Ray and torch versions and the cluster's resources, as one line (after
MARK) that this side reads from the job's logs.
"""

from __future__ import annotations

import json
import secrets
import shlex
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mtld.executor.ray.settings import RaySettings

MARK = "mtld-workercheck "  # the worker's report line starts with it
WORKER_MODULE = "mtld.executor.ray.worker"


def check_cluster(ray: RaySettings, *, runs_dir: Path, owner: str, timeout_s: float = 120.0) -> dict[str, Any]:
    """The `cluster` section of `mtld doctor` (executor.kind = "ray"). `problems` lists what would stop runs."""
    from mtld.executor import ClusterUnreachable
    from mtld.executor.ray.jobs import client_for, first_line

    info: dict[str, Any] = {"address": ray.address, "runs_dir": str(runs_dir), "slots": ray.slots, "problems": []}
    problems = info["problems"]
    try:
        import ray as ray_client

        info["ray_here"] = ray_client.__version__
    except ImportError:
        problems.append("Ray's client is not installed here: pip install 'mtld[ray]'")
        return info
    try:
        client = client_for(ray.address)
        info["ray_cluster"] = _cluster_version(client)
    except ClusterUnreachable as e:
        problems.append(str(e))
        return info
    if info["ray_cluster"] and info["ray_cluster"] != info["ray_here"]:
        problems.append(f"Ray {info['ray_here']} here but {info['ray_cluster']} on the cluster: install the same version")
    token = secrets.token_hex(8)
    token_file = runs_dir / f".mtld-workercheck-{token}"
    try:
        runs_dir.mkdir(parents=True, exist_ok=True)
        token_file.write_text(token)
    except OSError as e:
        problems.append(f"cannot write in {runs_dir}: {e.strerror or e}")
        return info
    try:
        worker = _run_check_job(client, ray, runs_dir, owner, token_file, timeout_s)
    except Exception as e:  # a refused submission, an answer cut short: one line, never a traceback
        worker = {"failed": f"the check job could not run: {type(e).__name__}: {first_line(e)}"}
    finally:
        token_file.unlink(missing_ok=True)
    info["worker"] = worker
    if "pending" in worker:
        problems.append(worker["pending"])
    elif "failed" in worker:
        problems.append(worker["failed"])
    else:
        if worker.get("token") != token:
            problems.append(f"the worker on {worker.get('host')} does not see {runs_dir} as this machine does "
                            f"({worker.get('folder_error', 'another folder there')}): executor.ray.runs_dir must be "
                            "a folder both see at the same path (a shared filesystem)")
        if worker.get("mtld") != _mtld_version():
            problems.append(f"mtld {worker.get('mtld')} on the worker, {_mtld_version()} here: install the same version")
        if worker.get("ray") and info.get("ray_cluster") and worker["ray"] != info["ray_cluster"]:
            problems.append(f"Ray {worker['ray']} in the worker's Python, {info['ray_cluster']} on the cluster")
        if ray.num_gpus > 0 and not worker.get("cuda_devices"):
            problems.append(f"runs ask for {ray.num_gpus:g} GPU but torch sees none on {worker.get('host')}")
    return info


def _run_check_job(client: Any, r: RaySettings, runs_dir: Path, owner: str, token_file: Path,
                   timeout_s: float) -> dict[str, Any]:
    from mtld.executor.ray.jobs import RayExecutor

    executor = RayExecutor(r, owner=owner)
    submission = client.submit_job(
        entrypoint=f"{shlex.quote(r.python)} -m {WORKER_MODULE} "
                   f"{shlex.quote(str(runs_dir))} {shlex.quote(str(token_file))}",
        metadata={"mtld": "doctor"}, **executor.job_options(),
    )
    deadline = time.monotonic() + timeout_s
    while True:
        info = client.get_job_info(submission)
        if info.status.is_terminal():
            break
        if time.monotonic() > deadline:
            client.stop_job(submission)
            if info.status.value == "PENDING":
                return {"pending": f"the check job waited {timeout_s:.0f} s for a node with what a run asks for "
                                   f"(num_cpus={r.num_cpus:g}, num_gpus={r.num_gpus:g}, memory_mb={r.memory_mb:g}, "
                                   f"resources={r.resources}): no node has it free"}
            return {"failed": f"the check job did not finish in {timeout_s:.0f} s"}
        time.sleep(0.5)
    logs = client.get_job_logs(submission)
    line = next((ln for ln in reversed(logs.splitlines()) if ln.startswith(MARK)), None)
    if line is None:
        last = next((ln for ln in reversed(logs.splitlines()) if ln.strip()), "no output")
        return {"failed": f"the check job {info.status.value.lower()} on the cluster without a report "
                          f"(executor.ray.python = {r.python!r} must run Python with mtld installed): {last}"}
    report: dict[str, Any] = json.loads(line.removeprefix(MARK))
    return report


def _cluster_version(client: Any) -> str | None:
    """The cluster's Ray version, from the Jobs API's /api/version."""
    try:
        answer = client._do_request("GET", "/api/version")  # the SDK's own request helper (dashboard_sdk.py)
        return answer.json().get("ray_version") if answer.status_code == 200 else None
    except Exception:
        return None


def _mtld_version() -> str:
    from mtld import __version__

    return __version__
