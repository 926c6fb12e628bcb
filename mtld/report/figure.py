"""`mtld report RUN [--out FILE.png]`: one picture of a run, drawn with matplotlib (imported here only).

Against the optimizer step, over every attempt:
  1. the scores (metrics.json): each task's primary metric, the aggregate
     score, the best step marked;
  2. the micro-batch, each change labelled with its reason.
Against minutes since the last attempt started (run.jsonl):
  3. loss; 4. samples/s; 5. available memory and the run's peak;
  6. the predicted finish (elapsed + eta_s at each progress event, and the
     prediction made before the attempt) against the actual end.

Every series is drawn with markers, so a run with one progress event or one
evaluation still shows its points; an empty panel says why it is empty.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from mtld import MICRO_BATCH_SIZES
from mtld.disk import make_private, private_dir
from mtld.report.run import RunSeries, run_series

DPI = 100
SHORT_MIN = 3.0  # an attempt shorter than this many minutes is drawn in seconds


def draw_report(run_dir: Path, out: Path | None = None) -> Path:
    """Draw the run to `out` (default RUN_DIR/report.png); returns the file written."""
    out = Path(out) if out else Path(run_dir) / "report.png"
    data = figure_png(run_series(run_dir))
    private_dir(out.parent)
    out.write_bytes(data)
    make_private(out)
    return out


def figure_png(s: RunSeries, dpi: int = DPI) -> bytes:
    """The run's figure as PNG bytes (the night's page embeds them)."""
    import matplotlib.pyplot as plt

    fig = draw_figure(s)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    plt.close(fig)
    return buffer.getvalue()


def draw_figure(s: RunSeries) -> Any:
    """The run's matplotlib Figure (the caller closes it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(9, 15), layout="constrained")
    grid = fig.add_gridspec(6, 1, height_ratios=[1.4, 0.9, 1, 1, 1, 1])
    scores_ax = fig.add_subplot(grid[0])
    batch_ax = fig.add_subplot(grid[1], sharex=scores_ax)
    loss_ax = fig.add_subplot(grid[2])
    rate_ax, mem_ax, eta_ax = (fig.add_subplot(grid[i], sharex=loss_ax) for i in (3, 4, 5))
    _scores(scores_ax, s)
    _batch(batch_ax, s)
    _minutes(loss_ax, rate_ax, mem_ax, eta_ax, s)
    title = f"{s.name}: {s.outcome or 'running'}"
    if s.actual_s is not None and s.predicted_before_s:
        title += f", took {s.actual_s / 60:.1f} min, predicted {s.predicted_before_s / 60:.1f} min"
    if s.attempts > 1:
        title += f" ({s.attempts} attempts)"
    fig.suptitle(title)
    return fig


