"""What the CLI prints for people: the tables and lines of `status`, `show`, `schedules`, `estimate`,
`doctor` and `agent status`, and the estimate's JSON form.

Each function takes what a command computed (the same dicts `--json` prints)
and writes it to a rich Console; nothing here reads the store or the disk.
Times are shown in local time, to the minute. Text that comes from users or
runs (names, paths, errors, reasons) is never read as rich markup: a label
such as "[/]" in an error message prints as itself.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from mtld.executor import ExecutorPlugin
from mtld.executor import registry

if TYPE_CHECKING:
    from mtld.decide.runtime import PlanSummary, Prediction


# ---------------------------------------------------------------- values


def duration_text(seconds: float | None) -> str:
    """1m05s, 2h03m; ? when unknown."""
    if seconds is None:
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def bytes_text(n: int | None) -> str:
    return "?" if n is None else f"{n / 2**20:,.0f} MiB"


def local_iso(value: str | None) -> str:
    """An ISO time (UTC, as --json has it) in local time: 2026-11-28 01:30."""
    if not value:
        return ""
    return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone().strftime("%Y-%m-%d %H:%M")


def local(epoch: float | None) -> str:
    """Seconds since the epoch in local time: 2026-11-28 01:30."""
    if epoch is None:
        return ""
    return datetime.fromtimestamp(epoch).astimezone().strftime("%Y-%m-%d %H:%M")


# ---------------------------------------------------------------- mtld status, schedules


def status(out: Console, info: dict[str, Any]) -> None:
    """`mtld status`: the daemon, the running job, the run windows, the queue, schedules, finished jobs."""
    d = info["daemon"]
    state = "not running" if not d["running"] else f"running (pid {d['pid']})"
    out.print(f"[bold]daemon[/]  {state}{', paused: no new jobs start' if d['paused'] else ''}")
    e = info.get("executor") or {}
    for line in _executor_kind(e.get("kind")).lines(e):  # each executor says what it adds (none for local)
        out.print(line, markup=False)
    if e.get("problem"):  # a configuration error the daemon found: queued jobs wait for it to be fixed
        out.print(f"[bold]waiting[/] queued jobs wait: {escape(e['problem'])}")
    for job in info["running"]:
        out.print(running_line(job))
        run = job.get("run") or {}
        for line in _executor_kind(run.get("executor")).run_lines(run):
            out.print(f"        {line}", markup=False)
    w = info["schedule"]
    if w["windows"]:
        when = f"inside, until {local_iso(w['closes_at'])}" if w["inside"] else f"outside; the next opens {local_iso(w['next_opens_at'])}"
        if w.get("kept_awake"):
            when += " (the machine is kept awake until then; closing the lid still sleeps it)"
        out.print(f"[bold]windows[/] {escape(', '.join(w['windows']))}: {when}")
    if info["queued"]:
        out.print("[bold]queued[/]")
        out.print(jobs_table(info["queued"], ("id", "name", "priority", "batch_size", "expected_start", "expected_finish", "hold", "last_error")))
    if info["schedules"]:
        out.print("[bold]schedules[/]")
        out.print(jobs_table(info["schedules"], ("id", "name", "cron", "next_fire_at", "fired")))
    if info["finished"]:
        out.print("[bold]finished[/]")
        out.print(jobs_table(info["finished"], ("id", "name", "state", "finished_at", "attempts", "last_error")))
    if info.get("finished_hidden"):
        out.print(f"{info['finished_hidden']} older finished jobs not shown: mtld status --all")
    if not (info["running"] or info["queued"] or info["finished"]):
        out.print("No jobs." + ("" if info.get("states") else " Queue one with: mtld submit JOB.toml"))
    if info.get("disk"):
        out.print(disk_line(info["disk"]), markup=False)
    if info.get("night_page"):
        out.print(f"night   {info['night_page']} (the last night's page: open it in a browser)", markup=False)


def _executor_kind(kind: str | None) -> type[ExecutorPlugin]:
    """The executor kind a view names; an unknown one (no longer installed) says nothing more."""
    return (registry.kind(kind) if kind else None) or ExecutorPlugin


def disk_line(d: dict[str, Any]) -> str:
    from mtld.disk import size_text

    folders = f"{d['run_folders']} run folder{'s' if d['run_folders'] != 1 else ''}"
    return (f"disk    runs take {size_text(d['runs_bytes'])} in {folders}; {size_text(d['free_bytes'])} free on "
            f"{d['runs_dir']} (mtld clean frees finished jobs' folders)")



def running_line(job: dict[str, Any]) -> str:
    """The running job: its progress bar, steps, micro-batch, speed, ETA and memory level (rich markup)."""
    p = job.get("progress") or {}
    head = f"[bold]running[/] {job['id']} {escape(job['name'])}"
    if (job.get("run") or {}).get("waiting") and not p.get("total"):  # on a cluster, not started yet
        return f"{head}  waiting for the cluster (micro-batch {job['run'].get('micro_batch', '?')})"
    if not p.get("total"):
        return f"{head}  starting (micro-batch {(job.get('run') or {}).get('micro_batch', '?')})"
    done = p["step"] / p["total"]
    bar = "#" * round(done * 24) + "-" * (24 - round(done * 24))
    eta = duration_text(p.get("eta_s"))
    memory = f"  memory {p['memory_level']}" if p.get("memory_level") else ""
    return (f"{head}  \\[{bar}] {p['step']}/{p['total']} steps  micro-batch {p['micro_batch']}  "
            f"{p['samples_per_s']} samples/s  ETA {eta}{memory}")


# In a narrow terminal every column but the ID wraps (rich shrinks only columns that may wrap); the ID, which
# `mtld retry` and `mtld show` need, is never cut. `mtld show ID` and `--json` have every value on one line.


def jobs_table(views: list[dict[str, Any]], columns: tuple[str, ...]) -> Table:
    table = Table(box=None, pad_edge=False)
    for column in columns:
        header = column.upper().replace("_", " ")
        if column == "id":
            table.add_column(header, no_wrap=True, min_width=max([len(_cell(v, column)) for v in views] + [2]))
        else:
            table.add_column(header, overflow="fold")
    for view in views:
        table.add_row(*(Text(_cell(view, c)) for c in columns))  # Text: a cell is never read as markup
    return table


def _cell(view: dict[str, Any], column: str) -> str:
    value = view.get(column)
    if value is None and column.startswith("expected_"):
        return "-" if view.get("hold") else "?"  # "?": no earlier run has measured a duration
    if column.endswith(("_at", "not_before", "_start", "_finish")):
        return local_iso(value)
    return "" if value is None else str(value)


def schedules(out: Console, views: list[dict[str, Any]]) -> None:
    """`mtld schedules`: recurring jobs with their next firing."""
    if not views:
        out.print("No schedules. Add one with: mtld submit JOB.toml --every '0 1 * * *'")
    else:
        out.print(jobs_table(views, ("id", "name", "cron", "next_fire_at", "last_fired_at", "fired", "job_file")))


# ---------------------------------------------------------------- mtld show


def show(out: Console, view: dict[str, Any], spec: dict[str, Any], runs: list[dict[str, Any]],
        transitions: list[dict[str, Any]]) -> None:
    """`mtld show ID`: the job's fields, its tasks, each run with its sizes, its state history."""
    for key in ("id", "name", "state", "priority", "batch_size", "submitted_at", "not_before", "attempts", "run_dir",
                "job_file", "last_error", "hold", "removed_at"):
        if view.get(key) not in (None, ""):
            out.print(f"[bold]{key:>12}[/]  {escape(str(view[key]))}")
    outside = "  (outside the job file's folder)" if view.get("model_outside_job_folder") else ""
    out.print(f"{'model':>12}  {spec.get('model')}{outside}", markup=False)
    tasks = ", ".join(f"{t.get('name')} ({t.get('type')})" for t in spec.get("tasks") or [])
    out.print(f"[bold]{'tasks':>12}[/]  {escape(tasks)}")
    for r in runs:
        sizes = str(r["micro_batch"]) + (f"→{r['micro_batch_end']}" if r["micro_batch_end"] not in (None, r["micro_batch"]) else "")
        out.print(f"[bold]{'run ' + str(r['attempt']):>12}[/]  {escape(r['outcome'] or 'running')}  micro-batch {sizes}", markup=True)
        if r.get("start_reason"):
            out.print(f"{'':>12}  why {r['micro_batch']}: {r['start_reason']}", markup=False)
        if r.get("reason"):  # why it ended, the executor's own words kept (a cluster's message)
            out.print(f"{'':>12}  ended: {r['reason']}", markup=False)
        elif r.get("waiting"):
            out.print(f"{'':>12}  {r['waiting']}", markup=False)
    for t in transitions:
        out.print(f"{'':>12}  {local(t['at'])}  {t['from_state'] or '-'} -> {t['to_state']}  ({t['reason']})", markup=False)


