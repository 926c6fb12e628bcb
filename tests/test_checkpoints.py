"""Checkpoints as the child writes and loads them: plain data only, never unpickled in full, taken by
time, pruned after success, user-only whatever the umask; and run folders mtld did not make."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from mtld.testing import ScriptedGuard
from mtld.train import run_attempt
from tests.conftest import fill


class Planted:
    """A pickle that runs a shell command when it is unpickled in full."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_planted_pickle_is_refused_and_never_run(jobs, tmp_path, read_events):
    import torch

    spec = jobs.spec([jobs.task("classification", 24)], epochs=1)
    run_dir = jobs.run_dir(spec, micro_batch=2)
    marker = tmp_path / "code-ran"
    (run_dir / "checkpoints").mkdir()
    torch.save(Planted(marker), run_dir / "checkpoints" / "step-99999999.pt")

    assert run_attempt(run_dir) == 0
    assert not marker.exists()
    [refused] = read_events(run_dir, "checkpoint.refused")
    assert refused["path"].endswith("step-99999999.pt")
    assert "not loaded" in refused["reason"] and "weights_only" in refused["reason"]
    assert read_events(run_dir, "run.started")[0]["resumed_from_step"] is None  # started from scratch


def test_checkpoints_hold_only_plain_data_and_go_by_time_at_the_default(jobs, read_events):
    import torch

    from mtld.runs.rundir import RunDir
    from mtld.config.settings import DiskSettings

    spec = jobs.spec([jobs.task("classification", 40)], epochs=2, checkpoint_every="10m")
    run_dir = jobs.run_dir(spec, micro_batch=2, disk=DiskSettings(keep_last_checkpoint=True))
    assert run_attempt(run_dir) == 0
    saved = read_events(run_dir, "checkpoint.saved")
    assert [e["step"] for e in saved] == [5, 10]  # a ten-minute run of seconds: the epoch ends only
    [kept] = RunDir(run_dir).checkpoint_files()  # keep_last_checkpoint: the last one stays
    state = torch.load(kept, weights_only=True)  # nothing but tensors and plain data
    assert state["step"] == 10 and state["format"] == 2
    assert isinstance(state["rng"]["numpy"][1], list)
    pruned = read_events(run_dir, "checkpoint.pruned")[0]
    assert pruned["removed"] == 1 and pruned["kept"] == [str(kept)]


def test_the_last_step_goes_straight_to_the_export_without_a_checkpoint_that_success_would_delete(jobs, read_events):
    spec = jobs.spec([jobs.task("classification", 40)], epochs=3, checkpoint_every="10m")
    run_dir = jobs.run_dir(spec, micro_batch=2)
    assert run_attempt(run_dir) == 0
    assert [e["step"] for e in read_events(run_dir, "checkpoint.saved")] == [5, 10]  # not 15, the last
    assert read_events(run_dir, "checkpoint.pruned")[-1]["kept"] == []
    assert (run_dir / "model" / "heads.pt").is_file() and not list((run_dir / "checkpoints").glob("step-*.pt"))


def test_every_file_and_folder_of_a_run_is_user_only_whatever_the_umask(jobs):
    spec = jobs.spec([jobs.task("classification", 24, n_eval=8)], epochs=1)
    run_dir = jobs.run_dir(spec, micro_batch=2)
    old = os.umask(0)  # the most open there is: every mode below was set on purpose
    try:
        assert run_attempt(run_dir, guard=ScriptedGuard({2: "interrupt"})) == 75  # a checkpoint stays
        assert run_attempt(run_dir) == 0
    finally:
        os.umask(old)
    assert (run_dir / "best" / "tokenizer.json").is_file() and (run_dir / "model" / "heads.pt").is_file()
    assert wrong_modes(run_dir) == []


def wrong_modes(root: Path) -> list[str]:
    """Every folder 0700 and every file 0600 under (and including) `root`; what is not, as 'path mode'."""
    wrong = []
    for path in [root, *root.rglob("*")]:
        mode = stat.S_IMODE(path.lstat().st_mode)
        if mode != (0o700 if path.is_dir() else 0o600):
            wrong.append(f"{path.relative_to(root.parent)} {mode:o}")
    return wrong


def test_a_checkpoint_write_that_fills_the_disk_leaves_the_earlier_one_intact(small_fs):
    import torch

    from mtld.disk import DiskFull
    from mtld.train.checkpoint import load_checkpoint, save_checkpoint, save_within_space

    folder = small_fs("2m") / "run" / "checkpoints"
    first = save_checkpoint(folder, 1, {"step": 1, "model": {"w": torch.ones(1000)}}, keep=2)
    before = first.read_bytes()
    filler = fill(folder.parent, leave=300_000)
    with pytest.raises(DiskFull) as caught:  # 1 MB of state into 300 KB: ENOSPC mid-write
        save_checkpoint(folder, 2, {"step": 2, "model": {"w": torch.ones(250_000)}}, keep=2)
    assert "no space left; the earlier checkpoints are intact" in str(caught.value)
    assert caught.value.needed > caught.value.free  # the free space at the refusal, not after the cleanup
    assert sorted(p.name for p in folder.iterdir()) == ["step-00000001.pt"]  # no temporary file left
    assert first.read_bytes() == before and load_checkpoint(first)["step"] == 1

    with pytest.raises(DiskFull) as short:  # checked first: it does not fit, so it is not even tried
        save_within_space(folder, 3, {"step": 3, "model": {"w": torch.ones(250_000)}}, keep=2, export_bytes=10**6,
                          exports_on_disk=0, margin_bytes=0)
    assert short.value.saved is None and short.value.needed > short.value.free
    assert str(short.value).startswith(f"disk full: 4.0 MB needed on {folder.parent}, ")
    filler.unlink()
    with pytest.raises(DiskFull) as saved_then_stopped:  # this one fits, the rest of the run would not
        save_within_space(folder, 4, {"step": 4, "model": {"w": torch.ones(250_000)}}, keep=2, export_bytes=10**6,
                          exports_on_disk=0, margin_bytes=0)
    assert saved_then_stopped.value.saved == folder / "step-00000004.pt"
    assert load_checkpoint(saved_then_stopped.value.saved)["step"] == 4