def _empty(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", color="grey")


def _points(xs: list[float], ys: list[Any]) -> tuple[list[float], list[Any]]:
    pairs = [(x, y) for x, y in zip(xs, ys) if y is not None]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def _scores(ax: Any, s: RunSeries) -> None:
    sc = s.scores
    ax.set_title("evaluation scores (metrics.json)", fontsize="medium", loc="left")
    ax.set_ylabel("score")
    if not sc.steps:
        _empty(ax, "no evaluation yet")
        return
    for task, series in sc.tasks.items():
        xs, ys = _points(sc.steps, series.values)
        ax.plot(xs, ys, marker="o", ms=5, lw=1.2, label=f"{task} {series.metric}", zorder=3)
    xs, ys = _points(sc.steps, sc.aggregate)  # beneath the tasks: with one task it is that task's line
    ax.plot(xs, ys, marker="s", ms=7, lw=2.4, color="black", label="aggregate score", zorder=2)
    if sc.best_step is not None and sc.best_score is not None:
        ax.axvline(sc.best_step, color="tab:green", lw=1, ls="--")
        ax.plot([sc.best_step], [sc.best_score], marker="o", ms=18, mfc="none", mec="tab:green", mew=2.5, ls="none",
                label=f"best: step {sc.best_step}, {sc.best_score:.3f}")  # a ring: the points inside stay visible
    values = [v for v in (*sc.aggregate, *(x for t in sc.tasks.values() for x in t.values)) if v is not None]
    if values and -1 <= min(values) and max(values) <= 1:  # the primary metrics' scale: one point is not a whole axis
        ax.set_ylim(min(0.0, min(values)) - 0.05, 1.05)
    ax.legend(loc="best", fontsize="small", ncol=2)
    ax.grid(alpha=0.3)


def _batch(ax: Any, s: RunSeries) -> None:
    ax.set_title("micro-batch (every attempt)", fontsize="medium", loc="left")
    ax.set_ylabel("micro-batch")
    ax.set_xlabel("optimizer step")
    ax.set_yscale("log", base=2)
    ax.set_yticks(MICRO_BATCH_SIZES, [str(b) for b in MICRO_BATCH_SIZES])
    ax.set_ylim(min(MICRO_BATCH_SIZES) / 1.5, max(MICRO_BATCH_SIZES) * 1.8)
    if not s.batch_steps:
        _empty(ax, "no run started yet")
        return
    steps, sizes = list(s.batch_steps), list(s.batch_sizes)
    if s.outcome == "succeeded" and s.total_steps and steps[-1] < s.total_steps:
        steps.append(s.total_steps)  # the last size held to the end
        sizes.append(sizes[-1])
    ax.plot(steps, sizes, drawstyle="steps-post", marker="o", ms=4, color="tab:purple")
    for i, c in enumerate(s.batch_changes):
        ax.plot([c.step], [c.size], marker="D", ms=7, color="tab:red" if c.previous else "tab:purple", ls="none")
        ax.annotate(c.why, (c.step, c.size), xytext=(6, 10 + 12 * (i % 2)), textcoords="offset points",
                    fontsize="small", arrowprops={"arrowstyle": "-", "color": "grey", "lw": 0.5})
    if s.total_steps:
        ax.set_xlim(left=-0.02 * s.total_steps, right=s.total_steps * 1.02)


def _minutes(loss_ax: Any, rate_ax: Any, mem_ax: Any, eta_ax: Any, s: RunSeries) -> None:
    """The last attempt's panels; in seconds when it lasted under SHORT_MIN minutes (a demo's run)."""
    span = max([*s.t, *s.memory_t, *s.eval_t, (s.actual_s or 0) / 60], default=0.0)
    unit, k = ("seconds", 60.0) if span < SHORT_MIN else ("minutes", 1.0)

    def scaled(values: list[Any]) -> list[Any]:
        return [None if v is None else v * k for v in values]

    def plot(ax: Any, ys: list[Any], **kw: Any) -> bool:
        xs, values = _points(scaled(s.t), ys)
        if xs:
            ax.plot(xs, values, marker="o", ms=4, **kw)
        return bool(xs)

    none = "no progress event yet" if s.outcome is None else "no progress event (shorter than train.progress_every_s)"
    if not plot(loss_ax, s.loss, color="tab:blue"):
        _empty(loss_ax, none)
    loss_ax.set_ylabel("loss")
    loss_ax.set_title(f"the last attempt, {unit} since it started (run.jsonl; dotted: evaluations)",
                      fontsize="medium", loc="left")
    for t in scaled(s.eval_t):
        loss_ax.axvline(t, color="grey", lw=0.5, ls=":")
    if not plot(rate_ax, s.samples_per_s, color="tab:green"):
        _empty(rate_ax, none)
    rate_ax.set_ylabel("samples/s")
    gib = _points(scaled(s.memory_t), [None if b is None else b / 2**30 for b in s.available_bytes])
    if gib[0]:
        mem_ax.plot(*gib, marker=".", color="tab:orange", label="available memory")
    if s.peak_bytes:
        mem_ax.axhline(s.peak_bytes / 2**30, color="tab:red", ls="--", label="run's peak")
    if gib[0] or s.peak_bytes:
        mem_ax.legend(loc="best", fontsize="small")
    else:
        _empty(mem_ax, "no memory sample")
    mem_ax.set_ylabel("GiB")
    plot(eta_ax, scaled(s.finish_predicted), color="tab:blue", label="predicted finish (elapsed + eta_s)")
    if s.predicted_before_s is not None:
        eta_ax.axhline(s.predicted_before_s / 60 * k, color="tab:grey", ls="--", label="predicted before the attempt")
    if s.actual_s is not None:
        eta_ax.axhline(s.actual_s / 60 * k, color="black", label="actual")
    eta_ax.set_ylabel(f"finish ({'s' if k > 1 else 'min'})")
    eta_ax.set_xlabel(f"{unit} since the attempt started")
    if eta_ax.get_legend_handles_labels()[0]:
        eta_ax.legend(loc="best", fontsize="small")
    else:
        _empty(eta_ax, "no prediction yet")
    loss_ax.set_xlim(0, max(span * k, 1e-3) * 1.03)  # from the attempt's start to its end
