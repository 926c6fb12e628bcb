"""`mtld report RUN [--out FILE.png]`: one picture of a run, drawn with matplotlib.

Four panels against minutes since the run started: loss; samples/s; micro-batch
(scale-downs show as steps) with memory (available memory from the memory
guard's samples, the run's peak as a line); and the predicted finish (start +
elapsed + eta_s at each progress event, and the prediction made before the
run, from launch.json) against the actual end.

`run_series` reads the run folder into plain lists (tested without drawing);
`draw_report` draws them. matplotlib is imported only by `draw_report`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from mtld import MICRO_BATCH_SIZES
from mtld.disk import make_private, private_dir
from mtld.runs.rundir import RunDir
from mtld.runs.files import RunFileError


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


def _ts(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(event["ts"]).timestamp()


def run_series(run_dir: Path) -> RunSeries:
    """The last attempt in run.jsonl (from its last run.started on)."""
    rd = RunDir(run_dir)
    events = []
    if rd.log_file.exists():
        for line in rd.log_file.read_text(encoding="utf-8").splitlines():
            try:
                events.append(json.loads(line))
            except ValueError:
                continue
    starts = [i for i, e in enumerate(events) if e.get("event") == "run.started"]
    events = events[starts[-1]:] if starts else events
    s = RunSeries(name=rd.path.name)
    if not events:
        return s
    t0 = _ts(events[0])
    for e in events:
        minutes = (_ts(e) - t0) / 60
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
            s.actual_s = _ts(e) - t0
            s.outcome = e.get("outcome")
            s.peak_bytes = e.get("peak_memory_bytes")
    try:
        result = rd.read_result()
    except RunFileError:  # a result.json this mtld cannot read: draw the log alone
        result = None
    s.peak_bytes = s.peak_bytes or (result.peak_memory_bytes if result else None)
    if s.predicted_before_s is not None and s.actual_s is not None and result and result.duration_s:
        # the prediction covers the whole attempt, set-up included; the axes start at run.started
        s.predicted_before_s -= max(result.duration_s - s.actual_s, 0.0)
    return s


def draw_report(run_dir: Path, out: Path | None = None) -> Path:
    """Draw the run to `out` (default RUN_DIR/report.png); returns the file written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = run_series(run_dir)
    out = Path(out) if out else Path(run_dir) / "report.png"
    fig, axes = plt.subplots(4, 1, figsize=(9, 10), sharex=True)
    loss_ax, rate_ax, batch_ax, eta_ax = axes
    pairs = lambda ys: [(x, y) for x, y in zip(s.t, ys) if y is not None]  # noqa: E731

    def plot(ax: Any, ys: list, **kw: Any) -> None:
        points = pairs(ys)
        if points:
            ax.plot(*zip(*points), **kw)

    plot(loss_ax, s.loss, color="tab:blue")
    loss_ax.set_ylabel("loss")
    for t in s.eval_t:
        loss_ax.axvline(t, color="grey", lw=0.5, ls=":")
    plot(rate_ax, s.samples_per_s, color="tab:green")
    rate_ax.set_ylabel("samples/s")
    plot(batch_ax, s.micro_batch, color="tab:purple", drawstyle="steps-post")
    batch_ax.set_ylabel("micro-batch")
    batch_ax.set_yticks(MICRO_BATCH_SIZES)
    mem_ax = batch_ax.twinx()
    if s.memory_t:
        gib = [(x, y / 2**30) for x, y in zip(s.memory_t, s.available_bytes) if y is not None]
        if gib:
            mem_ax.plot(*zip(*gib), color="tab:orange", label="available memory")
    if s.peak_bytes:
        mem_ax.axhline(s.peak_bytes / 2**30, color="tab:red", ls="--", label="run's peak")
    mem_ax.set_ylabel("GiB")
    if s.peak_bytes or s.memory_t:
        mem_ax.legend(loc="upper right", fontsize="small")
    plot(eta_ax, s.finish_predicted, color="tab:blue", label="predicted finish (elapsed + eta_s)")
    if s.predicted_before_s is not None:
        eta_ax.axhline(s.predicted_before_s / 60, color="tab:grey", ls="--", label="predicted before the run")
    if s.actual_s is not None:
        eta_ax.axhline(s.actual_s / 60, color="black", label="actual")
    eta_ax.set_ylabel("finish (min)")
    eta_ax.set_xlabel("minutes since start")
    if eta_ax.get_legend_handles_labels()[0]:
        eta_ax.legend(loc="lower right", fontsize="small")
    title = f"{s.name}: {s.outcome or 'running'}"
    if s.actual_s is not None and s.predicted_before_s:
        title += f", took {s.actual_s / 60:.1f} min, predicted {s.predicted_before_s / 60:.1f} min"
    fig.suptitle(title)
    fig.tight_layout()
    private_dir(out.parent)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    make_private(out)
    return out
