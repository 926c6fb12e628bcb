"""One run's figures as plain lists: what `mtld report RUN` and the night's page draw (mtld.report.figure).

Two sources, each for its own part, never both for one thing:

- the scores come from `metrics.json` (the child writes it after every
  evaluation): each task's metrics, the aggregate score, the best step;
- everything else from the run's own log (`run.jsonl`): the last attempt's
  loss, samples/s, memory and predicted finish against minutes since it
  started; and, across every attempt, the micro-batch against the optimizer
  step with each change and its reason (the size it started at, a scale-down
  for pressure, for the memory budget or after an out-of-memory error, an
  attempt resumed at another size).

Torch-free and matplotlib-free: the daemon's process may import it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mtld.logs.events import parse_ts
from mtld.runs.files import RunFileError
from mtld.runs.rundir import RunDir

# batch.scaled_down's `reason` as a person reads it beside the line
SCALE_REASONS = {"pressure": "memory pressure", "out_of_memory": "out of memory", "budget": "over the memory budget"}


@dataclass
class BatchChange:
    """The micro-batch became `size` at optimizer step `step`; `why` is the label drawn beside it."""

    step: int
    size: int
    previous: int | None
    why: str


@dataclass
class TaskScores:
    metric: str  # the task's primary metric (metrics.json `primary_metrics`), else its first one
    values: list[float | None] = field(default_factory=list)  # one per evaluation, None where undefined


@dataclass
class Scores:
    """metrics.json: one entry per evaluation, in order."""

    steps: list[int] = field(default_factory=list)
    aggregate: list[float | None] = field(default_factory=list)
    tasks: dict[str, TaskScores] = field(default_factory=dict)
    best_step: int | None = None
    best_score: float | None = None
    best_metrics: dict[str, dict[str, float | None]] = field(default_factory=dict)  # every metric at the best step


@dataclass
class RunSeries:
    name: str
    t: list[float] = field(default_factory=list)  # minutes since run.started, per progress event
    loss: list[float | None] = field(default_factory=list)
    samples_per_s: list[float | None] = field(default_factory=list)
    micro_batch: list[int | None] = field(default_factory=list)
    finish_predicted: list[float | None] = field(default_factory=list)  # minutes: elapsed + eta_s
    memory_t: list[float] = field(default_factory=list)
    available_bytes: list[int | None] = field(default_factory=list)
    eval_t: list[float] = field(default_factory=list)
    predicted_before_s: float | None = None
    actual_s: float | None = None  # run.started → run.finished
    # predicted_before_s is shifted to the same origin: the attempt's set-up (duration_s − actual_s) taken off
    peak_bytes: int | None = None
    outcome: str | None = None
    # every attempt, against the optimizer step
    total_steps: int | None = None
    batch_steps: list[int] = field(default_factory=list)
    batch_sizes: list[int] = field(default_factory=list)
    batch_changes: list[BatchChange] = field(default_factory=list)
    attempts: int = 0
    scores: Scores = field(default_factory=Scores)


def read_log(path: Path) -> list[dict[str, Any]]:
    """Every event of a run log, in order, each with its time as `_t` (epoch seconds); a line cut short,
    damaged or without a readable `ts` is passed over."""
    events = []
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except (FileNotFoundError, NotADirectoryError):
        return []
    for line in text.splitlines():
        try:
            event = json.loads(line)
            event["_t"] = parse_ts(event["ts"])
        except (ValueError, TypeError, KeyError, AttributeError):
            continue
        events.append(event)
    return events


def run_series(run_dir: Path) -> RunSeries:
    """The run folder's figures: the last attempt's timings, every attempt's micro-batch, the scores."""
    rd = RunDir(run_dir)
    events = read_log(rd.log_file)
    s = RunSeries(name=rd.path.name)
    s.scores = read_scores(rd.metrics_file)
    _batch_history(s, events)
    starts = [i for i, e in enumerate(events) if e.get("event") == "run.started"]
    _last_attempt(s, events[starts[-1]:] if starts else events)
    try:
        result = rd.read_result()
    except RunFileError:  # a result.json this mtld cannot read: draw the log alone
        result = None
    s.peak_bytes = s.peak_bytes or (result.peak_memory_bytes if result else None)
    if s.predicted_before_s is not None and s.actual_s is not None and result and result.duration_s:
        # the prediction covers the whole attempt, set-up included; the axes start at run.started
        s.predicted_before_s -= max(result.duration_s - s.actual_s, 0.0)
    return s


