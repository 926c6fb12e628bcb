"""What an attempt measured: `Figures` (and its step timings), the measured part of result.json that the store
keeps with each run and the runtime model (mtld.decide.runtime) and the policy read back.

Plain records with no I/O, so the pure decisions may import them. Strict when made (an unknown field is
an error: a typo never vanishes); `known_only` is the reading side's tolerance for a newer mtld's fields
(the rule: mtld.runs.files).
"""

from __future__ import annotations

import types
import typing
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Record(BaseModel):
    """A record of the run files: frozen, and refusing fields it does not have (where it is made)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def known_only(model: type[BaseModel], data: Any) -> Any:
    """`data` without the keys `model` (and the models inside it) does not have: what a reader does with a
    file from a newer minor version, whose new fields it cannot know."""
    if not isinstance(data, dict):
        return data
    out = {}
    for name, value in data.items():
        field = model.model_fields.get(name)
        if field is None:
            alias = next((f for f in model.model_fields.values() if f.alias == name), None)
            if alias is None:
                continue
            field = alias
        out[name] = _known_in(field.annotation, value)
    return out


def _known_in(annotation: Any, value: Any) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return known_only(annotation, value)
    if origin in (typing.Union, types.UnionType):
        models = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
        return known_only(models[0], value) if models and isinstance(value, dict) else value
    if origin is dict and len(args) == 2 and isinstance(value, dict):
        return {k: _known_in(args[1], v) for k, v in value.items()}
    if origin is list and args and isinstance(value, list):
        return [_known_in(args[0], v) for v in value]
    return value


# ---------------------------------------------------------------- step timings


class Sum(Record):
    """Running sums over steps of (padded tokens, seconds): mtld.decide.runtime.Sums on disk."""

    steps: int = 0
    padded_tokens: int = 0
    seconds: float = 0.0
    tokens_squared: float = 0.0
    tokens_seconds: float = 0.0


class EvalTiming(Record):
    count: int = 0
    seconds: float = 0.0
    tokens: int = 0


class SaveTiming(Record):
    count: int = 0
    seconds: float = 0.0


class SizeTiming(Sum):
    """One micro-batch size's steps in one attempt: all of them, the warm-up apart, evaluations, saves."""

    step_overhead_s: float | None = None  # the attempt's own fit, for people reading the file
    s_per_padded_token: float | None = None
    warmup: Sum = Sum()
    eval: EvalTiming = EvalTiming()
    saves: SaveTiming = SaveTiming()


# ---------------------------------------------------------------- what an attempt measured


class Figures(Record):
    """What an attempt (or a probe) measured; the store keeps this with the run."""

    step: int | None = None
    total_steps: int | None = None
    resumed_from_step: int | None = None
    micro_batch_start: int | None = None
    micro_batch_end: int | None = None
    scaled_down: bool = False
    oom_count: int = 0
    skipped_steps: int = 0  # optimizer steps skipped for a non-finite loss or gradient norm
    stop_reason: str | None = None  # why an interrupted attempt stopped itself: "signal" or "memory_critical"
    peak_memory_bytes: int | None = None
    budget_bytes: int | None = None
    max_rss_bytes: int | None = None  # from the parent's wait4: set by the daemon, not the child
    samples_per_s: float | None = None
    tokens_per_s: float | None = None
    duration_s: float | None = None
    train_seconds: float | None = None
    startup_s: float | None = None  # probes measure it; runs derive it (mtld.decide.runtime.run_record)
    samples: int | None = None
    device: str | None = None
    precision: str | None = None  # what it trained in, as the child's autocast check found it: bf16, fp16, off
    compiled: bool = False  # its encoder was compiled (torch.compile): mtld.decide.compile weighs such runs
    best_score: float | None = None
    timing: dict[int, SizeTiming] = Field(default_factory=dict)
    probe: bool = False  # a probe's figures (mtld.train.probe), not a run's
    peaks_by_size: dict[int, int] = Field(default_factory=dict)  # a probe measures every size
    checkpoint_bytes: int | None = None  # the last checkpoint's state (mtld.disk: what the next run needs)
    export_bytes: int | None = None  # the model's weights, as model/ and best/ hold them
    disk_needed_bytes: int | None = None  # a disk_full attempt: the free space it needed (mtld.disk.space_needed)
    disk_bytes: int | None = None  # the run folder's size when the attempt ended (what `mtld status` adds up)

    def stored(self) -> dict[str, Any]:
        """JSON-safe, without the fields left at their defaults (what the store keeps)."""
        return self.model_dump(mode="json", exclude_defaults=True)

    @classmethod
    def read(cls, data: Any) -> Figures:
        """Figures as the store or a probe file keeps them, from this mtld or another (keys it does not know
        are left out: see mtld.runs.files for the rule)."""
        return cls.model_validate(known_only(cls, data))
