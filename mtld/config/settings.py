"""Daemon and CLI settings: a TOML file plus `MTLD_*` environment variables.

Precedence, highest first: environment (`MTLD_TRAIN__DEVICE=cpu`; nested keys
joined by `__`), the config file, the defaults below (the repository's
`config.toml` documents every key). The config file is the one named by
`--config` or `MTLD_CONFIG` (it must exist), else the per-user one if present.
`MTLD_HOME` puts all state and logs in one folder (tests and demos use it).
"""

from __future__ import annotations

import difflib
import math
import os
import re
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from mtld import MICRO_BATCH_SIZES
from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr, ValidationError,
                      ValidationInfo, field_validator)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, TomlConfigSettingsSource
from pydantic_settings import SettingsError as SourceError


class SettingsError(Exception):
    """The configuration cannot be used; the message says where and why."""


class Section(BaseModel):
    """One table of the settings: unknown keys are refused, and inf and nan are never a setting."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


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


class TrainSettings(Section):
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    # An int, not Literal[2, 4, 8]: environment values arrive as strings.
    start_batch_size: Annotated[int, AfterValidator(_micro_batch)] = 4
    progress_every_s: float = Field(default=5.0, ge=0)
    # "auto": as many as the other programs leave cores free (mtld.train.threads); a number pins it.
    threads: Annotated[int | str, BeforeValidator(_threads)] = "auto"
    # Optimizer steps in a row whose loss or gradient norm is NaN or infinite (each one skipped) that end a run.
    max_nonfinite_steps: int = Field(default=10, ge=1, le=10_000)


class MemorySettings(Section):
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
    # Hysteresis (mtld.memory.guard) and restarts after pressure (mtld.decide.policy): docs/memory.md.
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


# After SIGKILL, how long the daemon waits for a run child to be reaped (the service manager's stop timeout
# adds it to daemon.stop_timeout_s: mtld.platform.agent).
FORCED_STOP_GRACE_S = 5.0
STOP_MARGIN_S = 10  # for recording the exit in the store and the log after the child is gone
# launchd.plist(5), ExitTimeOut: launchd waits this long after SIGTERM, at logout and shutdown too ("it can
# stall system shutdown"); mtld keeps its agent's within a minute.
EXIT_TIMEOUT_CAP_S = 60


def exit_timeout_s(stop_timeout_s: float) -> int:
    """The service manager's wait between SIGTERM and SIGKILL: longer than the daemon's worst-case stop
    (wait for the child's checkpoint, SIGKILL it and reap it) plus a margin to record the run."""
    return math.ceil(stop_timeout_s + FORCED_STOP_GRACE_S) + STOP_MARGIN_S


def _stop_timeout(value: float) -> float:
    if exit_timeout_s(value) > EXIT_TIMEOUT_CAP_S:
        most = EXIT_TIMEOUT_CAP_S - STOP_MARGIN_S - math.ceil(FORCED_STOP_GRACE_S)
        raise ValueError(f"at most {most} s: with {FORCED_STOP_GRACE_S:g} s to reap the child and {STOP_MARGIN_S} s "
                         f"to record the run, launchd's ExitTimeOut must stay within {EXIT_TIMEOUT_CAP_S} s")
    return value


class DaemonSettings(Section):
    poll_interval_s: float = Field(default=2.0, gt=0, le=60)
    # The agent's ExitTimeOut / TimeoutStopSec is exit_timeout_s(this), at most EXIT_TIMEOUT_CAP_S.
    stop_timeout_s: Annotated[float, AfterValidator(_stop_timeout)] = Field(default=15.0, gt=0)
    max_attempts: int = Field(default=3, ge=1, le=100)
    retry_backoff_s: float = Field(default=60.0, ge=0, le=86_400)
    # Lost runs (no exit status, no result: a node died, a cluster forgot the run) in a row before the job
    # fails, and the wait before resuming one (doubled each time): mtld.decide.policy.lost.
    max_lost: int = Field(default=5, ge=1, le=100)
    lost_backoff_s: float = Field(default=30.0, ge=0, le=86_400)
    prevent_sleep: bool = True
    hold_on_battery: bool = False
    notify: bool = True


class DiskSettings(Section):
    margin_mb: float = Field(default=256.0, ge=0, allow_inf_nan=False)  # free space kept beyond a run's need
    keep_last_checkpoint: bool = False  # after a successful run; else only model/ and best/ stay
    log_max_mb: float = Field(default=50.0, gt=0, allow_inf_nan=False)  # mtld.jsonl rotates beyond this
    log_keep: int = Field(default=3, ge=1, le=100)  # rotated daemon logs kept (mtld.jsonl.1 ...)
    recheck_s: float = Field(default=30.0, gt=0, le=86400)  # how often a disk-full hold is looked at again

    @property
    def margin_bytes(self) -> int:
        return int(self.margin_mb * 1_000_000)


class LoggingSettings(Section):
    # TensorBoard event files in each run folder's tb/ (the `tensorboard` extra); a job's [logging] overrides it.
    tensorboard: bool = False


def _windows(windows: list[str]) -> list[str]:
    from mtld.config.calendar import parse_window

    for window in windows:
        parse_window(window)  # raises with the reason
    return windows


class WatchdogSettings(Section):
    """A run that shows no progress for longer than its allowance is stopped and retried one size down
    (docs/unattended.md, "A run that stops making progress"; the allowance: mtld.decide.policy.stall_allowance)."""

    stall_s: float = Field(default=600.0, ge=1, le=86_400)  # the allowance's floor between two signs of life
    start_s: float = Field(default=600.0, ge=1, le=86_400)  # and from a run's start to its first step
    step_factor: float = Field(default=20.0, ge=1, le=10_000)  # and at least this many of the family's median step
    max_stalls: int = Field(default=2, ge=1, le=100)  # stalls in a row that put the job on hold


class PowerSettings(Section):
    # While a queued job waits for a run window that opens within this many seconds and the machine is on AC
    # power, keep it from idle-sleeping until the window opens (0: never).
    stay_awake_before_window_s: float = Field(default=3600.0, ge=0, le=86_400)


class ScheduleSettings(Section):
    windows: Annotated[list[str], AfterValidator(_windows)] = []
    at_window_end: Literal["checkpoint", "finish"] = "checkpoint"

    def parsed(self) -> list:
        from mtld.config.calendar import parse_window

        return [parse_window(w) for w in self.windows]


def absolute_folder(value: object) -> Path | None:
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


class ExecutorSettings(BaseModel):
    """`executor.kind`, and one table per kind of executor (`[executor.KIND]`). Each executor checks its
    own table with its own model (mtld.executor.registry), so a new executor needs no change here."""

    model_config = ConfigDict(extra="allow")

    kind: str = Field(default="local", min_length=1)

    def section(self, kind: str) -> dict[str, Any]:
        """The `[executor.KIND]` table as written (checked by that executor)."""
        value = (self.model_extra or {}).get(kind)
        return value if isinstance(value, dict) else {}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MTLD_", env_nested_delimiter="__", extra="forbid")

    home: Annotated[Path | None, BeforeValidator(absolute_folder)] = None
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    train: TrainSettings = TrainSettings()
    daemon: DaemonSettings = DaemonSettings()
    memory: MemorySettings = MemorySettings()
    schedule: ScheduleSettings = ScheduleSettings()
    watchdog: WatchdogSettings = WatchdogSettings()
    power: PowerSettings = PowerSettings()
    disk: DiskSettings = DiskSettings()
    logging: LoggingSettings = LoggingSettings()
    executor: ExecutorSettings = ExecutorSettings()
    _config_file: Path | None = PrivateAttr(default=None)

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
    def local_runs_dir(self) -> Path:
        """The state folder's runs/: where run folders go unless the executor says otherwise (its `runs_dir`)."""
        return self.state_dir / "runs"

    @property
    def config_file(self) -> Path | None:
        """The config file these settings were read from (None: defaults and the environment only)."""
        return self._config_file

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
        settings = SettingsFromFile()
    except ValidationError as e:
        raise SettingsError(problem_lines(e, path)) from None
    except SourceError as e:  # an MTLD_SECTION (or a list) that is not JSON; it names the field only
        field = re.search(r'field "(\w+)"', str(e))
        prefix = f"MTLD_{field.group(1)}".upper() if field else "MTLD_"
        names = sorted(n for n in os.environ if n.upper().startswith(prefix)) or [prefix]
        raise SettingsError(f"{', '.join(names)}: not valid JSON (a section or a list set in the environment is JSON, "
                            """e.g. MTLD_DAEMON='{"notify": false}'; or set one key: MTLD_DAEMON__NOTIFY=false)""") from None
    except (OSError, ValueError) as e:  # TOML syntax errors are ValueErrors
        raise SettingsError(f"{path}: {e}") from None
    except RecursionError:  # tomllib recurses once per nested array or inline table
        raise SettingsError(f"{path}: TOML nested too deeply") from None
    settings._config_file = path
    return settings


# MTLD_ variables that are not settings: the config file's name, and what mtld sets for its own children
# (mtld.runs.child's thread allotment, the selftest agent's output folder).
NOT_SETTINGS = frozenset({"MTLD_CONFIG", "MTLD_THREADS_ALLOTTED", "MTLD_SELFTEST_OUT"})
NOT_SETTINGS_PREFIX = "MTLD_TEST_"  # the test suite's own (tests/childhooks, the Ray head)


def unknown_variables(environ: Mapping[str, str] | None = None) -> list[str]:
    """`MTLD_*` variables that name no setting (a typo: MTLD_LOGLEVEL). pydantic-settings reads only the names
    it knows and ignores the rest; a wrong key inside a section (MTLD_TRAIN__DEVICEX) is refused already."""
    env = os.environ if environ is None else environ
    sections = set(Settings.model_fields)
    return sorted(name for name in env
                  if name.upper().startswith("MTLD_") and name.upper() not in NOT_SETTINGS
                  and not name.upper().startswith(NOT_SETTINGS_PREFIX)
                  and name[len("MTLD_"):].split("__")[0].lower() not in sections)


def warn_unknown_variables(log: Any, write: Callable[[str], Any] | None = None,
                           environ: Mapping[str, str] | None = None) -> list[str]:
    """One line on stderr (all of them) and a `settings.unknown_variable` event for each: a typo in a setting is
    otherwise silent. Called once a command, where its settings are loaded (mtld.cli.common). The names."""
    names = unknown_variables(environ)
    if not names:
        return []
    described = []
    for name in names:
        head, *rest = name[len("MTLD_"):].upper().split("__")
        close = difflib.get_close_matches(head, [field.upper() for field in Settings.model_fields], n=1)
        suggestion = "__".join([f"MTLD_{close[0]}", *rest]) if close else None
        described.append(name + (f" (did you mean {suggestion}?)" if suggestion else ""))
        log.warning("settings.unknown_variable", variable=name, suggestion=suggestion)
    (write or sys.stderr.write)(f"mtld: warning: {', '.join(described)}: not a setting; ignored\n")
    return names


def problem_lines(error: ValidationError, path: Path | None, *, within: tuple[str, ...] = ()) -> str:
    """One line per problem: `MTLD_KEY: message` when the environment set the value, else
    `FILE: dotted.key - message`. `within`: where the validated table sits (an executor's section)."""
    return "\n".join(problem_line((*within, *err["loc"]), _message(err), path) for err in error.errors())


def _message(err: Any) -> str:
    return "unknown key" if err["type"] == "extra_forbidden" else str(err["msg"]).removeprefix("Value error, ")


def problem_line(loc: tuple[Any, ...], message: str, path: Path | None) -> str:
    variable = "MTLD_" + "__".join(map(str, loc)).upper()
    if any(name.upper() == variable for name in os.environ):
        return f"{variable}: {message}"
    return f"{path or 'environment'}: {'.'.join(map(str, loc))} - {message}"
