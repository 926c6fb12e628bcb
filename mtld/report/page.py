"""The night's page: one self-contained HTML file (inline CSS, SVG and PNG; no script, nothing fetched).

From the top: what the night came to in one line; the timeline (mtld.report.timeline); the jobs that need
a person (the last error, and the one command that fixes or retries each); a row per job (state, attempts,
duration against the estimate made as it started, micro-batch, best score and each task's score); then a
section per job with its run folder, `model/` and `best/`, every metric at the best step, and the run's
figure (mtld.report.figure, as PNG).
"""

from __future__ import annotations

import base64
from collections import Counter
from datetime import datetime
from html import escape

from mtld.report.night import JobNight, Night
from mtld.report.timeline import LEVEL_COLOURS, OUTCOME_COLOURS, timeline_svg

CSS = """
body { font: 14px/1.45 -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 24px auto; max-width: 1040px;
       color: #222; padding: 0 12px; }
h1 { font-size: 22px; margin-bottom: 4px; } h2 { font-size: 17px; margin: 28px 0 8px; }
.summary { color: #444; margin-top: 0; }
table { border-collapse: collapse; margin: 6px 0 12px; }
th, td { border-bottom: 1px solid #e3e3e3; padding: 4px 10px 4px 0; text-align: left; vertical-align: top; }
th { font-weight: 600; color: #555; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
code, pre { font: 13px/1.4 ui-monospace, Menlo, Consolas, monospace; background: #f4f4f4; border-radius: 3px; }
code { padding: 1px 4px; } pre { padding: 6px 8px; white-space: pre-wrap; }
.state-succeeded { color: #2c7a39; } .state-failed { color: #b3261e; } .state-held, .state-cancelled { color: #a35a00; }
.problem { border-left: 4px solid #c8372d; padding: 2px 12px; margin: 10px 0; background: #fdf3f2; }
.problem.held { border-color: #e07b22; background: #fdf6ee; }
.timeline text.tick { font-size: 11px; fill: #666; } .timeline text.label { font-size: 12px; fill: #222; }
.timeline text.bar { font-size: 11px; fill: #fff; font-weight: 600; }
.legend span { display: inline-block; margin-right: 14px; font-size: 12px; }
.legend i { display: inline-block; width: 12px; height: 12px; margin-right: 4px; vertical-align: -1px; border-radius: 2px; }
img.figure { max-width: 100%; border: 1px solid #eee; }
.muted { color: #777; }
"""


def render_page(night: Night, figures: dict[int, bytes]) -> str:
    """The page; `figures`: each job's run figure as PNG bytes (jobs without one show none)."""
    first, last = (datetime.fromtimestamp(t).astimezone() for t in (night.since, night.until))
    title = f"The night of {first:%a %d %b}: {first:%H:%M} – {last:%H:%M}"
    if night.until - night.since < 120:  # a short night (a test's, a demo's): to the second
        title = f"The night of {first:%a %d %b}: {first:%H:%M:%S} – {last:%H:%M:%S}"
    elif last.date() != first.date():
        title = f"The night of {first:%a %d %b}: {first:%H:%M} – {last:%a %H:%M}"
    parts = [
        "<!doctype html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>mtld: {escape(title)}</title>", f"<style>{CSS}</style>", "</head>", "<body>",
        f"<h1>{escape(title)}</h1>", f'<p class="summary">{escape(summary(night))}</p>',
        "<h2>Timeline</h2>", timeline_svg(night), legend(),
    ]
    attention = [v for v in night.jobs if v.needs_attention]
    if attention:
        parts.append("<h2>Needs you</h2>")
        parts += [problem(v) for v in attention]
    if night.jobs:
        parts += ["<h2>Jobs</h2>", jobs_table(night.jobs)]
    for view in night.jobs:
        parts.append(job_section(view, figures.get(view.job.id)))
    parts += [f'<p class="muted">Written by mtld at {datetime.now().astimezone():%Y-%m-%d %H:%M}. Each run\'s '
              "events: <code>mtld logs ID</code>; one run's figure: <code>mtld report ID</code>.</p>",
              "</body>", "</html>"]
    return "\n".join(parts) + "\n"


def state_of(view: JobNight) -> str:
    return "held" if view.job.hold is not None and view.job.state == "queued" else view.job.state


def summary(night: Night) -> str:
    if not night.jobs:
        return "Nothing ran in this window."
    counts = Counter(state_of(v) for v in night.jobs)
    states = ", ".join(f"{n} {state}" for state, n in sorted(counts.items(), key=lambda kv: -kv[1]))
    runs = sum(len(v.runs) for v in night.jobs)
    window = " (since the queue went from empty to busy)" if night.default_window else ""
    return f"{len(night.jobs)} job{'s' * (len(night.jobs) != 1)} ({states}), {runs} run{'s' * (runs != 1)}{window}."


def legend() -> str:
    items = [("succeeded", OUTCOME_COLOURS["succeeded"]), ("failed", OUTCOME_COLOURS["failed"]),
             ("out of memory", OUTCOME_COLOURS["out_of_memory"]), ("interrupted, resumes", OUTCOME_COLOURS["interrupted"]),
             ("running", OUTCOME_COLOURS[None]), ("run window", "#eef7ee")]
    items += [(f"pressure {level}", colour) for level, colour in LEVEL_COLOURS.items()]
    spans = "".join(f'<span><i style="background:{c}"></i>{escape(t)}</span>' for t, c in items)
    return f'<p class="legend">{spans} <span class="muted">bar label: micro-batch (start→end)</span></p>'


