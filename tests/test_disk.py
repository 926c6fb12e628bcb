"""Disk space, checkpoints by time, and cleaning up: the pure rules and the daemon's side, in-process.

The real full disk (a tmpfs that fills up mid-run) is in test_disk_drill.py.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from mtld.decide import policy
from mtld.runs import exitcodes
from mtld.queue.cleanup import clean, remove
from mtld.daemon.loop import Daemon
from mtld.disk import private_dir, shortfall_text, size_text, space_needed, tree_bytes
from mtld.config.durations import parse_duration
from mtld.decide.runtime import summarize
from mtld.config.jobspec import JobFileError, JobSpec, spec_from_dict, spec_to_json
from mtld.logs.events import configure
from mtld.runs.rundir import RunDir, RunDirRefused
from mtld.config.settings import Settings
from mtld.queue.status import collect
from mtld.store import InvalidTransition, Store
from mtld.testing import FakeExecutor, ScriptedProbe
from tests.conftest import log_events
from tests.test_daemon_loop import T0, reading

GB = 10**9

# ------------------------------------------------------------------ the rules


@pytest.mark.parametrize(("checkpoint", "export", "keep", "on_disk", "exports", "margin", "expected"), [
    (3 * GB, GB, 2, 0, 0, 0, 3 * 3 * GB + 2 * GB),  # a first run: keep 2, plus the one being written
    (3 * GB, GB, 2, 2, 0, 0, 3 * GB + 2 * GB),  # two on disk: the next one only (then the oldest goes)
    (3 * GB, GB, 2, 2, 2, 0, 3 * GB + GB),  # both exports there: one is rewritten beside the old one
    (3 * GB, GB, 1, 5, 1, 256 * 10**6, 3 * GB + GB + 256 * 10**6),  # the margin comes on top
])
def test_the_space_a_run_needs(checkpoint, export, keep, on_disk, exports, margin, expected):
    assert space_needed(checkpoint_bytes=checkpoint, export_bytes=export, keep=keep, checkpoints_on_disk=on_disk,
                        exports_on_disk=exports, margin_bytes=margin) == expected


def test_the_shortfall_says_how_much_where_and_what_is_free():
    assert shortfall_text(int(2.6e9), int(3e8), "/runs/3-demo") == \
        "disk full: 2.6 GB needed on /runs/3-demo, 300.0 MB free"
    assert [size_text(n) for n in (0, 999, 12_345, 5 * GB)] == ["0 B", "999 B", "12.3 KB", "5.0 GB"]


@pytest.mark.parametrize(("text", "seconds"), [("90s", 90), ("10m", 600), ("1h", 3600), ("1.5h", 5400), ("7d", 604800)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["10", "10x", "m", "0s", "-5m", ""])
def test_bad_durations(text):
    with pytest.raises(ValueError):
        parse_duration(text)


def spec(**train) -> JobSpec:
    raw = {"name": "job", "model": "org/bert", "tasks": [{"name": "t", "type": "classification", "train": "/t.jsonl"}],
           "train": train}
    return JobSpec.model_validate(raw)


def test_checkpoint_every_takes_steps_or_a_duration_and_defaults_to_ten_minutes():
    assert spec().train.checkpoint_every == "10m"
    assert spec(checkpoint_every=50).train.checkpoint_every == 50
    assert spec(checkpoint_every="90S").train.checkpoint_every == "90s"
    round_trip = JobSpec.model_validate_json(spec_to_json(spec(checkpoint_every="1h")))
    assert round_trip.train.checkpoint_every == "1h"


@pytest.mark.parametrize(("value", "message"), [(0, "number of steps"), ("10x", "not a duration"), ("0m", "more than 0")])
def test_a_bad_checkpoint_every_is_refused_with_one_line(tmp_path, value, message):
    raw = {"name": "job", "model": "org/bert", "tasks": [{"name": "t", "type": "classification", "train": "t.jsonl"}],
           "train": {"checkpoint_every": value}}
    with pytest.raises(JobFileError) as caught:
        spec_from_dict(raw, base_dir=tmp_path, shown_as="job.toml", check_data=False)
    assert any(p.key == "train.checkpoint_every" and message in p.message for p in caught.value.problems)


def test_checkpoints_are_due_by_steps_or_by_time():
    from mtld.train.checkpoint import checkpoint_due

    assert [checkpoint_due(3, None, step=s, seconds_since=0.0) for s in (1, 2, 3, 6)] == [False, False, True, True]
    assert checkpoint_due(None, 600.0, step=7, seconds_since=599.9) is False
    assert checkpoint_due(None, 600.0, step=7, seconds_since=600.0) is True


def test_the_estimate_counts_saves_at_epoch_ends_when_checkpoints_go_by_time():
    plans = [[SimpleNamespace(task=0, ids=np.arange(4))] * 10 for _ in range(3)]  # 3 epochs of 10 steps
    lengths = [np.full(4, 10)]
    padded = lambda ids, lengths, m: int(lengths[ids].sum())  # noqa: E731

    def saves(every):
        train = SimpleNamespace(effective_batch_size=4, eval_every=0, checkpoint_every=every)
        return summarize(plans, lengths, [None], train, padded).saves

    # steps, epoch ends, never the last step (the export follows it at once), the export
    assert saves(4) == len({4, 8, 12, 16, 20, 24, 28} | {10, 20}) + 1
    assert saves("10m") == 2 + 1  # by time: the epoch ends but the last, and the export


def test_a_disk_full_exit_holds_the_job_instead_of_failing_or_retrying_it():
    hold = "disk full: 2.6 GB needed on /runs/3-demo, 300.0 MB free"
    decision = policy.after_exit(exit_code=exitcodes.DISK_FULL, signal=None, earlier_failures=5, max_attempts=3,
                                 backoff_s=60, cancel_requested=False, stop_reason=None, message=hold, now=T0)
    assert (decision.outcome, decision.job_state, decision.hold, decision.retry_at) == ("disk_full", "queued", hold, None)
    assert "disk_full" not in policy.FAILED_OUTCOMES  # it never counts against the job's attempts


# ------------------------------------------------------------------ the daemon


@pytest.fixture
def make(tmp_path, monkeypatch):
    """make(free=bytes, **disk settings) -> (daemon, store, executor, settings, free); free["bytes"] can change."""
    for name in [n for n in os.environ if n.startswith("MTLD_")]:
        monkeypatch.delenv(name)
    made = []

    def build(free_bytes: int = 100 * GB, **disk):
        settings = Settings(home=tmp_path / "home", train={"device": "cpu"},
                            daemon={"prevent_sleep": False, "notify": False}, disk={"margin_mb": 0, **disk})
        configure(settings.daemon_log)
        store = Store(settings.db_path)
        executor = FakeExecutor()
        free = {"bytes": free_bytes}
        daemon = Daemon(settings, store, executor=executor, probe=ScriptedProbe([reading("normal")]), clock=lambda: T0,
                        free_bytes=lambda path: free["bytes"])
        notes: list[tuple[str, str]] = []
        daemon.disk.notify = lambda title, text: notes.append((title, text))
        made.append(store)
        return SimpleNamespace(daemon=daemon, store=store, executor=executor, settings=settings, free=free, notes=notes)

    yield build
    for store in made:
        store.close()


def model_folder(tmp_path: Path, weight_bytes: int) -> Path:
    folder = tmp_path / "model"
    folder.mkdir(exist_ok=True)
    with open(folder / "model.safetensors", "wb") as f:
        f.truncate(weight_bytes)  # sparse: the size counts, not the blocks
    return folder


def submit(t, model: Path, name: str = "job", **train) -> int:
    job_spec = JobSpec.model_validate({"name": name, "model": str(model), "tasks": [
        {"name": "t", "type": "classification", "train": "/data/t.jsonl"}], "train": {"keep_checkpoints": 2, **train}})
    return t.store.submit(name=name, spec_json=spec_to_json(job_spec), job_file="/jobs/job.toml",
                          run_root=str(t.settings.local_runs_dir), now=T0 - 60).id


def test_a_job_that_would_not_fit_is_held_before_it_starts_and_released_when_space_returns(make, tmp_path):
    t = make(free_bytes=5 * GB, recheck_s=30)
    model = model_folder(tmp_path, GB)  # needs 3 GB × 3 checkpoints + 2 × 1 GB exports = 11 GB
    job = submit(t, model)
    t.daemon.tick(T0)
    held = t.store.get(job)
    assert t.executor.runs == [] and held.state == "queued"
    assert held.hold == f"disk full: 11.0 GB needed on {t.settings.state_dir}, 5.0 GB free"
    assert t.notes == [("mtld: job is on hold", held.hold)]
    assert [e["hold"] for e in log_events(t.settings.daemon_log, "job.held")] == [held.hold]
    queued = collect(t.settings, t.store)["queued"][0]
    assert queued["hold"] == held.hold and queued["expected_start"] is None

    t.free["bytes"] = 20 * GB
    t.daemon.tick(T0 + 10)  # within recheck_s of the first look: still held
    assert t.store.get(job).hold is not None and t.executor.runs == []
    t.daemon.tick(T0 + 31)  # looked at again: released and started in the same tick
    assert t.store.get(job).state == "running" and t.store.get(job).hold is None
    assert log_events(t.settings.daemon_log, "job.released")[0]["job_id"] == job


def test_a_run_that_stopped_for_disk_space_is_held_with_what_it_needed_until_that_fits(make, tmp_path):
    t = make(free_bytes=20 * GB, recheck_s=1)
    job = submit(t, model_folder(tmp_path, 10**6))
    t.daemon.tick(T0)
    run = t.executor.runs[0]
    hold = f"disk full: 12.0 GB needed on {run.run_dir}, 2.0 GB free"
    RunDir(run.run_dir).write_result(_result(exitcodes.DISK_FULL, "disk_full", hold, run_id=1, needed=12 * GB))
    t.free["bytes"] = 2 * GB
    run.end(exitcodes.DISK_FULL)
    t.daemon.tick(T0 + 1)
    after = t.store.get(job)
    assert (after.state, after.hold, after.last_error) == ("queued", hold, None)
    [recorded] = t.store.runs_for(job)
    assert (recorded.outcome, recorded.exit_code) == ("disk_full", 74)
    assert t.notes[-1] == ("mtld: job is on hold", hold)
    for i in range(2, 6):  # the daemon keeps ticking; the job is neither failed nor retried in a loop
        t.daemon.tick(T0 + i)
    assert len(t.executor.runs) == 1 and t.store.get(job).hold == hold
    t.free["bytes"] = 11 * GB  # the estimate would fit, what the run said it needs does not
    t.daemon.tick(T0 + 10)
    assert t.store.get(job).hold == hold
    t.store.retry(job, now=T0 + 11)  # `mtld retry` releases it; the daemon checks again before starting it
    t.daemon.tick(T0 + 11)
    assert t.store.get(job).hold == shortfall_text(12 * GB, 11 * GB, run.run_dir) and len(t.executor.runs) == 1
    t.free["bytes"] = 12 * GB
    t.daemon.tick(T0 + 20)  # room again: released by the daemon itself, and started
    assert t.store.get(job).state == "running" and len(t.executor.runs) == 2


def _result(code: int, outcome: str, message: str, *, run_id: int, needed: int):
    from mtld.runs.files import RunResult

    return RunResult(outcome=outcome, exit_code=code, message=message, run_id=run_id, disk_needed_bytes=needed,
                     checkpoint_bytes=3 * 10**6, export_bytes=10**6)


def test_a_run_folder_mtld_did_not_make_fails_the_job_with_the_reason(make, tmp_path):
    t = make()
    job = submit(t, model_folder(tmp_path, 1000))
    planted = Path(t.store.get(job).run_dir)
    (planted / "checkpoints").mkdir(parents=True)
    (planted / "checkpoints" / "step-99999999.pt").write_bytes(b"not ours")
    t.daemon.tick(T0)
    failed = t.store.get(job)
    assert t.executor.runs == [] and failed.state == "failed"
    assert "mtld did not make it for this run" in failed.last_error and str(planted) in failed.last_error
    other = submit(t, model_folder(tmp_path, 1000), name="other")
    RunDir(t.store.get(other).run_dir).claim({"job_id": 99, "store": "elsewhere"})
    t.daemon.tick(T0 + 1)
    assert "was made for another run (job_id 99" in t.store.get(other).last_error


def test_a_run_folder_is_claimed_once_and_its_mark_is_checked(tmp_path):
    rd = RunDir(tmp_path / "runs" / "1-job")
    rd.claim({"job_id": 1, "store": "a"})
    rd.claim({"job_id": 1, "store": "a"})  # the same job's next attempt
    assert json.loads(rd.marker_file.read_text()) == {"made_by": "mtld", "job_id": 1, "store": "a"}
    with pytest.raises(RunDirRefused, match="made for another run"):
        rd.claim({"job_id": 1, "store": "b"})
    with pytest.raises(RunDirRefused, match="not a folder"):
        (tmp_path / "file").write_text("")
        RunDir(tmp_path / "file").claim({"job_id": 2})


# ------------------------------------------------------------------ cleaning up


def finished_job(t, model: Path, name: str, *, size: int) -> int:
    """A job run to success by the fake executor, with a run folder of `size` bytes in checkpoints/."""
    job = submit(t, model, name=name)
    t.daemon.tick(T0)
    run = t.executor.runs[-1]
    rd = RunDir(run.run_dir)
    private_dir(rd.checkpoints)
    (rd.checkpoints / "step-00000010.pt").write_bytes(os.urandom(size))
    private_dir(rd.model_dir)
    (rd.model_dir / "model.safetensors").write_bytes(os.urandom(1000))
    from mtld.runs.files import RunResult

    rd.write_result(RunResult(outcome="succeeded", exit_code=0, run_id=t.store.latest_run(job).id,
                              disk_bytes=tree_bytes(rd.path)))
    run.end(0)
    t.daemon.tick(T0 + 1)
    assert t.store.get(job).state == "succeeded"
    return job


def test_clean_removes_finished_run_folders_says_how_much_and_status_adds_up_what_is_left(make, tmp_path):
    t = make()
    model = model_folder(tmp_path, 1000)
    old, kept = finished_job(t, model, "old", size=200_000), finished_job(t, model, "kept", size=100_000)
    queued = submit(t, model, name="queued")
    before = collect(t.settings, t.store)["disk"]
    assert before["run_folders"] == 2 and before["runs_bytes"] > 300_000

    dry = clean(t.settings, t.store, now=T0 + 10, dry_run=True)
    assert dry["jobs"] == 2 and dry["bytes"] > 300_000 and Path(t.store.get(old).run_dir).exists()
    models = remove(t.settings, t.store, kept, now=T0 + 10, keep_models=True)
    assert models["removed"][0]["kept"] == [".mtld-run", "job.json", "model", "result.json"]
    assert not (Path(t.store.get(kept).run_dir) / "checkpoints").exists()
    assert collect(t.settings, t.store)["disk"]["runs_bytes"] < before["runs_bytes"] - 90_000  # the cached size follows

    done = clean(t.settings, t.store, now=T0 + 10, older_than_s=5)
    assert {r["id"] for r in done["removed"]} == {old, kept} and done["bytes"] > 200_000
    assert not Path(t.store.get(old).run_dir).exists() and t.store.get(old).removed_at == T0 + 10
    info = collect(t.settings, t.store)
    assert info["finished"] == [] and info["disk"] == {**info["disk"], "run_folders": 0, "runs_bytes": 0}
    assert t.store.get(queued).state == "queued"  # never cleaned
    assert t.store.runs_for(old)  # its runs stay: the family's history
    with pytest.raises(InvalidTransition, match="removed already"):
        remove(t.settings, t.store, old, now=T0 + 11)
    with pytest.raises(InvalidTransition, match="only a finished job"):
        remove(t.settings, t.store, queued, now=T0 + 11)
    with pytest.raises(InvalidTransition, match="cannot retry"):
        t.store.retry(old, now=T0 + 11)


def test_clean_leaves_alone_a_folder_mtld_did_not_make_for_that_job(make, tmp_path):
    t = make()
    job = finished_job(t, model_folder(tmp_path, 1000), "job", size=1000)
    rd = RunDir(t.store.get(job).run_dir)
    rd.marker_file.write_text(json.dumps({"made_by": "mtld", "job_id": 12345, "store": "elsewhere"}))
    done = clean(t.settings, t.store, now=T0 + 10)
    assert done["jobs"] == 0 and "not made by mtld for this job" in done["skipped"][0]["skipped"]
    assert rd.path.exists() and t.store.get(job).removed_at is None


def test_the_cli_cleans_with_a_summary_and_refuses_a_bad_duration(make, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from mtld.cli import app

    t = make()
    job = finished_job(t, model_folder(tmp_path, 1000), "job", size=50_000)
    monkeypatch.setenv("MTLD_HOME", str(t.settings.home))
    runner = CliRunner()
    bad = runner.invoke(app, ["clean", "--older-than", "soon"])
    assert bad.exit_code == 2 and "--older-than: not a duration" in bad.output
    dry = runner.invoke(app, ["clean", "--dry-run", "--json"])
    assert dry.exit_code == 0 and json.loads(dry.stdout)["removed"][0]["id"] == job
    done = runner.invoke(app, ["remove", str(job)])
    assert done.exit_code == 0, done.output
    assert f"removed job {job} job (succeeded)" in done.stdout and "freed 1 job" in done.stdout
    assert "disk    runs take 0 B in 0 run folders" in runner.invoke(app, ["status"]).stdout
