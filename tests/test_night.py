"""The night's page without a browser: the default window, the command a failed job needs, the records read
from a store and run folders, the HTML, the daemon's hook and the CLI. tests/test_night_page.py looks at a
real night's page in Chromium."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import datetime, timezone
from html.parser import HTMLParser
from pathlib import Path

import pytest

from mtld.config.jobspec import JobSpec, spec_to_json
from mtld.config.settings import Settings
from mtld.daemon.loop import Daemon
from mtld.logs.events import configure
from mtld.report.night import busy_stretch, collect_night, fix_command
from mtld.report.nightly import NightReport, latest_page, write_night
from mtld.report.page import render_page
from mtld.store import Job, Run, Store, Transition
from mtld.testing import FakeExecutor, ScriptedProbe
from tests.conftest import REPO, log_events

T0 = 1_790_000_000.0
SPEC = JobSpec.model_validate({"name": "job", "model": "/models/bert", "tasks": [
    {"name": "t", "type": "classification", "train": "/data/t.jsonl"}]})


def moves(job_id: int, *steps: tuple[str, float]) -> list[Transition]:
    return [Transition(i, job_id, None, state, at, "") for i, (state, at) in enumerate(steps)]


# ---------------------------------------------------------------- the default window


@pytest.mark.parametrize(("jobs", "held", "expected"), [
    ([], set(), None),
    # one job: queued at 10, ran, done at 50
    ([moves(1, ("queued", 10), ("running", 20), ("succeeded", 50))], set(), (10, 50)),
    # two nights: the queue was empty between 50 and 100
    ([moves(1, ("queued", 10), ("succeeded", 50)), moves(2, ("queued", 100), ("running", 110), ("failed", 120))],
     set(), (100, 120)),
    # overlapping jobs chain into one stretch, even when a short one sits between in the order
    ([moves(1, ("queued", 0), ("running", 5), ("succeeded", 100)), moves(2, ("queued", 10), ("succeeded", 20)),
      moves(3, ("queued", 50), ("succeeded", 60))], set(), (0, 100)),
    # touching counts as one stretch
    ([moves(1, ("queued", 10), ("succeeded", 50)), moves(2, ("queued", 50), ("succeeded", 70))], set(), (10, 70)),
    # retried: failed at 30, queued again at 200, still running
    ([moves(1, ("queued", 10), ("failed", 30), ("queued", 200), ("running", 201))], set(), (200, 1000)),
    # still queued now: the stretch runs to now
    ([moves(1, ("queued", 10), ("succeeded", 40)), moves(2, ("queued", 30))], set(), (10, 1000)),
    # on hold since its last move (150): waiting for a person, not work; the night of job 3 began at 300
    ([moves(1, ("queued", 100), ("running", 110), ("queued", 150)), moves(3, ("queued", 300), ("succeeded", 320))],
     {1}, (300, 320)),
])
def test_the_night_is_the_last_stretch_in_which_the_queue_was_busy(jobs, held, expected):
    assert busy_stretch(jobs, held, now=1000) == expected


def job(state: str, hold: str | None = None, job_id: int = 7) -> Job:
    return Job(job_id, "j", state, 0, None, T0, T0, None, "auto", "{}", "/j.toml", "/runs/7-j", 1, None, False, None,
               hold=hold)


def run(outcome: str | None) -> Run:
    return Run(1, 7, 1, T0, T0 + 10, None, 4, 2, None, outcome, None, None, {})


@pytest.mark.parametrize(("state", "hold", "outcome", "command"), [
    ("succeeded", None, "succeeded", None),
    ("running", None, None, None),
    ("queued", None, None, None),
    ("failed", None, "bad_input", "mtld retry 7"),  # after fixing the data its error names
    ("failed", None, "crashed", "mtld retry 7"),
    ("failed", None, "start_failed", "mtld retry 7"),
    ("failed", None, "out_of_memory", "mtld restart 7 --batch-size 2"),  # out of memory at every size
    ("failed", None, "killed", "mtld restart 7 --batch-size 2"),
    ("cancelled", None, "interrupted", "mtld retry 7"),
    ("queued", "disk full: 2 GB needed", "disk_full", "mtld retry 7"),
])
def test_the_command_a_failed_or_held_job_needs(state, hold, outcome, command):
    assert fix_command(job(state, hold), run(outcome) if outcome else None) == command


# ---------------------------------------------------------------- a night in a store


@pytest.fixture
def night_home(tmp_path, monkeypatch):
    """A store with a night: job 1 succeeded (with scores and a log), job 2 failed with a bad row, job 3 on
    hold for disk space, job 4 finished the day before (outside the window)."""
    for name in [n for n in os.environ if n.startswith("MTLD_")]:
        monkeypatch.delenv(name)
    settings = Settings(home=tmp_path / "home", daemon={"notify": False, "prevent_sleep": False})
    configure(settings.daemon_log)
    with Store(settings.db_path) as store:
        def submit(name: str, at: float) -> Job:
            return store.submit(name=name, spec_json=spec_to_json(SPEC.model_copy(update={"name": name})),
                                job_file="/jobs/j.toml", run_root=str(settings.local_runs_dir), now=at)

        old = submit("yesterday", T0 - 86_400)
        r = store.start_run(old.id, micro_batch=4, now=T0 - 86_000)
        store.finish_run(r.id, outcome="succeeded", now=T0 - 85_000)
        store.transition(old.id, "succeeded", reason="done", now=T0 - 85_000)

        good, bad, held = submit("good", T0), submit("bad-labels", T0 + 1), submit("held", T0 + 2)
        r = store.start_run(good.id, micro_batch=8, now=T0 + 10)
        folder = Path(good.run_dir)
        folder.mkdir(parents=True)
        (folder / "model").mkdir()
        (folder / "best").mkdir()
        stamp = lambda t: datetime.fromtimestamp(t, timezone.utc).isoformat()  # noqa: E731
        lines = [{"ts": stamp(T0 + 11), "event": "run.started", "micro_batch": 8, "total_steps": 50},
                 {"ts": stamp(T0 + 11), "event": "run.estimate", "predicted_s": 400.0},
                 {"ts": stamp(T0 + 12), "event": "memory.sample", "pressure": "normal"},
                 {"ts": stamp(T0 + 200), "event": "memory.sample", "pressure": "warn"},
                 {"ts": stamp(T0 + 201), "event": "batch.scaled_down", "from": 8, "to": 4, "reason": "pressure", "step": 20},
                 {"ts": stamp(T0 + 300), "event": "step.progress", "step": 40, "micro_batch": 4, "loss": 0.5},
                 {"ts": stamp(T0 + 510), "event": "run.finished", "outcome": "succeeded"}]
        (folder / "run.jsonl").write_text("".join(json.dumps(e) + "\n" for e in lines))
        (folder / "metrics.json").write_text(json.dumps({
            "best_score": 0.81, "best_step": 50, "primary_metrics": {"t": "macro_f1"},
            "evals": [{"step": 25, "score": 0.6, "tasks": {"t": {"accuracy": 0.7, "macro_f1": 0.6}}},
                      {"step": 50, "score": 0.81, "tasks": {"t": {"accuracy": 0.9, "macro_f1": 0.81}}}]}))
        store.finish_run(r.id, outcome="succeeded", now=T0 + 510, micro_batch_end=4)
        store.transition(good.id, "succeeded", reason="done", now=T0 + 510)
        r = store.start_run(bad.id, micro_batch=4, now=T0 + 520)
        store.finish_run(r.id, outcome="bad_input", now=T0 + 530, exit_code=2)
        store.transition(bad.id, "failed", reason="bad input", now=T0 + 530,
                         last_error="bad input: t.jsonl line 250: label '<meh>' is not in the label list")
        store.set_hold(held.id, "disk full: 2.0 GB needed on /runs, 0.5 GB free", now=T0 + 540)
    return settings


def test_the_night_holds_the_jobs_of_its_window_with_their_scores_estimate_and_pressure(night_home):
    with Store(night_home.db_path) as store:
        night = collect_night(night_home, store, T0 - 1, T0 + 600)
    assert [v.job.name for v in night.jobs] == ["good", "bad-labels", "held"]  # not yesterday's
    good, bad, held = night.jobs
    assert (good.estimate_s, good.duration_s, good.has_model, good.has_best) == (400.0, 500.0, True, True)
    assert (good.scores.best_step, good.scores.tasks["t"].metric) == (50, "macro_f1")
    assert [v.fix for v in night.jobs] == [None, f"mtld retry {bad.job.id}", f"mtld retry {held.job.id}"]
    assert [level for _, level in night.pressure] == ["normal", "warn"]


class Page(HTMLParser):
    """The page's tags and text, as a browser would parse them."""

    def __init__(self, text: str):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def test_the_page_is_self_contained_and_says_what_needs_a_person(night_home):
    with Store(night_home.db_path) as store:
        night = collect_night(night_home, store, T0 - 1, T0 + 600)
    good, bad, held = night.jobs
    html = render_page(night, {good.job.id: b"\x89PNG fake"})
    page = Page(html)
    text = " ".join(page.text)
    # nothing loads from anywhere: no script, no link, every image inline
    assert not [t for t, a in page.tags if t in ("script", "link", "iframe")]
    assert all(a["src"].startswith("data:image/png;base64,") for t, a in page.tags if t == "img")
    assert not re.search(r"""(?:src|href)=["'](?:https?:|//)""", html)
    # every job's row, and its section
    rows = [a["data-job"] for t, a in page.tags if t == "tr" and "data-job" in a]
    assert rows == [str(v.job.id) for v in night.jobs]
    # the failed and the held job: the last error, and the command
    assert f"mtld retry {bad.job.id}" in text and f"mtld retry {held.job.id}" in text
    assert "label '<meh>' is not in the label list" in text and "disk full: 2.0 GB needed" in text
    assert "<meh>" not in html and "&lt;meh&gt;" in html  # escaped, as text
    assert "0.810 (step 50)" in text and "t macro_f1 0.810" in text
    assert "8 → 4" in text and "8.3 min" in text and "6.7 min (+25 %)" in text  # took 500 s against 400 s
    assert len([a for t, a in page.tags if t == "img"]) == 1  # the jobs without a run log have no figure


