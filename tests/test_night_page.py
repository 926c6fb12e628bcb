"""The night's page as a person sees it: a night of real runs through the real daemon (the demo jobs, a job
that fails on a bad row, a job scaled down by the simulated pressure file), the page the daemon had written
when its queue emptied, opened in a real headless Chromium (tests/browser.py): no console error, every
image loaded, every job's row with its state and scores, the failed job's error and the command that
retries it. The screenshot stays in the test's folder (its path is printed)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.browser import Browser, find_chromium
from tests.conftest import REPO, Home, finish, job_file

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def examples(folder: Path) -> Path:
    """The demo's job files and data, with its tiny model (built if this checkout has none yet)."""
    shutil.copytree(REPO / "examples", folder, ignore=shutil.ignore_patterns("tiny-bert", "*.predictions.jsonl"))
    if (REPO / "examples" / "tiny-bert" / "config.json").is_file():
        shutil.copytree(REPO / "examples" / "tiny-bert", folder / "tiny-bert")
    else:
        subprocess.run([sys.executable, "-m", "mtld.train.tinymodel", str(folder / "tiny-bert"),
                        *map(str, sorted((folder / "data").glob("*.train.jsonl")))], check=True, capture_output=True)
    return folder


def bad_labels_job(folder: Path) -> Path:
    """sentiment.toml on a training file whose row 401 has a label outside the list: `submit` reads the first
    200 rows and accepts it; the run reads them all and fails (bad input, exit 2)."""
    rows = (folder / "data" / "sentiment.train.jsonl").read_text(encoding="utf-8")
    (folder / "data" / "bad.train.jsonl").write_text(rows + json.dumps({"text": "so-so", "label": "meh"}) + "\n")
    text = (folder / "sentiment.toml").read_text(encoding="utf-8")
    text = text.replace('name = "sentiment-quick"', 'name = "bad-labels"').replace("sentiment.train", "bad.train")
    job = folder / "bad-labels.toml"
    job.write_text(text.replace("priority = 5", "priority = 1"), encoding="utf-8")
    return job


@pytest.fixture(scope="module")
def night(tmp_path_factory, data_dir):
    """Four jobs run by the daemon until its queue is empty; returns (home, {name: job id})."""
    find_chromium()  # before a minute of training: fail (CI) or skip at once
    root = tmp_path_factory.mktemp("night")
    ex = examples(root / "examples")
    home = Home(root / "home")
    home.env.update({"MTLD_MEMORY__SAMPLE_EVERY_S": "0.2", "MTLD_MEMORY__DWELL_S": "0.4", "MTLD_MEMORY__QUIET_S": "2",
                     "MTLD_MEMORY__RESUME_CALM_S": "1", "MTLD_TRAIN__PROGRESS_EVERY_S": "0.5"})
    scaled = job_file(data_dir, name="scaled", epochs=8)  # long enough for a warn to outlast the dwell time
    ids = {"scaled": home.submit(scaled, "--priority", "10"),
           "sentiment-quick": home.submit(ex / "sentiment.toml"),
           "bad-labels": home.submit(bad_labels_job(ex)),
           "demo": home.submit(ex / "demo.toml")}
    daemon = home.daemon("--exit-when-idle")
    home.wait_for(lambda: home.run_events(ids["scaled"], "step.progress"), timeout=180)
    home.pressure.write_text("warn\n")  # memory pressure mid-run: the guard halves the micro-batch
    home.wait_for(lambda: home.run_events(ids["scaled"], "batch.scaled_down"), timeout=120)
    home.pressure.write_text("normal\n")
    code, stderr = finish(daemon, timeout=480)
    assert code == 0, stderr
    return home, ids


def test_the_night_ran_as_planned(night):
    home, ids = night
    states = {name: home.job(i).state for name, i in ids.items()}
    assert states == {"scaled": "succeeded", "sentiment-quick": "succeeded", "bad-labels": "failed", "demo": "succeeded"}
    [down] = home.run_events(ids["scaled"], "batch.scaled_down")
    assert (down["reason"], down["from"], down["to"]) == ("pressure", 4, 2)
    [written] = home.daemon_events("report.written")
    assert written["jobs"] == 4 and written["failed"] == 1


def test_the_nights_page_in_a_browser(night, tmp_path_factory):
    home, ids = night
    [written] = home.daemon_events("report.written")
    page = Path(written["path"])
    assert home.mtld("status").stdout.strip().splitlines()[-1].startswith(f"night   {page} ")
    shots = tmp_path_factory.mktemp("night-page")
    with Browser(shots / "profile") as browser:
        assert browser.open(page.as_uri()) == []  # no console error, no exception, nothing failed to load
        images = browser.evaluate("[...document.images].map(i => ({ok: i.complete && i.naturalWidth > 0, "
                                  "w: i.naturalWidth, alt: i.alt}))")
        rows = browser.evaluate("Object.fromEntries([...document.querySelectorAll('#jobs tr[data-job]')]"
                                ".map(r => [r.dataset.job, r.innerText]))")
        problems = browser.evaluate("[...document.querySelectorAll('.problem')].map(p => p.innerText)")
        bars = browser.evaluate("document.querySelectorAll('svg.timeline rect title').length")
        shot = browser.screenshot(shots / "night.png")
    print(f"\nthe night's page: {page}\nits screenshot: {shot}")
    assert len(images) == 4 and all(i["ok"] and i["w"] > 500 for i in images), images  # each run's figure
    assert set(rows) == {str(i) for i in ids.values()}
    for name, job_id in ids.items():
        row = rows[str(job_id)]
        assert name in row and home.job(job_id).state in row
        run_dir = Path(home.job(job_id).run_dir)
        if name == "bad-labels":
            continue
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert f"{metrics['best_score']:.3f} (step {metrics['best_step']})" in row
        best = next(e for e in metrics["evals"] if e["step"] == metrics["best_step"])
        for task, metric in metrics["primary_metrics"].items():
            assert f"{task} {metric} {best['tasks'][task][metric]:.3f}" in row
    assert "4 → 2" in rows[str(ids["scaled"])]  # scaled down for pressure
    [problem] = problems
    assert "bad-labels" in problem and "meh" in problem and f"mtld retry {ids['bad-labels']}" in problem
    assert bars >= 4 + 1  # a bar per run, and the pressure readings
    assert shot.stat().st_size > 50_000
