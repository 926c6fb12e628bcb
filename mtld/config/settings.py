"""Daemon and CLI settings: a TOML file plus `MTLD_*` environment variables.

Precedence, highest first: environment (`MTLD_TRAIN__DEVICE=cpu`; nested keys
joined by `__`), the config file, the defaults below (the repository's
`config.toml` documents every key). The config file is the one named by
`--config` or `MTLD_CONFIG` (it must exist), else the per-user one if present.
`MTLD_HOME` puts all state and logs in one folder (tests and demos use it).
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

from mtld import MICRO_BATCH_SIZES
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, TomlConfigSettingsSource
from pydantic_settings import SettingsError as SourceError


class SettingsError(Exception):
    """The configuration cannot be used; the message says where and why."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # inf and nan are never a setting


def _threads(value: object) -> int | str:
    if value == "auto":
        return "auto"
    try:
        count = int(str(value))
    except ValueError:
        count = 0
    if count < 1:
        raise ValueError('Input should be "auto" or a number of threads (1 or more)')
    return count


def _micro_batch(size: int) -> int:
    if size not in MICRO_BATCH_SIZES:
        *smaller, largest = MICRO_BATCH_SIZES
        raise ValueError(f"Input should be {', '.join(map(str, smaller))} or {largest}")
    return size


class TrainSettings(_Section):
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    # An int, not Literal[2, 4, 8]: environment values arrive as strings.
    start_batch_size: Annotated[int, AfterValidator(_micro_batch)] = 4
    progress_every_s: float = Field(default=5.0, ge=0)
    # "auto": as many as the other programs leave cores free (mtld.train.threads); a number pins it.
    threads: Annotated[int | str, BeforeValidator(_threads)] = "auto"
    # Optimizer steps in a row whose loss or gradient norm is NaN or infinite (each one skipped) that end a run.
    max_nonfinite_steps: int = Field(default=10, ge=1, le=10_000)


class MemorySettings(_Section):
    probe: Literal["auto", "macos", "linux", "simulated", "replay"] = "auto"
    simulated_file: Path | None = Field(default=None, validate_default=True)
    replay_file: Path | None = Field(default=None, validate_default=True)
    psi_some_warn: float = Field(default=10.0, ge=0, le=100)
    psi_full_critical: float = Field(default=5.0, ge=0, le=100)
    available_warn: float = Field(default=0.10, ge=0, le=1)
    available_critical: float = Field(default=0.05, ge=0, le=1)
    budget_fraction: float = Field(default=0.8, gt=0, le=1)
    headroom: float = Field(default=0.6, gt=0, le=1)
    sample_every_s: float = Field(default=1.0, gt=0, le=60)
    log_every_s: float = Field(default=30.0, gt=0)
    # Hysteresis (mtld.memory.guard) and restarts after pressure (mtld.decide.policy): README, "Memory and the micro-batch".
    dwell_s: float = Field(default=5.0, ge=0, le=600)
    quiet_s: float = Field(default=30.0, ge=0, le=3600)
    resume_calm_s: float = Field(default=60.0, ge=0, le=86400)
    interrupt_limit: int = Field(default=3, ge=1, le=100)
    interrupt_window_s: float = Field(default=3600.0, gt=0)

    @field_validator("simulated_file", "replay_file")
    @classmethod
    def _probe_needs_its_file(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        # Refused here, at load, so that status, doctor and the daemon agree.
        kind = info.field_name.removesuffix("_file")
        if value is None and info.data.get("probe") == kind:
            what = "a file holding normal, warn or critical" if kind == "simulated" else "a recorded trace"
            raise ValueError(f'required when memory.probe = "{kind}" ({what})')
        return value


class DaemonSettings(_Section):
    poll_interval_s: float = Field(default=2.0, gt=0, le=60)
    stop_timeout_s: float = Field(default=15.0, gt=0, le=600)
    max_attempts: int = Field(default=3, ge=1, le=100)
    retry_backoff_s: float = Field(default=60.0, ge=0, le=86_400)
    prevent_sleep: bool = True
    hold_on_battery: bool = False
    notify: bool = True


class DiskSettings(_Section):
    margin_mb: float = Field(default=256.0, ge=0, allow_inf_nan=False)  # free space kept beyond a run's need
    keep_last_checkpoint: bool = False  # after a successful run; else only model/ and best/ stay
    log_max_mb: float = Field(default=50.0, gt=0, allow_inf_nan=False)  # mtld.jsonl rotates beyond this
    log_keep: int = Field(default=3, ge=1, le=100)  # rotated daemon logs kept (mtld.jsonl.1 ...)
    recheck_s: float = Field(default=30.0, gt=0, le=86400)  # how often a disk-full hold is looked at again

    @property
    def margin_bytes(self) -> int:
        return int(self.margin_mb * 1_000_000)


def _windows(windows: list[str]) -> list[str]:
    from mtld.config.calendar import parse_window

    for window in windows:
        parse_window(window)  # raises with the reason
    return windows


class ScheduleSettings(_Section):
    windows: Annotated[list[str], AfterValidator(_windows)] = []
    at_window_end: Literal["checkpoint", "finish"] = "checkpoint"

    def parsed(self) -> list:
        from mtld.config.calendar import parse_window

        return [parse_window(w) for w in self.windows]


def _home(value: object) -> Path | None:
    """MTLD_HOME (or `home`): an absolute folder, or one that can be made (empty or relative would put the
    state wherever the command happens to run)."""
    if value is None:
        return None
    text = str(value)
    if not text.strip():
        raise ValueError("must be an absolute folder path, not empty")
    path = Path(text).expanduser()
    if not path.is_absolute():
        raise ValueError(f"must be an absolute folder path, not {text!r}")
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"{existing} is not a folder" + ("" if existing == path else f" (so {path} cannot be made)"))
    return path


