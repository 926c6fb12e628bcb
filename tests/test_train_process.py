"""The child as the daemon runs it: `python -m mtld.train RUN_DIR` in a subprocess.

- a real SIGTERM mid-run: exit 75 within seconds, and the resumed run ends
  with exactly the weights of an uninterrupted one;
- a real allocation failure under RLIMIT_AS: the micro-batch is halved and the
  run completes all its optimizer steps; at micro-batch 2 a repeated failure
  checkpoints and exits 76.

Children run with one OpenMP thread and two malloc arenas so their address
space is predictable; the memory limits are set between figures measured by
probe runs of the same jobs, not guessed.
"""

from __future__ import annotations

import json
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, child_env, events, finish

CHILD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MALLOC_ARENA_MAX": "2"}

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_AS and /proc VmPeak are Linux figures")]


def start(run_dir: Path, *, limit_bytes: int | None = None) -> subprocess.Popen:
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))

    return subprocess.Popen(
        [sys.executable, "-m", "mtld.train", str(run_dir)],
        cwd=REPO, env=child_env(**CHILD_ENV), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=limit if limit_bytes else None,
    )


def result(run_dir: Path) -> dict:
    return json.loads((run_dir / "result.json").read_text())


def wait_for_event(run_dir: Path, name: str, process: subprocess.Popen, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (run_dir / "run.jsonl").exists() and (found := events(run_dir, name)):
            return found[0]
        assert process.poll() is None, f"the child ended before {name}: {process.communicate()[1][-2000:]}"
        time.sleep(0.01)
    raise AssertionError(f"no {name} event within {timeout} s")


# ---------------------------------------------------------------- SIGTERM and exact resume


def test_sigterm_checkpoints_exits_75_and_the_resumed_run_ends_bit_identical(jobs, read_events):
    import torch

    from mtld.runs.rundir import RunDir

    from mtld.config.settings import DiskSettings

    spec = jobs.spec([jobs.task("classification", 240), jobs.task("tokens", 240)], epochs=3, checkpoint_every=10)
    keep_last = DiskSettings(keep_last_checkpoint=True)  # the final optimizer state is compared below
    whole, parts = jobs.run_dir(spec, name="whole", disk=keep_last), jobs.run_dir(spec, name="parts", disk=keep_last)
    reference, child = start(whole), start(parts)

    wait_for_event(parts, "checkpoint.saved", child)  # training for real: stop it mid-run
    child.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    code, err = finish(child)
    assert code == 75, err[-2000:]
    assert time.monotonic() - sent < 5
    stopped = result(parts)
    assert stopped["outcome"] == "interrupted" and 10 <= stopped["step"] < stopped["total_steps"]
    assert read_events(parts, "run.interrupted")[-1]["signal"] == "SIGTERM"
    assert RunDir(parts).latest_checkpoint().name == f"step-{stopped['step']:08d}.pt"

    code, err = finish(start(parts))
    assert code == 0, err[-2000:]
    assert read_events(parts, "run.started")[-1]["resumed_from_step"] == stopped["step"]
    code, err = finish(reference)
    assert code == 0, err[-2000:]
    assert result(parts)["step"] == result(whole)["step"] == stopped["total_steps"]

    a = torch.load(RunDir(whole).latest_checkpoint(), weights_only=True)
    b = torch.load(RunDir(parts).latest_checkpoint(), weights_only=True)
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    assert a["optimizer"]["state"]
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values(), strict=True):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)


# ---------------------------------------------------------------- real out-of-memory


@pytest.fixture(scope="module")
def memory_hungry_model(tmp_path_factory, model_builder):
    """64 attention heads over 256 tokens: attention maps make activations, and so
    memory, grow steeply with the micro-batch while the compute stays small. Its jobs keep the checkpoint's
    attention dropout: without it CPU attention takes its fused kernel, which makes no attention maps."""
    return model_builder(tmp_path_factory.mktemp("models") / "wide-attention", hidden=64, heads=64, intermediate=256, max_position=256)