# ---------------------------------------------------------------- mtld estimate


def estimate_table(plan: PlanSummary, rows: Sequence[Prediction], compiled: tuple[bool, str] | None = None) -> str:
    """`mtld estimate`: one line per size (plain text, no markup), then whether the run compiles, and why."""
    lines = [f"{plan.steps} optimizer steps, {plan.evaluations} evaluations, {plan.saves} saves",
             f"{'size':>4}  {'duration':>9}  {'peak memory':>12}  {'fits now':>8}  basis"]
    for r in rows:
        fits = {True: "yes", False: "no", None: "?"}[r.fits]
        peak = bytes_text(r.peak_bytes) + ("*" if r.peak_extrapolated else "")
        mark = "  <- mtld would choose this" if r.chosen else ""
        lines.append(f"{r.micro_batch:>4}  {duration_text(r.seconds):>9}  {peak:>12}  {fits:>8}  {r.basis}{mark}")
    if any(r.extrapolated or r.peak_extrapolated for r in rows):
        lines.append("extrapolated rows (basis 'extrapolated from', peaks marked *) are less certain; "
                     "`mtld estimate --probe` measures every size")
    if compiled is not None:
        lines.append(f"torch.compile: {'yes' if compiled[0] else 'no'} ({compiled[1]})")
    return "\n".join(lines)