def _last_attempt(s: RunSeries, events: list[dict[str, Any]]) -> None:
    if not events:
        return
    t0 = events[0]["_t"]
    for e in events:
        minutes = (e["_t"] - t0) / 60
        kind = e.get("event")
        if kind == "step.progress":
            s.t.append(minutes)
            s.loss.append(e.get("loss"))
            s.samples_per_s.append(e.get("samples_per_s"))
            s.micro_batch.append(e.get("micro_batch"))
            eta = e.get("eta_s")
            s.finish_predicted.append(minutes + eta / 60 if eta is not None else None)
        elif kind == "memory.sample":
            s.memory_t.append(minutes)
            s.available_bytes.append(e.get("available_bytes"))
        elif kind == "eval":
            s.eval_t.append(minutes)
        elif kind == "run.estimate" and e.get("predicted_s") is not None:
            s.predicted_before_s = e["predicted_s"]
        elif kind == "run.finished":
            s.actual_s = e["_t"] - t0
            s.outcome = e.get("outcome")
            s.peak_bytes = e.get("peak_memory_bytes")


def _batch_history(s: RunSeries, events: list[dict[str, Any]]) -> None:
    """The micro-batch against the step over every attempt: a point per progress event, and a labelled
    change where an attempt started (or resumed at another size) and where the run scaled down."""
    size: int | None = None

    def change(step: int, to: int, why: str) -> None:
        nonlocal size
        s.batch_changes.append(BatchChange(step, to, size, why))
        s.batch_steps.append(step)
        s.batch_sizes.append(to)
        size = to

    for e in events:
        kind = e.get("event")
        if kind == "run.started" and isinstance(e.get("micro_batch"), int):
            s.attempts += 1
            s.total_steps = e.get("total_steps") or s.total_steps
            step, to = e.get("resumed_from_step") or 0, e["micro_batch"]
            if size is None:
                change(step, to, f"started at {to}")
            elif to != size:
                change(step, to, f"resumed at {to} (attempt {s.attempts})")
        elif kind == "batch.scaled_down" and isinstance(e.get("to"), int):
            reason = SCALE_REASONS.get(e.get("reason", ""), e.get("reason") or "scaled down")
            change(e.get("step") or 0, e["to"], f"{reason}: {e.get('from')} → {e['to']}")
        elif kind == "step.progress" and isinstance(e.get("micro_batch"), int) and isinstance(e.get("step"), int):
            s.batch_steps.append(e["step"])
            s.batch_sizes.append(e["micro_batch"])
            size = e["micro_batch"]


def read_scores(path: Path) -> Scores:
    """metrics.json as series; empty when there is none (no evaluation yet, or no eval data)."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return Scores()
    if not isinstance(doc, dict):
        return Scores()
    primary = doc.get("primary_metrics") if isinstance(doc.get("primary_metrics"), dict) else {}
    scores = Scores(best_step=doc.get("best_step"), best_score=doc.get("best_score"))
    evals = [e for e in doc.get("evals") or [] if isinstance(e, dict) and isinstance(e.get("tasks"), dict)]
    for i, record in enumerate(evals):
        scores.steps.append(record.get("step", i))
        scores.aggregate.append(record.get("score"))
        for task, metrics in record["tasks"].items():
            if not isinstance(metrics, dict) or not metrics:
                continue
            series = scores.tasks.setdefault(task, TaskScores(primary.get(task) or next(iter(metrics)), [None] * i))
            series.values.append(metrics.get(series.metric))
        for series in scores.tasks.values():  # a task missing from this evaluation
            series.values += [None] * (i + 1 - len(series.values))
        if record.get("step") == scores.best_step:
            scores.best_metrics = record["tasks"]
    return scores
