"""The job file's tables besides its tasks: [train], [schedule] and [logging], and the strict base every
table of a job file shares (mtld.config.jobspec reads the file and checks it whole)."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, PlainValidator

from mtld import MICRO_BATCH_SIZES
from mtld.config.durations import parse_duration

BatchSize = Literal["auto", *MICRO_BATCH_SIZES]  # type: ignore[valid-type]

# train.mixed_precision: what the job asks for; mtld.decide.precision decides what that means on a device.
PrecisionSetting = Literal["auto", "bf16", "fp16", "off"]


def legacy_setting(value: object) -> object:
    """Job files from before the four settings said true or false: true is "auto" (mixed precision
    where it pays on the device), false is "off". Anything else passes on to be checked."""
    if value is True:
        return "auto"
    if value is False:
        return "off"
    return value


class StrictModel(BaseModel):
    """A TOML file has real types: `epochs = "3"` or `trust_remote_code = "yes"` is a mistake to report, not to
    coerce (pydantic's strict mode; an integer is still a float), and no number is ever inf or nan."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)



def _checkpoint_every(value: int | str) -> int | str:
    """A number of optimizer steps (1 or more), or a duration such as "10m", "90s", "1h"."""
    if isinstance(value, int):
        if value < 1:
            raise ValueError("Input should be a number of steps (1 or more) or a duration such as \"10m\"")
        return value
    if not value.isascii():  # "１０m": parse_duration's \d and float() take any script's digits
        raise ValueError(f"not a duration: {value!r} (use ASCII digits and s, m, h or d: 90s, 10m, 1h, 7d)")
    parse_duration(value)  # raises with the reason
    return value.strip().lower()


def _attention_dropout(value: object) -> str | float:
    """"auto", "model" or a probability: one message for anything else (a union would give one per member)."""
    if isinstance(value, str) and value in ("auto", "model"):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < 1:
        return float(value)
    raise ValueError('Input should be "auto", "model" or a probability from 0 up to (not including) 1')


def _compile(value: object) -> str | bool:
    """"auto", true or false: one message for anything else (a union would give one per member)."""
    if isinstance(value, bool):
        return value
    if value == "auto":
        return "auto"
    raise ValueError('Input should be "auto", true or false')


class TrainSpec(StrictModel):
    epochs: int = Field(default=3, ge=1, le=1000)
    learning_rate: float = Field(default=5e-5, gt=0, le=1)
    warmup_ratio: float = Field(default=0.1, ge=0, lt=1)
    weight_decay: float = Field(default=0.01, ge=0, le=1)
    max_grad_norm: float = Field(default=1.0, ge=0)
    effective_batch_size: int = Field(default=8, ge=1, le=4096)
    batch_size: BatchSize = "auto"
    seed: int = Field(default=42, ge=0, lt=2**32)
    eval_every: int = Field(default=0, ge=0)
    checkpoint_every: Annotated[int | str, AfterValidator(_checkpoint_every)] = "10m"  # steps, or a duration
    keep_checkpoints: int = Field(default=2, ge=1, le=100)
    sampling: Literal["proportional", "temperature", "uniform"] = "proportional"
    temperature: float = Field(default=2.0, ge=1, le=100)
    # auto: bf16 where the device has it (mtld.decide.precision); old job files' true/false read as auto/off
    mixed_precision: Annotated[PrecisionSetting, BeforeValidator(legacy_setting)] = "auto"
    # auto: compile when the estimated training time is well past the break-even (mtld.decide.compile)
    compile: Annotated[Literal["auto"] | bool, PlainValidator(_compile)] = "auto"
    # auto: none on CPU, where it costs the fused attention kernel; "model": the checkpoint's (mtld.decide.dropout)
    attention_dropout: Annotated[Literal["auto", "model"] | float, PlainValidator(_attention_dropout)] = "auto"


def _cron(expression: str | None) -> str | None:
    if expression is not None:
        from mtld.config.calendar import check_cron

        check_cron(expression)  # raises ScheduleError (a ValueError) with the reason, e.g. it never fires
    return expression


EARLIEST = datetime(1970, 1, 1, tzinfo=timezone.utc)
LATEST = datetime(9999, 12, 30, tzinfo=timezone.utc)  # a day short of the calendar's end: any local time is a date


def _date_time_text(value: object) -> object:
    """A TOML date-time is a datetime; job files that wrote one as an ISO string stay readable."""
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(f"Input should be a date-time such as 2026-11-28T01:30:00, not {value!r}") from None
    return value


def within_calendar(value: datetime | None) -> datetime | None:
    """A not-before time the store, the logs and `mtld status` can all write: 1970 to 9999-12-30 in UTC
    (9999-12-31T23:59-12:00 is in the year 10000 there). A local time is this machine's."""
    if value is None:
        return None
    try:
        utc = (value if value.tzinfo else value.astimezone()).astimezone(timezone.utc)
    except (OverflowError, ValueError, OSError):  # the local time zone pushes it off the calendar
        utc = None
    if utc is None or not EARLIEST <= utc <= LATEST:
        raise ValueError(f"out of range: a time from {EARLIEST:%Y-%m-%d} to {LATEST:%Y-%m-%d} (UTC)")
    return value


class ScheduleSpec(StrictModel):
    not_before: Annotated[datetime | None, BeforeValidator(_date_time_text), AfterValidator(within_calendar)] = None
    priority: int = Field(default=0, ge=-1000, le=1000)
    cron: Annotated[str | None, AfterValidator(_cron)] = None  # a recurring job: a new job at each firing


class LoggingSpec(StrictModel):
    tensorboard: bool | None = None  # None: the setting logging.tensorboard decides