@pytest.fixture(scope="module")
def oom_probes(tmp_path_factory, make_jobs, memory_hungry_model):
    """Address space used by the 'long' job at micro-batch 2 and 8, with no limit."""
    jobs = make_jobs(tmp_path_factory.mktemp("oom"), memory_hungry_model)
    long = jobs.task("classification", 16, long=260, name="long")
    spec = jobs.spec([long], epochs=1, max_length=256, attention_dropout="model")
    dirs = {b: jobs.run_dir(spec, micro_batch=b, name=f"probe{b}") for b in (2, 8)}
    processes = {b: start(d) for b, d in dirs.items()}
    for b, process in processes.items():
        code, err = finish(process)
        assert code == 0, err[-2000:]
    figures = {b: result(d)["peak_vm_bytes"] for b, d in dirs.items()}
    figures["setup"] = events(dirs[2], "run.started")[0]["peak_vm_bytes"]
    assert figures["setup"] < figures[2] < figures[8]
    assert figures[8] - figures[2] > 100 * 2**20, figures  # room for a limit between them
    return jobs, long, figures


def test_out_of_memory_halves_the_micro_batch_and_the_run_completes(oom_probes, read_events):
    """Under a limit between the two probes, and with the terminal case run alongside."""
    jobs, long, vm = oom_probes
    scale_spec = jobs.spec([long], epochs=1, max_length=256, attention_dropout="model")
    scale_dir = jobs.run_dir(scale_spec, micro_batch=8, name="limited8")
    scale_child = start(scale_dir, limit_bytes=(vm[2] + vm[8]) // 2)

    short = jobs.task("classification", 48, name="short")
    seed = first_seed_where_a_short_step_comes_first(jobs, short, long)
    end_spec = jobs.spec([short, long], epochs=1, max_length=256, seed=seed, checkpoint_every=1000,
                         attention_dropout="model")
    end_dir = jobs.run_dir(end_spec, micro_batch=2, name="limited2")
    end_child = start(end_dir, limit_bytes=(vm["setup"] + vm[2]) // 2)

    figures = f"limits from probes {vm}"
    code, err = finish(scale_child)
    assert code == 0, f"{figures}\n{err[-3000:]}"
    scaled = read_events(scale_dir, "batch.scaled_down")
    assert scaled and scaled[0]["from"] == 8 and scaled[0]["reason"] == "out_of_memory"
    assert all(e["to"] == e["from"] // 2 for e in scaled)
    done = result(scale_dir)
    assert done["outcome"] == "succeeded" and done["step"] == done["total_steps"] == 2
    assert done["scaled_down"] and done["micro_batch_end"] < 8 and done["oom_count"] == len(scaled)

    code, err = finish(end_child)
    assert code == 76, f"{figures}\n{err[-3000:]}"
    ended = result(end_dir)
    assert ended["outcome"] == "out_of_memory" and ended["micro_batch_end"] == 2 and ended["oom_count"] == 2
    assert 0 < ended["step"] < ended["total_steps"]
    assert ended["checkpoint"].endswith(f"step-{ended['step']:08d}.pt") and Path(ended["checkpoint"]).exists()
    assert "out of memory" in ended["message"]
    assert not (end_dir / "model").exists()


def first_seed_where_a_short_step_comes_first(jobs, short, long) -> int:
    """So the run has completed steps (and so a checkpoint) before its first long step."""
    import numpy as np

    from mtld.train.plan import epoch_plan

    rows = [sum(1 for line in Path(t["train"]).read_text().splitlines() if line.strip()) for t in (short, long)]
    batch_size = jobs.spec([short, long]).train.effective_batch_size
    for seed in range(42, 100):
        plan = epoch_plan([np.ones(n) for n in rows], batch_size=batch_size, seed=seed, epoch=0)
        if plan[0].task == 0:
            return seed
    raise AssertionError("no seed found")
