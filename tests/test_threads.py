"""The thread governor: a CPU run gives up the cores other programs keep busy."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from mtld.train.threads import (
    CpuTimes,
    FixedThreads,
    ThreadGovernor,
    others_busy,
    target_threads,
    thread_policy,
)
from tests.conftest import capturing_log, child_env, events


@pytest.mark.parametrize(("ceiling", "cores", "others", "expected"), [
    (2, 2, 0.0, 2),
    (2, 2, 0.4, 2),  # a little background work: keep both
    (2, 2, 1.0, 1),  # one core taken
    (2, 2, 2.0, 1),  # never below one
    (8, 16, 4.0, 6),  # physical ceiling on a machine with two logical cores per core
    (4, 4, 0.0, 4),
    (4, 4, 1.6, 2),
])
def test_target_threads(ceiling, cores, others, expected):
    assert target_threads(ceiling, cores, others) == expected


def test_others_busy_leaves_out_this_process():
    before, after = CpuTimes(10.0, 100.0, 20.0), CpuTimes(15.0, 112.0, 27.0)  # 12 s busy in 5 s, 7 of it ours
    assert others_busy(before, after) == pytest.approx(1.0)
    assert others_busy(after, CpuTimes(15.0, 112.0, 27.0)) == 0.0


def governed(readings):
    """A governor with a ceiling of 2 on 2 cores whose n-th reading says others used readings[n] cores."""
    (log, captured), set_to = capturing_log(), []
    state = {"busy": 0.0, "t": 0.0}

    def read(now):
        state["busy"] += readings.pop(0) * (now - state["t"])
        state["t"] = now
        return CpuTimes(now, state["busy"], 0.0)

    return ThreadGovernor(2, cores=2, log=log, every_s=5.0, read=read, set_threads=set_to.append), captured, set_to


def test_two_checks_in_a_row_must_agree_before_the_count_changes():
    gov, captured, set_to = governed([0.0, 1.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0])
    for t in (0, 1, 2, 3, 4):  # within every_s of the first reading: not read again
        gov.check(float(t))
    assert set_to == []
    for t in (5, 10, 15, 20, 25):  # busy, quiet, busy, busy → 1; busy again: stays
        gov.check(float(t))
    assert set_to == [1] and gov.current == 1
    gov.check(30.0)
    gov.check(35.0)  # quiet twice → back to 2
    assert set_to == [1, 2]
    changed = [e for e in captured.entries if e["event"] == "threads.changed"]
    assert [{k: e[k] for k in ("from", "to", "others_busy")} for e in changed] == [
        {"from": 2, "to": 1, "others_busy": 1.0}, {"from": 1, "to": 2, "others_busy": 0.0}]


def test_a_pinned_count_or_a_gpu_is_left_alone(monkeypatch):
    import torch

    before = torch.get_num_threads()
    try:
        assert isinstance(thread_policy(3, "cpu", log=capturing_log()[0]), FixedThreads) and torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)
    assert isinstance(thread_policy("auto", "cuda", log=capturing_log()[0]), FixedThreads)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert isinstance(thread_policy("auto", "cpu", log=capturing_log()[0]), FixedThreads)
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert isinstance(thread_policy("auto", "cpu", log=capturing_log()[0]), ThreadGovernor)


def test_rays_allotment_is_the_governors_ceiling_not_a_pin(monkeypatch):
    import torch

    from mtld.executor.ray.jobs import RayExecutor

    from mtld.executor.ray.settings import RaySettings

    env_vars = RayExecutor(RaySettings(), owner="x").runtime_env()["env_vars"]
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # as Ray sets it for num_cpus = 2
    for name, value in env_vars.items():
        monkeypatch.setenv(name, value)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        governor = thread_policy("auto", "cpu", log=capturing_log()[0])
        assert isinstance(governor, ThreadGovernor) and governor.ceiling == 2
        assert isinstance(thread_policy("auto", "cuda", log=capturing_log()[0]), FixedThreads)
    finally:
        torch.set_num_threads(before)


@pytest.mark.slow
@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs two cores: one for the busy program, one for the run")
def test_a_run_next_to_a_busy_program_gives_up_a_core(jobs):
    spec = jobs.spec([jobs.task("classification", 240)], epochs=3, effective_batch_size=8)
    run_dir = jobs.run_dir(spec, micro_batch=4, threads="auto", threads_every_s=0.3)
    env = {k: v for k, v in child_env().items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        subprocess.run([sys.executable, "-m", "mtld.train", str(run_dir)], env=env, check=True, timeout=300,
                       capture_output=True)
    finally:
        busy.kill()
        busy.wait()
    (started,) = events(run_dir, "run.started")
    if started["threads"] < 2:
        pytest.skip("torch starts this machine's runs with one thread")
    changes = events(run_dir, "threads.changed")
    assert changes and changes[0]["from"] == started["threads"] and changes[0]["to"] < started["threads"]
    assert changes[0]["others_busy"] >= 0.5