def _ray_address(value: str) -> str:
    """The Ray Jobs API address (the dashboard's HTTP address), e.g. http://127.0.0.1:8265."""
    from urllib.parse import urlsplit

    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
        raise ValueError(f"must be the Ray Jobs API address, like http://127.0.0.1:8265, not {value!r}")
    try:
        parts.port
    except ValueError:
        raise ValueError(f"{value!r}: the port is not a number from 1 to 65535") from None
    return value.rstrip("/")


class RaySettings(_Section):
    """Where and how runs go to a Ray cluster (README, "Training on a Ray cluster")."""

    address: Annotated[str, AfterValidator(_ray_address)] = "http://127.0.0.1:8265"
    # The folder run folders go in. Both this machine and every worker must see it at this same path (a
    # shared filesystem); unset: the state folder's runs/, which only a one-machine cluster sees.
    runs_dir: Annotated[Path | None, BeforeValidator(_home)] = None
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


class ExecutorSettings(_Section):
    kind: Literal["local", "ray"] = "local"
    ray: RaySettings = RaySettings()

    @field_validator("kind")
    @classmethod
    def _ray_installed(cls, kind: str) -> str:
        if kind == "ray":
            import importlib.util

            if importlib.util.find_spec("ray") is None:
                raise ValueError("\"ray\" needs Ray's client: pip install 'mtld[ray]'")
        return kind

    @property
    def slots(self) -> int:
        """Runs at once: one on this machine; up to ray.slots on a cluster."""
        return self.ray.slots if self.kind == "ray" else 1


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MTLD_", env_nested_delimiter="__", extra="forbid")

    home: Annotated[Path | None, BeforeValidator(_home)] = None
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    train: TrainSettings = TrainSettings()
    daemon: DaemonSettings = DaemonSettings()
    memory: MemorySettings = MemorySettings()
    schedule: ScheduleSettings = ScheduleSettings()
    disk: DiskSettings = DiskSettings()
    executor: ExecutorSettings = ExecutorSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The file comes from model_config["toml_file"], set by load_settings().
        return init_settings, env_settings, TomlConfigSettingsSource(settings_cls)

    # ------------------------------------------------------------ places

    @property
    def state_dir(self) -> Path:
        return self.home if self.home else platform_dirs()[0]

    @property
    def log_dir(self) -> Path:
        return self.home / "logs" if self.home else platform_dirs()[1]

    @property
    def db_path(self) -> Path:
        return self.state_dir / "state.db"

    @property
    def runs_dir(self) -> Path:
        """Where new jobs' run folders go (a job file's `output` wins): on a Ray cluster, the shared folder."""
        if self.executor.kind == "ray" and self.executor.ray.runs_dir is not None:
            return self.executor.ray.runs_dir
        return self.state_dir / "runs"

    @property
    def daemon_log(self) -> Path:
        return self.log_dir / "mtld.jsonl"

    @property
    def pid_file(self) -> Path:
        return self.state_dir / "daemon.pid"


