"""Drills with a real daemon: a disk that fills up mid-run, and a finished run's modes on disk.

The run folder lives on a small tmpfs (skipped where one cannot be mounted); the daemon's own state is
elsewhere, as it would be when a job's `output` points at another disk.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import DAEMON_JOB, Home, fill, finish, job_file, log_events

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]


def test_a_disk_that_fills_up_mid_run_holds_the_job_and_it_resumes_once_space_is_freed(tmp_path, data_dir, small_fs):
    from mtld.train.checkpoint import load_checkpoint

    disk = small_fs("16m")
    home = Home(tmp_path / "home")
    home.env.update(MTLD_DISK__MARGIN_MB="0.2", MTLD_DISK__RECHECK_S="3600")  # released by `mtld retry` here
    job = tmp_path / "full.toml"
    text = DAEMON_JOB.format(name="full", model=data_dir / "model", epochs=40, checkpoint_every=3)
    job.write_text(text.replace("max_length = 32\n", f'max_length = 32\noutput = "{disk / "runs"}"\n'))
    for name in ("sentiment.jsonl", "entities.jsonl"):
        (tmp_path / name).write_bytes((data_dir / name).read_bytes())
    job_id = home.submit(job)
    daemon = home.daemon()
    try:
        first = home.wait_for(lambda: home.run_events(job_id, "checkpoint.saved"))[0]
        filler = fill(disk, leave=150_000)  # room for logs and result.json, not for another checkpoint
        held = home.wait_for(lambda: (j := home.job(job_id)).hold and j)

        assert held.state == "queued" and held.hold.startswith("disk full: ") and f"needed on {disk}" in held.hold
        run = home.runs(job_id)[-1]  # (a busy machine's memory pressure may have interrupted an earlier one)
        assert (run.outcome, run.exit_code) == ("disk_full", 74)
        assert daemon.poll() is None  # the daemon goes on
        [full] = home.run_events(job_id, "disk.full")
        assert full["needed_bytes"] > full["free_bytes"] and full["path"].startswith(str(disk))
        status = json.loads(home.mtld("status", "--json").stdout)
        assert status["queued"][0]["hold"] == held.hold and status["running"] == []
        assert [e["hold"] for e in home.daemon_events("job.held")] == [held.hold]

        checkpoints = sorted((disk / "runs" / f"{job_id}-full" / "checkpoints").glob("step-*.pt"))
        assert checkpoints and not list(checkpoints[0].parent.glob(".*"))  # no half-written file
        last = load_checkpoint(checkpoints[-1])["step"]  # the earlier checkpoints are intact
        assert first["step"] <= last < run.figures["total_steps"]

        filler.unlink()
        assert "queued" in home.mtld("retry", str(job_id)).stdout
        home.wait_for(lambda: home.job(job_id).state == "succeeded", timeout=200)
        assert home.run_events(job_id, "run.started")[-1]["resumed_from_step"] == last
        assert [r.outcome for r in home.runs(job_id)][-2:] == ["disk_full", "succeeded"]
        assert daemon.poll() is None
        for line in (Path(home.job(job_id).run_dir) / "run.jsonl").read_bytes().splitlines():
            json.loads(line)  # every line whole, as jq reads it
    finally:
        daemon.send_signal(signal.SIGTERM)
        code, stderr = finish(daemon)
    assert code == 0, stderr


def test_everything_mtld_creates_is_user_only_whatever_the_umask(tmp_path, data_dir):
    home = Home(tmp_path / "home")

    def mtld(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "mtld", *args], env=home.env, capture_output=True, text=True,
                              timeout=200, umask=0o022, check=True)

    job_id = int(mtld("submit", str(job_file(data_dir, name="private"))).stdout)
    mtld("daemon", "--exit-when-idle", "--quiet")
    assert home.job(job_id).state == "succeeded"
    run_dir = Path(home.job(job_id).run_dir)
    assert {"model", "best", "run.jsonl", "child.log", "metrics.json", ".mtld-run"} <= {p.name for p in run_dir.iterdir()}
    assert not (run_dir / "checkpoints").exists()  # pruned after success
    wrong = []
    for path in [home.path, *home.path.rglob("*")]:
        mode = stat.S_IMODE(path.lstat().st_mode)
        if mode != (0o700 if path.is_dir() else 0o600):
            wrong.append(f"{path.relative_to(home.path)} {mode:o}")
    assert wrong == []
    assert log_events(home.path / "logs" / "mtld.jsonl", "job.submitted")  # the log is there, and private
    assert os.stat(home.path).st_mode & 0o077 == 0
