"""The adaptive micro-batch through the real daemon: the simulated probe, and a real allocation failure."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import Home, finish, job_file

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]


@pytest.fixture
def home(tmp_path) -> Home:
    home = Home(tmp_path / "home")  # with a simulated probe: write home.pressure to change the level
    home.env.update({
        "MTLD_MEMORY__SAMPLE_EVERY_S": "0.2",
        # the hysteresis at a test's pace: the demo runs last seconds, not hours
        "MTLD_MEMORY__DWELL_S": "0.4",
        "MTLD_MEMORY__QUIET_S": "2",
        "MTLD_MEMORY__RESUME_CALM_S": "1",
    })
    return home


def policy_events(home: Home) -> list[dict]:
    return home.daemon_events("policy.decided")


def test_clean_runs_of_one_family_start_at_4_then_8_then_8(home, data_dir):
    job = job_file(data_dir)
    ids = [home.submit(job) for _ in range(3)]
    code, stderr = finish(home.daemon("--exit-when-idle"))
    assert code == 0, stderr
    assert [home.runs(i)[0].micro_batch for i in ids] == [4, 8, 8]
    reasons = [e["reason"] for e in policy_events(home)]
    assert "configured start size" in reasons[0] and "one size up" in reasons[1] and "stay" in reasons[2]
    assert all(home.job(i).state == "succeeded" for i in ids)
    shown = json.loads(home.mtld("show", str(ids[1]), "--json").stdout)
    assert "one size up" in shown["runs"][0]["start_reason"]


@pytest.fixture(scope="module")
def model_without_dropout(data_dir):
    model = data_dir / "model-no-dropout"
    if not model.exists():
        import shutil

        shutil.copytree(data_dir / "model", model)
        config = json.loads((model / "config.json").read_text())
        config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
        (model / "config.json").write_text(json.dumps(config))
    return model


def encoder_weights(run_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(run_dir / "model" / "model.safetensors")


def test_a_warn_mid_run_scales_down_and_the_weights_match_a_fixed_size_run(home, data_dir, model_without_dropout):
    job = job_file(data_dir, name="nodrop", epochs=8)  # long enough for the warn to outlast the dwell time
    job.write_text(job.read_text().replace(str(data_dir / "model"), str(model_without_dropout)))
    adaptive = home.submit(job)
    daemon = home.daemon()
    home.wait_for(lambda: home.run_events(adaptive, "step.progress"))
    home.pressure.write_text("warn\n")
    home.wait_for(lambda: home.job(adaptive).state == "succeeded")
    home.pressure.write_text("normal\n")
    pinned = home.submit(job, "--batch-size", "2")
    home.wait_for(lambda: home.job(pinned).state == "succeeded")
    daemon.terminate()
    assert finish(daemon)[0] == 0

    [scaled] = home.run_events(adaptive, "batch.scaled_down")
    assert (scaled["from"], scaled["to"], scaled["reason"], scaled["pressure"]) == (4, 2, "pressure", "warn")
    [run] = home.runs(adaptive)
    assert run.figures["scaled_down"] and run.micro_batch_end == 2
    import torch

    a, b = encoder_weights(Path(home.job(adaptive).run_dir)), encoder_weights(Path(home.job(pinned).run_dir))
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5, msg=name)


def test_critical_mid_run_interrupts_defers_and_resumes_without_losing_a_step(home, data_dir):
    # 16 epochs (~6 s of steps here): critical acts after its dwell plus a sample (~0.6 s), which a 4-epoch
    # run (1.5 s) could finish first on a loaded machine, leaving nothing to interrupt
    job_id = home.submit(job_file(data_dir, epochs=16))
    daemon = home.daemon("--exit-when-idle")
    home.wait_for(lambda: home.run_events(job_id, "step.progress"))
    home.pressure.write_text("critical\n")
    home.wait_for(lambda: home.job(job_id).state == "queued" and home.daemon_events("run.deferred"))
    assert len(home.runs(job_id)) == 1  # that it stays deferred while critical: test_daemon_loop
    [deferred] = home.daemon_events("run.deferred")
    assert deferred["reason"] == "memory_critical" and deferred["job_id"] == job_id
    home.pressure.write_text("normal\n")
    code, stderr = finish(daemon)
    assert code == 0, stderr

    first, second = home.runs(job_id)
    assert (first.outcome, first.exit_code, second.outcome) == ("interrupted", 75, "succeeded")
    assert (first.micro_batch, second.micro_batch) == (4, 2)  # after a pressure interrupt: one size down
    assert first.figures["stop_reason"] == "memory_critical"
    [interrupted] = home.run_events(job_id, "run.interrupted")
    assert interrupted["reason"] == "memory_critical"
    started = home.run_events(job_id, "run.started")
    assert started[1]["resumed_from_step"] == interrupted["step"] > 0  # nothing lost, nothing repeated
    assert second.figures["step"] == second.figures["total_steps"] == started[0]["total_steps"]


# ---------------------------------------------------------------- a real allocation failure


@pytest.fixture(scope="module")
def hungry_job(tmp_path_factory, model_builder, data_rows):
    """Long examples through many attention heads: memory grows steeply with the micro-batch."""
    from tests.conftest import write_jsonl

    folder = tmp_path_factory.mktemp("hungry")
    model = model_builder(folder / "model", hidden=64, heads=64, intermediate=256, max_position=256)
    write_jsonl(folder / "long.jsonl", data_rows("classification", 16, long=260))
    path = folder / "job.toml"
    path.write_text(f"""\
