"""`mtld doctor` on a Ray cluster: can runs go there, and will they find and write their run folders?

The daemon's side (`check_cluster`): the Jobs API answers at the configured
address (with the token of `executor.ray.token_file`, when set), with which
Ray version and which authentication mode; no live node lacks what a run asks
for; then one small Ray job, asking for the same resources as a run, so it
lands where a run would (or stays pending where no node has them free). That
job is mtld.executor.ray.worker on the worker: it reads back a token this side
wrote in `executor.ray.runs_dir`, writes its own file there (runs write their
folders: a folder the worker can read but not write is no use), and reports
its host, its mtld, Ray and torch versions and the cluster's resources, as one
line (after MARK) that this side reads from the job's logs.
"""

from __future__ import annotations

import ipaddress
import json
import secrets
import shlex
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from mtld.executor.ray.api import JobsApi
    from mtld.executor.ray.settings import RaySettings

MARK = "mtld-workercheck "  # the worker's report line starts with it
WORKER_MODULE = "mtld.executor.ray.worker"
WRITTEN = ".worker"  # the worker writes TOKEN_FILE + this, holding the token, to show it can write there


def check_cluster(ray: RaySettings, *, runs_dir: Path, owner: str, timeout_s: float = 120.0) -> dict[str, Any]:
    """The `cluster` section of `mtld doctor` (executor.kind = "ray"). `problems` lists what would stop runs
    (doctor exits 1), `warnings` what is unsafe but works."""
    from mtld.executor import ClusterUnreachable
    from mtld.executor.ray.jobs import RayExecutor
    from mtld.executor.ray.api import JobsApi

    info: dict[str, Any] = {"address": ray.address, "runs_dir": str(runs_dir), "slots": ray.slots,
                            "token_file": str(ray.token_file) if ray.token_file else None,
                            "problems": [], "warnings": []}
    problems, warnings = info["problems"], info["warnings"]
    try:
        import ray as ray_client

        info["ray_here"] = ray_client.__version__
    except ImportError:
        problems.append("Ray's client is not installed here: pip install 'mtld[ray]'")
        return info
    api = JobsApi(ray.address, ray.token_file)
    info["auth_mode"] = _auth_mode(ray.address)
    if warning := open_api_warning(ray.address, info["auth_mode"]):
        warnings.append(warning)
    try:
        info["ray_cluster"] = _cluster_version(api)
    except ClusterUnreachable as e:  # ClusterRefused too: the line names the setting
        problems.append(str(e))
        return info
    if info["ray_cluster"] and info["ray_cluster"] != info["ray_here"]:
        problems.append(f"Ray {info['ray_here']} here but {info['ray_cluster']} on the cluster: install the same version")
    executor = RayExecutor(ray, owner=owner)
    try:
        never = api.cannot_run(executor.asked())
    except ClusterUnreachable as e:
        problems.append(str(e))
        return info
    if never is not None:
        problems.append(f"{never}: no run could ever start there")
        return info
    token = secrets.token_hex(8)
    token_file = runs_dir / f".mtld-workercheck-{token}"
    try:
        runs_dir.mkdir(parents=True, exist_ok=True)
        token_file.write_text(token)
    except OSError as e:
        problems.append(f"cannot write in {runs_dir}: {e.strerror or e}")
        return info
    written = Path(f"{token_file}{WRITTEN}")
    try:
        worker = _run_check_job(api, executor, runs_dir, token_file, timeout_s)
        worker["wrote"] = _read_back(written) == token
    except Exception as e:  # a refused submission, an answer cut short: one line, never a traceback
        from mtld.executor.ray.api import first_line

        worker = {"failed": f"the check job could not run: {type(e).__name__}: {first_line(e)}"}
    finally:
        token_file.unlink(missing_ok=True)
        written.unlink(missing_ok=True)
    info["worker"] = worker
    problems.extend(_worker_problems(worker, token, ray, runs_dir, info.get("ray_cluster")))
    return info


def _worker_problems(worker: dict[str, Any], token: str, ray: RaySettings, runs_dir: Path,
                     ray_cluster: str | None) -> list[str]:
    if "pending" in worker:
        return [worker["pending"]]
    if "failed" in worker:
        return [worker["failed"]]
    problems = []
    if worker.get("token") != token:
        problems.append(f"the worker on {worker.get('host')} does not see {runs_dir} as this machine does "
                        f"({worker.get('folder_error', 'another folder there')}): executor.ray.runs_dir must be "
                        "a folder both see at the same path (a shared filesystem)")
    elif not worker.get("wrote"):
        problems.append(f"the worker on {worker.get('host')} can read {runs_dir} but not write it "
                        f"({worker.get('write_error', 'what it wrote is not there')}): runs write their folders "
                        "there; executor.ray.runs_dir must be writable by the workers, at the same path")
    if worker.get("mtld") != _mtld_version():
        problems.append(f"mtld {worker.get('mtld')} on the worker, {_mtld_version()} here: install the same version")
    if worker.get("ray") and ray_cluster and worker["ray"] != ray_cluster:
        problems.append(f"Ray {worker['ray']} in the worker's Python, {ray_cluster} on the cluster")
    if ray.num_gpus > 0 and not worker.get("cuda_devices"):
        problems.append(f"runs ask for {ray.num_gpus:g} GPU but torch sees none on {worker.get('host')}")
    return problems


