"""`[executor.ray]`: the Ray executor's own settings table, checked by its own model."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BeforeValidator, Field, field_validator

from mtld.config.settings import Section, absolute_folder

EXTRA_HINT = "pip install 'mtld[ray]'"  # Ray's client comes with this extra


def _ray_address(value: str) -> str:
    """The Ray Jobs API address (the dashboard's HTTP address), e.g. http://127.0.0.1:8265."""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
        raise ValueError(f"must be the Ray Jobs API address, like http://127.0.0.1:8265, not {value!r}")
    try:
        parts.port
    except ValueError:
        raise ValueError(f"{value!r}: the port is not a number from 1 to 65535") from None
    return value.rstrip("/")


def private_token_file(value: object) -> Path | None:
    """`token_file`: an absolute path (`~` allowed) to a file that exists and that nobody else may read or
    write (the cluster's token runs any code on it). Checked when the settings load, and again each time
    the token is read (mtld.executor.ray.api.read_token)."""
    if value is None:
        return None
    path = Path(str(value)).expanduser()
    if not str(value).strip() or not path.is_absolute():
        raise ValueError(f"must be the absolute path of a file holding the cluster's token, not {str(value)!r}")
    problem = token_file_problem(path)
    if problem:
        raise ValueError(problem)
    return path


def token_file_problem(path: Path) -> str | None:
    """Why `path` cannot hold the token (missing, not a file, readable or writable by others), or None."""
    try:
        info = os.stat(path)
    except OSError as e:
        return f"{path}: {e.strerror or e}"
    if not stat.S_ISREG(info.st_mode):
        return f"{path} is not a file"
    if info.st_mode & 0o077:
        return (f"{path} can be read or written by others (mode {stat.S_IMODE(info.st_mode):04o}): the token runs "
                f"any code on the cluster; chmod 600 {path}")
    return None


class RaySettings(Section):
    """`[executor.ray]`: where and how runs go to a Ray cluster (docs/ray.md)."""

    address: Annotated[str, AfterValidator(_ray_address)] = "http://127.0.0.1:8265"
    # The folder run folders go in. Both this machine and every worker must see it at this same path (a
    # shared filesystem); unset: the state folder's runs/, which only a one-machine cluster sees.
    runs_dir: Annotated[Path | None, BeforeValidator(absolute_folder)] = None
    # The interpreter that runs `-m mtld.train` on the workers (one with mtld installed).
    python: str = Field(default="python3", min_length=1)
    # What each run asks the cluster for (Ray's entrypoint resources); memory in MB. Ray sets the run's
    # OMP_NUM_THREADS to num_cpus (ray/_private/utils.py, set_omp_num_threads_if_unset): its CPU threads.
    num_cpus: float = Field(default=1.0, ge=0)
    num_gpus: float = Field(default=0.0, ge=0)
    memory_mb: float = Field(default=0.0, ge=0)
    resources: dict[str, float] = {}
    # The device runs train on there: "auto" is "cuda" when num_gpus > 0, else "cpu" (the family key and
    # start size use it; this machine's memory does not gate a cluster run).
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # A file holding the token of a cluster that runs with token authentication (RAY_AUTH_MODE=token): sent
    # with every Jobs API request (mtld's runs and `mtld doctor`'s check). It must be yours alone (chmod 600).
    token_file: Annotated[Path | None, BeforeValidator(private_token_file)] = None
    # Passed to Ray as the job's runtime_env (e.g. env_vars, py_executable, working_dir); mtld adds its env_vars.
    runtime_env: dict[str, Any] = {}

    @field_validator("runtime_env")
    @classmethod
    def _env_vars_are_text(cls, env: dict[str, Any]) -> dict[str, Any]:
        """Ray takes environment variables as strings only: numbers and booleans are written as text, anything
        else is refused here rather than by every submission."""
        env_vars = env.get("env_vars")
        if env_vars is None:
            return {k: v for k, v in env.items() if k != "env_vars"}
        if not isinstance(env_vars, dict):
            raise ValueError("runtime_env.env_vars must be a table of NAME = \"value\"")
        text = {}
        for name, value in env_vars.items():
            if isinstance(value, bool):
                value = "1" if value else "0"
            if not isinstance(value, (str, int, float)):
                raise ValueError(f"runtime_env.env_vars.{name} must be text or a number, not {type(value).__name__}")
            text[str(name)] = str(value)
        return {**env, "env_vars": text}

    # How many runs may train at once on the cluster.
    slots: int = Field(default=1, ge=1, le=64)
    # Seconds Ray waits after SIGTERM before SIGKILL when a run is stopped (the run checkpoints in between).
    stop_grace_s: float = Field(default=60.0, ge=1, le=3600)