name = "hungry"
model = "{model}"
max_length = 256

[[tasks]]
name = "long"
type = "classification"
train = "long.jsonl"

[train]
epochs = 1
effective_batch_size = 8
learning_rate = 1e-3
# the checkpoint's attention dropout keeps CPU attention on its math path, whose attention maps are the
# memory this test needs: without dropout the fused kernel makes none (mtld.decide.dropout)
attention_dropout = "model"
""")
    vm = {}
    for size in (4, 8):  # address space at each size, with no limit
        from mtld.config.jobspec import load_job
        from mtld.runs.rundir import Launch, RunDir

        run_dir = RunDir(folder / f"probe{size}")
        run_dir.write_job(load_job(path))
        run_dir.write_launch(Launch(micro_batch=size, device="cpu"))
        subprocess.run([sys.executable, "-m", "mtld.train", str(run_dir.path)], check=True, capture_output=True,
                       env={**os.environ, **LIMITED_ENV})
        vm[size] = run_dir.read_result().peak_vm_bytes
    assert vm[8] - vm[4] > 100 * 2**20, vm
    return path, vm


LIMITED_ENV = {"OMP_NUM_THREADS": "1", "MALLOC_ARENA_MAX": "2"}


@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_AS and VmPeak are Linux figures")
def test_a_real_allocation_failure_is_recovered_and_the_family_then_starts_at_4(home, hungry_job):
    job, vm = hungry_job
    limit = (vm[4] + vm[8]) // 2
    home.env.update(LIMITED_ENV, MTLD_TRAIN__START_BATCH_SIZE="8")
    first = home.submit(job)

    def under_the_limit() -> None:  # the daemon's children inherit it
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    daemon = subprocess.Popen([sys.executable, "-m", "mtld", "daemon", "--quiet", "--exit-when-idle"], env=home.env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=under_the_limit)
    code, stderr = finish(daemon)
    assert code == 0, f"limit {limit}, probes {vm}\n{stderr[-2000:]}"
    [run] = home.runs(first)
    assert (run.outcome, run.micro_batch, run.micro_batch_end) == ("succeeded", 8, 4), f"limit {limit}, probes {vm}"
    scaled = home.run_events(first, "batch.scaled_down")
    assert [(e["from"], e["to"], e["reason"]) for e in scaled] == [(8, 4, "out_of_memory")]
    assert run.figures["step"] == run.figures["total_steps"]

    second = home.submit(job)
    daemon = subprocess.Popen([sys.executable, "-m", "mtld", "daemon", "--quiet", "--exit-when-idle"], env=home.env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=under_the_limit)
    assert finish(daemon)[0] == 0
    [run] = home.runs(second)
    assert (run.outcome, run.micro_batch, run.micro_batch_end) == ("succeeded", 4, 4)
    assert "scaled down to 4" in run.start_reason