def test_space_taken_between_the_check_and_the_write_is_reported_as_the_whole_run_s_need(small_fs, monkeypatch):
    """Another writer fills the disk after the free-space check passed: the write is refused, and the figures
    the hold and `disk.full` show are what the rest of the run needs against what was free at the refusal."""
    import torch

    from mtld.disk import DiskFull
    from mtld.train import checkpoint

    folder = small_fs("2m") / "run" / "checkpoints"
    checkpoint.save_checkpoint(folder, 1, {"step": 1, "model": {"w": torch.ones(1000)}}, keep=2)
    real_free = checkpoint.free_bytes
    checked: list[int] = []

    def free_then_taken(path: Path) -> int:  # the check sees room; by the write, another writer has it
        if not checked:
            checked.append(real_free(path))
            fill(folder.parent, leave=100_000)
            return checked[0]
        return real_free(path)

    monkeypatch.setattr(checkpoint, "free_bytes", free_then_taken)
    with pytest.raises(DiskFull) as caught:
        checkpoint.save_within_space(folder, 2, {"step": 2, "model": {"w": torch.ones(100_000)}}, keep=2,
                                     export_bytes=400_000, exports_on_disk=0, margin_bytes=100_000)
    assert checked[0] >= 1_700_000  # the check passed: two checkpoints (keep 2, one on disk, and the next),
    need = 400_000 * 2 + 400_000 * 2 + 100_000  # model/ and best/, the margin
    assert caught.value.needed == need > caught.value.free and caught.value.saved is None
    assert sorted(p.name for p in folder.iterdir()) == ["step-00000001.pt"]


def test_mtld_train_refuses_an_output_folder_it_did_not_make(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from mtld.cli import app
    from tests.conftest import write_job

    monkeypatch.setenv("MTLD_HOME", str(tmp_path / "home"))
    job = write_job(tmp_path)
    planted = tmp_path / "shared-out"
    (planted / "checkpoints").mkdir(parents=True)
    done = CliRunner().invoke(app, ["train", str(job), "--out", str(planted)])
    assert done.exit_code == 2
    assert "--out - " in done.output and "mtld did not make it for this run" in done.output
    assert json.loads(json.dumps(sorted(p.name for p in planted.iterdir()))) == ["checkpoints"]  # nothing written


def test_pruning_never_lets_a_file_it_did_not_write_push_out_the_one_just_written(tmp_path):
    """Issue 25, item 2: two planted (or damaged) files with later step numbers used to be "the newest two",
    and the good checkpoint just written was deleted."""
    from structlog.testing import capture_logs

    from mtld.train.checkpoint import prune

    folder = tmp_path / "checkpoints"
    folder.mkdir()
    for name in ("step-00000004.pt", "step-00000008.pt", "step-00000012.pt", "step-99999998.pt", "step-99999999.pt"):
        (folder / name).write_bytes(name.encode())
    (folder / ".step-16.pt.tmp").write_bytes(b"half")  # what a killed writer left
    with capture_logs() as logs:
        import structlog

        prune(folder, 2, written=folder / "step-00000012.pt", log=structlog.get_logger())
    assert sorted(p.name for p in folder.glob("*.pt")) == ["step-00000008.pt", "step-00000012.pt"]
    assert sorted(p.name for p in (folder / "bad").iterdir()) == ["step-99999998.pt", "step-99999999.pt"]
    assert [e["event"] for e in logs] == ["checkpoint.quarantined"] * 2
    assert not (folder / ".step-16.pt.tmp").exists()
    prune(folder, 0)  # after a success: none kept (the set-aside ones stay in bad/ for a person to look at)
    assert list(folder.glob("*.pt")) == [] and len(list((folder / "bad").iterdir())) == 2


@pytest.mark.slow
def test_two_planted_files_never_cost_a_run_its_checkpoints(jobs, read_events):
    import torch

    spec = jobs.spec([jobs.task("classification", 40)], epochs=2, checkpoint_every=2, keep_checkpoints=2)
    run_dir = jobs.run_dir(spec, micro_batch=2)
    (run_dir / "checkpoints").mkdir()
    torch.save(Planted(run_dir / "ran"), run_dir / "checkpoints" / "step-99999999.pt")  # refused when loaded
    (run_dir / "checkpoints" / "step-99999998.pt").write_bytes(b"truncated")  # unreadable
    assert run_attempt(run_dir) == 0
    assert sorted(e["reason"] for e in read_events(run_dir, "checkpoint.quarantined")) == ["refused", "unreadable"]
    assert sorted(p.name for p in (run_dir / "checkpoints" / "bad").iterdir()) == ["step-99999998.pt", "step-99999999.pt"]
    saved = [e["step"] for e in read_events(run_dir, "checkpoint.saved")]
    assert saved == [2, 4, 5, 6, 8] and not (run_dir / "ran").exists()  # every 2 steps, each epoch's end, not the last
    assert not read_events(run_dir, "run.failed")