# ---------------------------------------------------------------- the daemon's hook


class FakeChild:
    def __init__(self, argv, code=0, stderr=b""):
        self.argv, self.code, self.stderr, self.returncode = argv, code, stderr, None
        self.done = False

    def poll(self):
        if self.done:
            self.returncode = self.code
        return self.returncode

    def communicate(self):
        return b"", self.stderr

    def wait(self, timeout=None):
        self.done = True
        return self.poll()


class Starts:
    def __init__(self, code=0, stderr=b""):
        self.children: list[FakeChild] = []
        self.code, self.stderr = code, stderr

    def __call__(self, argv):
        self.children.append(FakeChild(argv, self.code, self.stderr))
        return self.children[-1]


def test_the_page_is_written_once_when_the_queue_empties_after_runs_and_announced_once(tmp_path):
    settings = Settings(home=tmp_path / "home")
    notes, starts = [], Starts()
    night = NightReport(settings, log=None, notify=lambda title, text: notes.append(text), start=starts)
    night.observe(busy=True, running=False, now=T0)  # queued, waiting for a window
    night.observe(busy=False, running=False, now=T0 + 1)  # cancelled before it ran: no night's work
    assert starts.children == []
    night.observe(busy=True, running=True, now=T0 + 2)
    night.observe(busy=True, running=False, now=T0 + 3)  # between two runs
    night.observe(busy=False, running=False, now=T0 + 4)
    [child] = starts.children
    assert child.argv[1:] == ["-m", "mtld", "report", "--out", str(night.page)]
    assert night.page.parent == settings.state_dir / "reports" and night.page.name.startswith("night-")
    night.observe(busy=False, running=False, now=T0 + 5)
    assert notes == []  # still writing
    child.done = True
    night.observe(busy=False, running=False, now=T0 + 6)
    night.observe(busy=False, running=False, now=T0 + 7)
    assert notes == [f"What ran overnight: {night.page}"] and len(starts.children) == 1