def estimate_json(plan: PlanSummary, rows: Sequence[Prediction],
                  compiled: tuple[bool, str] | None = None) -> dict[str, Any]:
    """`mtld estimate --json`: the plan's figures, the same rows as the table and the compile decision."""
    out: dict[str, Any] = {"plan": {"steps": plan.steps, "evaluations": plan.evaluations, "saves": plan.saves,
                                    "padded_tokens": {str(k): v for k, v in plan.padded_tokens.items()}},
                           "rows": [r.as_dict() for r in rows]}
    if compiled is not None:
        out["compile"] = {"compile": compiled[0], "reason": compiled[1]}
    return out


# ---------------------------------------------------------------- mtld doctor, agent status


def doctor(out: Console, info: dict[str, dict[str, Any]]) -> None:
    for section, fields in info.items():
        out.print(f"[bold]{section}[/]")
        for key, value in fields.items():
            shown = json.dumps(value, ensure_ascii=False) if isinstance(value, (dict, list)) else value
            out.print(f"  {key:<22} {shown}", markup=False)


def agent_status(out: Console, info: dict[str, Any]) -> None:
    for key, value in info.items():
        if value not in (None, ""):
            out.print(f"[bold]{key:>10}[/]  {escape(str(value))}")


# ---------------------------------------------------------------- mtld clean, remove


def cleaned(out: Console, info: dict[str, Any]) -> None:
    """`mtld clean` / `mtld remove`: one line per job, then the total."""
    from mtld.disk import size_text

    verb = "would remove" if info["dry_run"] else "removed"
    for r in info["removed"]:
        kept = f" (kept {', '.join(r['kept'])})" if r["kept"] else ""
        out.print(f"{verb} job {r['id']} {r['name']} ({r['state']}): {size_text(r['bytes'])} in {r['run_dir']}{kept}",
                  markup=False)
    for r in info["skipped"]:
        out.print(f"skipped job {r['id']} {r['name']}: {r['skipped']}", markup=False)
    total = f"{info['jobs']} job{'s' if info['jobs'] != 1 else ''}, {size_text(info['bytes'])}"
    out.print(f"{'would free' if info['dry_run'] else 'freed'} {total}" if info["jobs"] else "nothing to remove",
              markup=False)
