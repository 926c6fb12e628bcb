"""The night's timeline as inline SVG (no script, no network): a row per job with a bar per attempt (its
outcome as the colour, its micro-batch as the label), the run windows shaded behind, and a strip of the
memory pressure level where it was read."""

from __future__ import annotations

from datetime import datetime
from html import escape

from mtld.report.night import Night

WIDTH, LABEL_W, ROW_H, AXIS_H = 1000, 190, 26, 24
OUTCOME_COLOURS = {"succeeded": "#3a9a4a", "failed": "#c8372d", "bad_input": "#c8372d", "crashed": "#c8372d",
                   "start_failed": "#c8372d", "out_of_memory": "#e07b22", "killed": "#e07b22",
                   "interrupted": "#d9a520", "stalled": "#d9a520", "lost": "#d9a520", "cancelled": "#888888",
                   "disk_full": "#e07b22", None: "#3b6fc4"}  # None: still running
LEVEL_COLOURS = {"normal": "#9bd39b", "warn": "#f0b54a", "critical": "#d9443a"}
READING_HOLDS_S = 60.0  # a reading is drawn until the next one, at most this long (runs log one every 30 s)
TICK_STEPS_S = (10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600)
SHORT_S = 600  # a window shorter than this shows its times to the second


def tick_step_s(span_s: float, most: int = 12) -> float:
    """The smallest round step (seconds to hours) that puts at most `most` ticks on the axis."""
    for step in TICK_STEPS_S:
        if span_s / step <= most:
            return float(step)
    return float(TICK_STEPS_S[-1])


def timeline_svg(night: Night) -> str:
    span = max(night.until - night.since, 1.0)
    plot_w = WIDTH - LABEL_W - 10

    def x(t: float) -> float:
        return LABEL_W + (min(max(t, night.since), night.until) - night.since) / span * plot_w

    rows = len(night.jobs)
    pressure_y = AXIS_H + rows * ROW_H + 8
    height = pressure_y + ROW_H + 16  # the window's start and end beneath
    out = [f'<svg class="timeline" xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
           f'viewBox="0 0 {WIDTH} {height}" role="img" aria-label="timeline of the night">']
    for start, end in night.windows:
        out.append(f'<rect x="{x(start):.1f}" y="{AXIS_H}" width="{max(x(end) - x(start), 1):.1f}" '
                   f'height="{rows * ROW_H}" fill="#eef7ee"><title>run window</title></rect>')
    clock = "%H:%M:%S" if span < SHORT_S else "%H:%M"
    for at, anchor in ((night.since, "start"), (night.until, "end")):  # the window's own ends
        out.append(f'<text x="{x(at):.1f}" y="{pressure_y + ROW_H + 10}" text-anchor="{anchor}" class="tick">'
                   f'{datetime.fromtimestamp(at).astimezone().strftime("%a " + clock)}</text>')
    step = tick_step_s(span)
    tick = (night.since // step + 1) * step
    while tick < night.until:
        local = datetime.fromtimestamp(tick).astimezone()
        out.append(f'<line x1="{x(tick):.1f}" x2="{x(tick):.1f}" y1="{AXIS_H - 4}" y2="{pressure_y + ROW_H}" '
                   'stroke="#ddd"/>')
        out.append(f'<text x="{x(tick):.1f}" y="{AXIS_H - 8}" text-anchor="middle" class="tick">'
                   f'{local.strftime(clock)}</text>')
        tick += step
    for i, view in enumerate(night.jobs):
        y = AXIS_H + i * ROW_H
        out.append(f'<text x="4" y="{y + ROW_H * 0.65:.1f}" class="label">#{view.job.id} '
                   f'{escape(view.job.name[:22])}</text>')
        for run in view.runs:
            end = run.ended_at if run.ended_at is not None else night.until
            left, width = x(run.started_at), max(x(end) - x(run.started_at), 2.0)
            size = f"{run.micro_batch}" + (f"→{run.micro_batch_end}" if run.micro_batch_end not in (None, run.micro_batch) else "")
            colour = OUTCOME_COLOURS.get(run.outcome, "#777777")
            tip = (f"job {view.job.id} {view.job.name}, attempt {run.attempt}: {run.outcome or 'running'}, "
                   f"micro-batch {size}, {_clock(run.started_at)}–{_clock(end)}")
            out.append(f'<rect x="{left:.1f}" y="{y + 4}" width="{width:.1f}" height="{ROW_H - 8}" rx="3" '
                       f'fill="{colour}"><title>{escape(tip)}</title></rect>')
            if width > 30:
                out.append(f'<text x="{left + 4:.1f}" y="{y + ROW_H * 0.65:.1f}" class="bar">{size}</text>')
    out.append(f'<text x="4" y="{pressure_y + ROW_H * 0.65:.1f}" class="label">memory pressure</text>')
    readings = night.pressure
    for j, (at, level) in enumerate(readings):
        following = readings[j + 1][0] if j + 1 < len(readings) else night.until
        end = min(following, at + READING_HOLDS_S)
        out.append(f'<rect x="{x(at):.1f}" y="{pressure_y + 4}" width="{max(x(end) - x(at), 2.0):.1f}" '
                   f'height="{ROW_H - 8}" fill="{LEVEL_COLOURS[level]}"><title>{level} at {_clock(at)}</title></rect>')
    if not readings:
        out.append(f'<text x="{LABEL_W}" y="{pressure_y + ROW_H * 0.65:.1f}" class="tick">not read in this window</text>')
    out.append("</svg>")
    return "\n".join(out)


def _clock(t: float) -> str:
    return f"{datetime.fromtimestamp(t).astimezone():%H:%M:%S}"