def test_a_page_that_cannot_be_written_is_logged_and_the_next_night_tries_again(tmp_path):
    from tests.conftest import capturing_log, take

    log, capture = capturing_log()
    settings = Settings(home=tmp_path / "home")
    starts = Starts(code=1, stderr=b"noise\nmtld report: something broke\n")
    night = NightReport(settings, log=log, notify=lambda *a: pytest.fail("announced a page that failed"), start=starts)
    for busy, running in ((True, True), (False, False)):
        night.observe(busy=busy, running=running, now=T0)
    night.close(timeout_s=1)
    [failed] = [e for e in take(capture) if e["event"] == "report.failed"]
    assert (failed["exit_code"], failed["error"]) == (1, "mtld report: something broke")
    for busy, running in ((True, True), (False, False)):
        night.observe(busy=busy, running=running, now=T0 + 100)
    assert len(starts.children) == 2


def test_the_daemon_has_the_page_written_when_its_queue_empties(tmp_path, monkeypatch):
    for name in [n for n in os.environ if n.startswith("MTLD_")]:
        monkeypatch.delenv(name)
    settings = Settings(home=tmp_path / "home", train={"device": "cpu"}, daemon={"prevent_sleep": False, "notify": False})
    configure(settings.daemon_log)
    starts = Starts()
    with Store(settings.db_path) as store:
        executor = FakeExecutor()
        daemon = Daemon(settings, store, executor=executor, probe=ScriptedProbe(["normal"]), clock=lambda: T0,
                        night=NightReport(settings, log=None, start=starts))
        for name in ("a", "b"):
            store.submit(name=name, spec_json=spec_to_json(SPEC.model_copy(update={"name": name})),
                         job_file="/jobs/j.toml", run_root=str(settings.local_runs_dir), now=T0 - 60)
        daemon.tick(T0)
        executor.runs[-1].end(0)
        daemon.tick(T0 + 1)  # the first ends, the second starts: still busy
        assert starts.children == []
        executor.runs[-1].end(0)
        daemon.tick(T0 + 2)
        daemon.tick(T0 + 3)
        assert len(starts.children) == 1 and "report" in starts.children[0].argv