def _run_check_job(api: JobsApi, executor: Any, runs_dir: Path, token_file: Path, timeout_s: float) -> dict[str, Any]:
    from mtld.executor.ray.jobs import CLUSTER_FAILURES
    from mtld.executor.ray.api import first_line
    from mtld.executor.ray.resources import request_text
    from mtld.runs.child import SAFE_PATH

    r = executor.settings
    submission = api.call(lambda c: c.submit_job(
        entrypoint=f"{shlex.quote(r.python)} {SAFE_PATH} -m {WORKER_MODULE} "
                   f"{shlex.quote(str(runs_dir))} {shlex.quote(str(token_file))}",
        metadata={"mtld": "doctor"}, **executor.job_options(),
    ))
    deadline = time.monotonic() + timeout_s
    while True:
        info = api.call(lambda c: c.get_job_info(submission))
        if info.status.is_terminal():
            break
        if time.monotonic() > deadline:
            api.call(lambda c: c.stop_job(submission))
            if info.status.value == "PENDING":
                return {"pending": f"the check job waited {timeout_s:.0f} s for a node with what a run asks for "
                                   f"({request_text(executor.asked())}) free: the cluster's nodes have it, but "
                                   "it stayed taken (or the runtime_env did not set up)"}
            return {"failed": f"the check job did not finish in {timeout_s:.0f} s"}
        time.sleep(0.5)
    logs = api.call(lambda c: c.get_job_logs(submission))
    line = next((ln for ln in reversed(logs.splitlines()) if ln.startswith(MARK)), None)
    if line is None:
        error_type = getattr(info.error_type, "value", info.error_type)
        if error_type in CLUSTER_FAILURES or error_type == "RUNTIME_ENV_SETUP_FAILURE":  # it never ran: not python's fault
            return {"failed": f"the check job never ran on the cluster ({error_type}): {first_line(info.message)}"}
        last = next((ln for ln in reversed(logs.splitlines()) if ln.strip()), "no output")
        return {"failed": f"the check job {info.status.value.lower()} on the cluster without a report "
                          f"(executor.ray.python = {r.python!r} must run Python with mtld installed): {last}"}
    report: dict[str, Any] = json.loads(line.removeprefix(MARK))
    return report


def open_api_warning(address: str, auth_mode: str | None) -> str | None:
    """The warning for a Jobs API that runs whatever anyone sends it: no authentication, on an address other
    machines may reach (not loopback). None when it asks for a token, or only this machine can reach it."""
    if auth_mode != "disabled":
        return None
    host = urlsplit(address).hostname or ""
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host.lower().rstrip(".") == "localhost"
    if loopback:
        return None
    return (f"the Ray Jobs API at {address} answers without authentication on an address that is not loopback: "
            "anyone who can reach it can run any code on the cluster, as you; start the cluster with token "
            "authentication (RAY_AUTH_MODE=token) and set executor.ray.token_file (docs/ray.md)")


def _read_back(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _auth_mode(address: str) -> str | None:
    """The head's authentication mode ("token", "disabled"), from /api/authentication_mode, which answers
    without a token (ray/dashboard/http_server_head.py: public_exact_paths); None when it cannot say."""
    import requests  # Ray's client is built on it

    from mtld.executor.ray.api import REQUEST_TIMEOUT_S

    try:
        answer = requests.get(f"{address}/api/authentication_mode", timeout=REQUEST_TIMEOUT_S)
        mode = answer.json().get("authentication_mode") if answer.status_code == 200 else None
        return mode if isinstance(mode, str) else None
    except Exception:
        return None


def _cluster_version(api: JobsApi) -> str | None:
    """The cluster's Ray version, from the Jobs API's /api/version (it needs the token where one is wanted)."""
    from mtld.executor.ray.api import JobMissing

    try:
        answer = api.get("/api/version")
    except JobMissing:
        return None
    return answer.get("ray_version") if isinstance(answer, dict) else None


def _mtld_version() -> str:
    from mtld import __version__

    return __version__
