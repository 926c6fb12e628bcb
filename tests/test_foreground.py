"""`mtld train JOB`: the run the daemon would make, in the foreground. It starts at the size the daemon would
(mtld.decide.family.start_size: the family's history, the job's effective batch, the memory now), waits as
the daemon would under critical pressure, and takes an empty `--out` folder as its own."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mtld.config.settings import Settings
from mtld.estimate.history import job_family
from mtld.store import Store
from tests.conftest import events, run_cli

pytestmark = pytest.mark.slow  # whole (tiny) training runs


@pytest.fixture
def job(jobs, tmp_path, monkeypatch):
    """A job file for the tiny model (effective batch 8), MTLD_HOME under tmp, and the pressure level in a file."""
    for name in [n for n in __import__("os").environ if n.startswith("MTLD_")]:
        monkeypatch.delenv(name)
    pressure = tmp_path / "pressure"
    pressure.write_text("normal\n")
    monkeypatch.setenv("MTLD_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MTLD_MEMORY__PROBE", "simulated")
    monkeypatch.setenv("MTLD_MEMORY__SIMULATED_FILE", str(pressure))
    monkeypatch.setenv("MTLD_TRAIN__DEVICE", "cpu")
    task = jobs.task("classification", 16)

    def write(effective: int = 8) -> Path:
        path = tmp_path / f"job-{effective}.toml"
        path.write_text(f'name = "fg"\nmodel = "{jobs.model}"\nmax_length = 32\n'
                        f'[[tasks]]\nname = "t"\ntype = "classification"\ntrain = "{task["train"]}"\n'
                        f'text_field = "text"\nlabel_field = "label"\nlabels = ["pos", "neg"]\n'
                        f'[train]\nepochs = 1\neffective_batch_size = {effective}\nmixed_precision = "off"\n')
        return path

    write.pressure = pressure
    return write


def started(run_dir: Path) -> dict:
    [event] = events(run_dir, "run.started")
    return event


def test_an_empty_out_folder_is_used_and_a_pinned_size_never_exceeds_the_effective_batch(job, tmp_path):
    out = tmp_path / "made-beforehand"
    out.mkdir()
    code, _, err = run_cli("train", str(job(effective=4)), "--out", str(out), "--batch-size", "8")
    assert code == 0, err
    assert started(out)["micro_batch"] == 4  # the size the launch said, not a second decision in the child
    assert "micro-batch 4: pinned by the job (adaptation off); 4: the job's effective batch is 4" in err
    assert json.loads((out / ".mtld-run").read_text())["name"] == "fg" and (out / "model").is_dir()
    assert (out.stat().st_mode & 0o777) == 0o700


def test_it_starts_where_the_familys_history_says_as_the_daemon_would(job, tmp_path):
    from mtld.config.jobspec import load_job

    path = job()
    settings = Settings()
    with Store(settings.db_path) as store:  # a clean run at 4 that peaked at 30 % of its budget: one size up
        fam = job_family(load_job(path), "cpu")
        earlier = store.submit(name="before", spec_json="{}", job_file=str(path), run_root=str(tmp_path), now=0.0)
        run = store.start_run(earlier.id, micro_batch=4, family=fam, now=1.0)
        store.finish_run(run.id, outcome="succeeded", micro_batch_end=4, now=2.0,
                         figures={"peak_memory_bytes": 30, "budget_bytes": 100})
    out = tmp_path / "run"
    code, _, err = run_cli("train", str(path), "--out", str(out))
    assert code == 0, err
    assert started(out)["micro_batch"] == 8
    assert "the last run at 4 peaked at 30% of the budget" in err


def test_critical_pressure_holds_the_run_back_in_one_line(job, tmp_path):
    path = job()
    job.pressure.write_text("critical\n")
    out = tmp_path / "run"
    code, _, err = run_cli("train", str(path), "--out", str(out))
    assert code == 75
    assert err.strip() == "mtld train: not starting now: memory pressure is critical (the daemon would wait too)"
    assert not out.exists()