# ---------------------------------------------------------------- the command line, a real child


def mtld(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MTLD_")} | {"MTLD_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "mtld", *args], env=env, capture_output=True, text=True, timeout=120,
                          cwd=REPO)


def test_report_writes_the_night_and_status_ends_with_its_path(night_home):
    out = night_home.home / "pages" / "night.html"
    since = datetime.fromtimestamp(T0 - 1).isoformat()  # a local time: the window holds tonight's three jobs
    done = mtld(night_home.home, "report", "--since", since, "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(out) and "<h1>" in out.read_text()
    assert oct(out.stat().st_mode & 0o777) == "0o600"
    [written] = log_events(night_home.daemon_log, "report.written")
    assert (written["path"], written["jobs"], written["failed"]) == (str(out), 3, 2)
    assert latest_page(night_home) is None  # --out elsewhere: not in the reports folder
    with Store(night_home.db_path) as store:
        page, _ = write_night(night_home, store, since=None, until=T0 + 600)
    status = mtld(night_home.home, "status")
    assert status.stdout.strip().splitlines()[-1].startswith(f"night   {page} ")
    assert json.loads(mtld(night_home.home, "status", "--json").stdout)["night_page"] == str(page)


@pytest.mark.parametrize(("args", "message"), [
    (["report", "--since", "soon"], "--since: not a duration (12h, 90m) nor a time (2026-12-01T21:00): 'soon'"),
    (["report", "--since", "2999-01-01T00:00"], "--since: '2999-01-01T00:00' is in the future"),
    (["report", "1", "--since", "12h"], "--since: the night's page covers every job; give it without a RUN"),
])
def test_bad_report_options_are_one_line_and_exit_2(tmp_path, args, message):
    done = mtld(tmp_path / "home", *args)
    assert (done.returncode, done.stderr.strip()) == (2, message)


def test_the_daemons_child_writes_the_page(night_home, monkeypatch):
    """NightReport's own child (`python -m mtld report --out PAGE`), not a fake: the page is there after."""
    night = NightReport(night_home, log=None)
    monkeypatch.setenv("MTLD_HOME", str(night_home.home))  # the child reads the daemon's environment
    night.observe(busy=True, running=True, now=T0 + 700)
    night.observe(busy=False, running=False, now=T0 + 701)
    night.close(timeout_s=120)
    assert night.child is None and night.page is not None and night.page.is_file()
    assert latest_page(night_home) == night.page


def test_the_daemons_process_loads_neither_matplotlib_nor_torch_for_the_page(tmp_path):
    """The daemon holds a NightReport; the drawing happens in its child, so the daemon stays light."""
    code = f"""
import json, sys
from mtld.config.settings import Settings
from mtld.daemon.loop import Daemon
from mtld.report.nightly import NightReport
from mtld.store import Store
from mtld.testing import ScriptedProbe
settings = Settings(home={str(tmp_path)!r}, daemon={{"notify": False, "prevent_sleep": False}})
with Store(settings.db_path) as store:
    Daemon(settings, store, probe=ScriptedProbe(["normal"]), night=NightReport(settings, None)).tick(0.0)
print(json.dumps(sorted(m for m in ("matplotlib", "torch", "transformers") if m in sys.modules)))
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == []


@pytest.mark.parametrize(("span_s", "step_s"), [(50, 10), (115, 10), (121, 15), (3600, 300), (8 * 3600, 3600),
                                                  (10 * 86_400, 21_600)])
def test_the_timeline_puts_at_most_a_dozen_round_ticks_on_its_axis(span_s, step_s):
    from mtld.report.timeline import tick_step_s

    assert tick_step_s(span_s) == step_s
