"""Daemon and CLI settings: a TOML file plus `MTLD_*` environment variables.

Precedence, highest first: environment (`MTLD_TRAIN__DEVICE=cpu`; nested keys
joined by `__`), the config file, the defaults below (the repository's
`config.toml` documents every key). The config file is the one named by
`--config` or `MTLD_CONFIG` (it must exist), else the per-user one if present.
`MTLD_HOME` puts all state and logs in one folder (tests and demos use it).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Literal

from mtld import MICRO_BATCH_SIZES
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, TomlConfigSettingsSource


class SettingsError(Exception):
    """The configuration cannot be used; the message says where and why."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


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


class MemorySettings(_Section):
    probe: Literal["auto", "macos", "linux", "simulated"] = "auto"
    simulated_file: Path | None = None
    psi_some_warn: float = Field(default=10.0, ge=0, le=100)
    psi_full_critical: float = Field(default=5.0, ge=0, le=100)
    available_warn: float = Field(default=0.10, ge=0, le=1)
    available_critical: float = Field(default=0.05, ge=0, le=1)
    budget_fraction: float = Field(default=0.8, gt=0, le=1)
    headroom: float = Field(default=0.6, gt=0, le=1)
    sample_every_s: float = Field(default=1.0, gt=0, le=60)
    log_every_s: float = Field(default=30.0, gt=0)


class DaemonSettings(_Section):
    poll_interval_s: float = Field(default=2.0, gt=0, le=60)
    stop_timeout_s: float = Field(default=15.0, gt=0, le=600)
    max_attempts: int = Field(default=3, ge=1, le=100)
    retry_backoff_s: float = Field(default=60.0, ge=0)
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
    from mtld.schedule import parse_window

    for window in windows:
        parse_window(window)  # raises with the reason
    return windows


class ScheduleSettings(_Section):
    windows: Annotated[list[str], AfterValidator(_windows)] = []
    at_window_end: Literal["checkpoint", "finish"] = "checkpoint"

    def parsed(self) -> list:
        from mtld.schedule import parse_window

        return [parse_window(w) for w in self.windows]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MTLD_", env_nested_delimiter="__", extra="forbid")

    home: Path | None = None
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    train: TrainSettings = TrainSettings()
    daemon: DaemonSettings = DaemonSettings()
    memory: MemorySettings = MemorySettings()
    schedule: ScheduleSettings = ScheduleSettings()
    disk: DiskSettings = DiskSettings()

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
        raise SettingsError(f"{named}: config file not found")
    user = user_config_file()
    path = named or (user if user.is_file() else None)

    class SettingsFromFile(Settings):
        model_config = SettingsConfigDict(toml_file=path)

    try:
        return SettingsFromFile()
    except ValidationError as e:
        where = str(path) if path else "environment"
        lines = [f"{where}: {'.'.join(map(str, err['loc']))} - {_message(err)}" for err in e.errors()]
        raise SettingsError("\n".join(lines)) from None
    except (OSError, ValueError) as e:  # TOML syntax errors are ValueErrors
        raise SettingsError(f"{path}: {e}") from None


def _message(err: dict) -> str:
    if err["type"] == "extra_forbidden":
        return "unknown key"
    return err["msg"].removeprefix("Value error, ")
