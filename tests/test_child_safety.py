"""The run child guards its run folder, as real child processes (`python -P -m mtld.train RUN_DIR`):

- one writer per run folder: two children on one folder, the older fenced out by the newer attempt's
  generation before its next write (no lock: the generation file alone, as on NFS or SMB);
- a run folder it can read but not write: exit 66 at once, with the documented line;
- its import path: the working folder's code is never imported (-P).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mtld.runs import exitcodes
from mtld.runs.files import Launch
from mtld.runs.rundir import Fence, RunDir, Superseded
from tests import readonly
from tests.conftest import REPO, child_env, events, finish

CHILD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def start(run_dir: Path, *, python: str = sys.executable, cwd: Path = REPO) -> subprocess.Popen:
    return subprocess.Popen([python, "-P", "-m", "mtld.train", str(run_dir)], cwd=cwd, env=child_env(**CHILD_ENV),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def attempt(rd: RunDir, run_id: int, micro_batch: int = 4) -> int:
    """What a launcher does for a new attempt: take the folder (a new generation), then write its launch.json."""
    generation = rd.next_generation()
    rd.write_launch(Launch(micro_batch=micro_batch, device="cpu", job_id=7, run_id=run_id, generation=generation,
                           progress_every_s=0))
    return generation


def test_generations_only_grow_and_fence_out_every_older_attempt(tmp_path):
    rd = RunDir(tmp_path / "run")
    rd.claim({"job_id": 1, "store": "tests"})
    assert rd.generation() is None
    Fence(rd, 1).check("anything")  # nobody owns it yet
    assert [rd.next_generation() for _ in range(3)] == [1, 2, 3]
    Fence(rd, 3).check("a checkpoint")
    Fence(rd, None).check("a checkpoint")  # launched by an mtld from before generations: never fenced
    with pytest.raises(Superseded, match=r"a newer attempt \(generation 3\) owns .*; this one \(generation 2\) "
                                         r"did not write a checkpoint and stops"):
        Fence(rd, 2).check("a checkpoint")
    rd.generation_file.write_text("not a number")  # damaged: it fences nobody out
    Fence(rd, 1).check("a checkpoint")


@pytest.mark.slow
def test_a_newer_attempt_on_the_same_folder_stops_the_older_one_before_its_next_write(jobs):
    spec = jobs.spec([jobs.task("classification", 256)], epochs=30, checkpoint_every=2)
    rd = RunDir(jobs.run_dir(spec, micro_batch=4))
    attempt(rd, run_id=1)
    older = start(rd.path)
    deadline = time.monotonic() + 120
    while not [e for e in _events(rd) if e["event"] == "checkpoint.saved"]:
        assert older.poll() is None and time.monotonic() < deadline, older.communicate()[1][-2000:]
        time.sleep(0.05)
    # The launcher took the older attempt for lost (a cluster that forgot its job) and starts another in the same
    # folder while the older one still trains.
    attempt(rd, run_id=2)
    newer = start(rd.path)
    code, stderr = finish(older, timeout=120)
    assert code == exitcodes.SUPERSEDED, stderr[-2000:]
    assert "a newer attempt (generation 2) owns" in stderr and "this one (generation 1) did not write" in stderr
    code, stderr = finish(newer, timeout=300)
    assert code == 0, stderr[-2000:]

    mine = {run_id: [e for e in _events(rd) if e.get("run_id") == run_id] for run_id in (1, 2)}
    saved_by_older = [e["step"] for e in mine[1] if e["event"] == "checkpoint.saved"]
    [loaded] = [e for e in mine[2] if e["event"] == "checkpoint.loaded"]
    assert loaded["step"] == max(saved_by_older)  # the older wrote nothing after the newer took the folder
    assert not [e for e in mine[1] if e["event"] in ("run.finished", "eval")]  # no result, no metrics from it
    result = rd.read_result()
    assert (result.run_id, result.outcome) == (2, "succeeded")


def test_an_attempt_that_starts_after_a_newer_one_took_its_folder_writes_nothing(tmp_path):
    rd = RunDir(tmp_path / "run")
    rd.claim({"job_id": 1, "store": "tests"})
    attempt(rd, run_id=1)
    stale = rd.launch_file.read_bytes()
    attempt(rd, run_id=2)
    rd.result_file.write_text('{"the newer attempt": "its result"}')
    rd.launch_file.write_bytes(stale)  # the older attempt's launch, as it read it before (a cluster's late start)
    before = sorted(p.name for p in rd.path.iterdir())
    done = subprocess.run([sys.executable, "-P", "-m", "mtld.train", str(rd.path)], env=child_env(**CHILD_ENV),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == exitcodes.SUPERSEDED and "a newer attempt (generation 2)" in done.stderr
    assert sorted(p.name for p in rd.path.iterdir()) == before  # no run.jsonl, and the result left alone
    assert rd.result_file.read_text() == '{"the newer attempt": "its result"}'


@pytest.mark.skipif(bool(readonly.available()), reason=readonly.available() or "")
def test_a_run_folder_the_child_can_read_but_not_write_exits_66_at_once(jobs, tmp_path):
    spec = jobs.spec([jobs.task("classification", 16)])
    run_dir = jobs.run_dir(spec)
    python = readonly.python_seeing_read_only(run_dir, tmp_path / "python")
    started = time.monotonic()
    done = subprocess.run([str(python), "-P", "-m", "mtld.train", str(run_dir)], env=child_env(**CHILD_ENV),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == exitcodes.NOT_VISIBLE, done.stderr[-2000:]
    assert time.monotonic() - started < 30  # at once: before torch, data or a model are loaded
    assert done.stderr.startswith(f"mtld: the run folder {run_dir} cannot be written on ")
    assert "(Read-only file system): the executor's run folders must be on storage every machine that runs them " \
           "can write at the same path (mtld doctor checks it)" in done.stderr
    assert "Traceback" not in done.stderr and not (run_dir / "result.json").exists()


def test_the_child_never_runs_the_code_of_the_folder_it_starts_in(tmp_path):
    """A daemon started in a folder that holds a `mtld/` folder (a checkout, a copy): the executor's child runs
    the installed mtld, not that one (python -P)."""
    from types import SimpleNamespace

    from mtld.executor import wait_for_exit
    from mtld.executor.local import LocalExecutor

    decoy = tmp_path / "elsewhere"
    (decoy / "mtld").mkdir(parents=True)
    (decoy / "mtld" / "__init__.py").write_text("raise SystemExit('the working folder\\'s mtld was imported')\n")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    cwd = os.getcwd()
    os.chdir(decoy)  # where the daemon happens to start; its children inherit it
    try:
        handle = LocalExecutor().start(SimpleNamespace(id=1), run_dir)
    finally:
        os.chdir(cwd)
    status = wait_for_exit(handle, 120)
    output = (run_dir / "child.log").read_text()
    assert status is not None and status.code == exitcodes.BAD_INPUT, output  # its own check: no launch.json
    assert "working folder's mtld" not in output and "launch.json is missing" in output


def _events(rd: RunDir) -> list[dict]:
    return events(rd.path) if rd.log_file.exists() else []