def platform_dirs(platform: str = sys.platform, env: dict[str, str] | None = None) -> tuple[Path, Path]:
    """(state folder, log folder) where a user's mtld lives when MTLD_HOME is unset."""
    env = dict(os.environ) if env is None else env
    home = Path(env.get("HOME", str(Path.home())))
    if platform == "darwin":
        return home / "Library/Application Support/mtld", home / "Library/Logs/mtld"
    state = Path(env.get("XDG_STATE_HOME") or home / ".local/state") / "mtld"
    return state, state / "logs"


def user_config_file(platform: str = sys.platform, env: dict[str, str] | None = None) -> Path:
    env = dict(os.environ) if env is None else env
    home = Path(env.get("HOME", str(Path.home())))
    if platform == "darwin":
        return home / "Library/Application Support/mtld/config.toml"
    return Path(env.get("XDG_CONFIG_HOME") or home / ".config") / "mtld/config.toml"


def load_settings(config: Path | None = None) -> Settings:
    """Settings from `config` (or MTLD_CONFIG, or the per-user file) and the environment."""
    named = config or (Path(os.environ["MTLD_CONFIG"]) if os.environ.get("MTLD_CONFIG") else None)
    if named is not None and not named.is_file():
        raise SettingsError(f"{named}: {'not a regular file' if named.exists() else 'config file not found'}")
    user = user_config_file()
    path = named or (user if user.is_file() else None)

    class SettingsFromFile(Settings):
        model_config = SettingsConfigDict(toml_file=path)

    try:
        return SettingsFromFile()
    except ValidationError as e:
        raise SettingsError("\n".join(_problem(err, path) for err in e.errors())) from None
    except SourceError as e:  # an MTLD_SECTION (or a list) that is not JSON; it names the field only
        field = re.search(r'field "(\w+)"', str(e))
        prefix = f"MTLD_{field.group(1)}".upper() if field else "MTLD_"
        names = sorted(n for n in os.environ if n.upper().startswith(prefix)) or [prefix]
        raise SettingsError(f"{', '.join(names)}: not valid JSON (a section or a list set in the environment is JSON, "
                            """e.g. MTLD_DAEMON='{"notify": false}'; or set one key: MTLD_DAEMON__NOTIFY=false)""") from None
    except (OSError, ValueError) as e:  # TOML syntax errors are ValueErrors
        raise SettingsError(f"{path}: {e}") from None


def _problem(err: dict, path: Path | None) -> str:
    """One line: `MTLD_KEY: message` when the environment set the value, else `FILE: dotted.key - message`."""
    message = "unknown key" if err["type"] == "extra_forbidden" else err["msg"].removeprefix("Value error, ")
    variable = "MTLD_" + "__".join(map(str, err["loc"])).upper()
    if any(name.upper() == variable for name in os.environ):
        return f"{variable}: {message}"
    return f"{path or 'environment'}: {'.'.join(map(str, err['loc']))} - {message}"