def problem(view: JobNight) -> str:
    held = state_of(view) == "held"
    why = view.job.hold if held else view.job.last_error
    fix = f"<pre>{escape(view.fix)}</pre>" if view.fix else ""
    return (f'<div class="problem{" held" if held else ""}" data-job="{view.job.id}"><p><b>#{view.job.id} '
            f'{escape(view.job.name)}</b> {state_of(view)}: {escape(why or "no error recorded")}</p>{fix}</div>')


def jobs_table(views: list[JobNight]) -> str:
    head = ("job", "state", "attempts", "took", "estimate", "micro-batch", "best score", "tasks at the best step")
    rows = ["<table id=\"jobs\">", "<tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>"]
    for v in views:
        sizes = micro_batches(v)
        cells = [f'<a href="#job-{v.job.id}">#{v.job.id} {escape(v.job.name)}</a>',
                 f'<span class="state-{state_of(v)}">{state_of(v)}</span>', str(len(v.runs)),
                 duration(v.duration_s), estimate(v), sizes, score(v.scores.best_score, v.scores.best_step),
                 escape(task_scores(v)) or '<span class="muted">no evaluation</span>']
        numeric = {2, 3, 4, 6}
        rows.append(f'<tr data-job="{v.job.id}">' + "".join(
            f'<td class="num">{c}</td>' if i in numeric else f"<td>{c}</td>" for i, c in enumerate(cells)) + "</tr>")
    rows.append("</table>")
    return "\n".join(rows)


def job_section(view: JobNight, figure: bytes | None) -> str:
    job = view.job
    rows = [("state", f'<span class="state-{state_of(view)}">{state_of(view)}</span>'),
            ("attempts", f"{len(view.runs)} in this window ({job.attempts} since it was queued)"),
            ("took", f"{duration(view.duration_s)} against {estimate(view)}"),
            ("micro-batch", micro_batches(view)),
            ("best score", score(view.scores.best_score, view.scores.best_step)),
            ("run folder", f"<code>{escape(str(view.run_dir))}</code>" if view.run_dir else "none")]
    if view.run_dir is not None:
        rows += [("model/", _folder(view.run_dir / "model", view.has_model, "the final model")),
                 ("best/", _folder(view.run_dir / "best", view.has_best, "the best evaluation's model"))]
    if job.last_error and not view.needs_attention:
        rows.append(("last error", escape(job.last_error)))
    body = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows)
    parts = [f'<section class="job" id="job-{job.id}" data-job="{job.id}">',
             f"<h2>#{job.id} {escape(job.name)} — {state_of(view)}</h2>", f'<table class="details">{body}</table>']
    if view.scores.best_metrics:
        parts.append(metrics_table(view))
    if figure:
        data = base64.b64encode(figure).decode("ascii")
        parts.append(f'<img class="figure" alt="the run of job {job.id}: scores, micro-batch, loss, speed, memory" '
                     f'src="data:image/png;base64,{data}">')
    parts.append("</section>")
    return "\n".join(parts)


def metrics_table(view: JobNight) -> str:
    rows = ['<table class="metrics"><tr><th>task</th><th>metric</th><th>at the best step</th></tr>']
    primary = {task: series.metric for task, series in view.scores.tasks.items()}
    for task, metrics in view.scores.best_metrics.items():
        for name, value in metrics.items():
            mark = " (primary)" if primary.get(task) == name else ""
            rows.append(f"<tr><td>{escape(task)}</td><td>{escape(name)}{mark}</td><td class=\"num\">{_num(value)}</td></tr>")
    rows.append("</table>")
    return "\n".join(rows)


def task_scores(view: JobNight) -> str:
    """Each task's primary metric at the best step: `sentiment macro_f1 0.923`."""
    primary = {task: series.metric for task, series in view.scores.tasks.items()}
    return "; ".join(f"{task} {primary.get(task, '?')} {_num(metrics.get(primary.get(task, '')))}"
                     for task, metrics in view.scores.best_metrics.items())


def micro_batches(view: JobNight) -> str:
    if not view.runs:
        return "—"
    first, last = view.runs[0], view.runs[-1]
    end = last.micro_batch_end or last.micro_batch
    return str(first.micro_batch) if end == first.micro_batch else f"{first.micro_batch} → {end}"


def estimate(view: JobNight) -> str:
    if view.estimate_s is None:
        return '<span class="muted" title="no earlier run of its family to estimate from">none (first run)</span>'
    text = duration(view.estimate_s)
    if view.duration_s:
        text += f" ({(view.duration_s / view.estimate_s - 1) * 100:+.0f} %)"
    return text


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def score(value: float | None, step: int | None) -> str:
    return "—" if value is None else f"{value:.3f} (step {step})"


def _num(value: object) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) else "—"


def _folder(path: object, exists: bool, what: str) -> str:
    return f"<code>{escape(str(path))}</code> ({what})" if exists else '<span class="muted">none</span>'
