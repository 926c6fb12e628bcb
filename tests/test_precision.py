"""Mixed precision: the rule per device, OS and torch, the child's autocast check, old job files, the family
key, fp16's scaler, the torch floor."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest

from mtld.decide.precision import MachineFacts, resolve_precision, torch_version

ROOT = Path(__file__).resolve().parent.parent
TORCH = {v: torch_version(v) for v in ("2.4.1", "2.5.1", "2.6.0", "2.6.0rc1", "2.7.1", "2.8.0.dev20250601",
                                       "2.8.0", "2.13.0+cpu")}
MODERN = TORCH["2.13.0+cpu"]
AVX512_BF16 = MachineFacts(cpu_bf16=True, torch=MODERN)
PLAIN_CPU = MachineFacts(cpu_bf16=False, torch=MODERN)
SONOMA, VENTURA = MachineFacts(macos=(14, 0), torch=MODERN), MachineFacts(macos=(13, 6), torch=MODERN)
AMPERE, TURING = MachineFacts(cuda_capability=(8, 0), torch=MODERN), MachineFacts(cuda_capability=(7, 5), torch=MODERN)


@pytest.mark.parametrize(("setting", "device", "facts", "expected"), [
    ("auto", "cpu", AVX512_BF16, "bf16"),
    ("auto", "cpu", PLAIN_CPU, "off"),  # emulated bf16 does not pay
    ("auto", "mps", SONOMA, "bf16"),
    ("auto", "mps", MachineFacts(macos=(15, 2), torch=MODERN), "bf16"),
    ("auto", "mps", VENTURA, "off"),  # no bf16 in MPSGraph before macOS 14
    ("auto", "mps", MachineFacts(torch=MODERN), "off"),  # version unreadable: the safe side
    ("auto", "cuda", AMPERE, "bf16"),
    ("auto", "cuda", MachineFacts(cuda_capability=(9, 0), torch=MODERN), "bf16"),
    ("auto", "cuda", TURING, "off"),
    ("auto", "cuda", MachineFacts(torch=MODERN), "bf16"),  # nvidia-smi silent: today's cards have bf16
    ("bf16", "cpu", PLAIN_CPU, "bf16"),  # asked for: the CPU emulates it, slowly
    ("bf16", "mps", VENTURA, "off"),  # cannot run there
    ("bf16", "cuda", TURING, "off"),
    ("fp16", "cpu", PLAIN_CPU, "fp16"),
    ("fp16", "cuda", TURING, "fp16"),
    ("fp16", "mps", VENTURA, "fp16"),  # fp16 needs no macOS 14
    ("off", "cpu", AVX512_BF16, "off"),
    ("off", "cuda", AMPERE, "off"),
    ("off", "mps", SONOMA, "off"),
])
def test_what_each_setting_resolves_to_per_device_and_machine(setting, device, facts, expected):
    precision, why = resolve_precision(setting, device, facts)
    assert precision == expected
    assert why  # logged in run.started and shown by doctor


# MPS: (setting, macOS, torch) -> precision. bf16 needs macOS 14 and torch 2.6; fp16 (its loss scaler) torch 2.8;
# a pre-release is not yet the release it leads to; an unknown torch or macOS is the safe side.
MPS_TABLE = [
    ("auto", (14, 0), "2.4.1", "off"), ("auto", (14, 0), "2.5.1", "off"), ("auto", (14, 0), "2.6.0rc1", "off"),
    ("auto", (14, 0), "2.6.0", "bf16"), ("auto", (14, 0), "2.7.1", "bf16"), ("auto", (15, 2), "2.13.0+cpu", "bf16"),
    ("auto", (14, 0), None, "off"), ("auto", (13, 6), "2.13.0+cpu", "off"), ("auto", None, "2.13.0+cpu", "off"),
    ("bf16", (14, 0), "2.5.1", "off"), ("bf16", (14, 0), "2.6.0", "bf16"), ("bf16", (13, 6), "2.8.0", "off"),
    ("fp16", (14, 0), "2.4.1", "off"), ("fp16", (14, 0), "2.5.1", "off"), ("fp16", (14, 0), "2.6.0", "off"),
    ("fp16", (14, 0), "2.7.1", "off"), ("fp16", (14, 0), "2.8.0.dev20250601", "off"), ("fp16", (14, 0), None, "off"),
    ("fp16", (14, 0), "2.8.0", "fp16"), ("fp16", (13, 6), "2.8.0", "fp16"), ("fp16", (15, 2), "2.13.0+cpu", "fp16"),
    ("off", (14, 0), "2.13.0+cpu", "off"), ("off", (14, 0), "2.4.1", "off"),
]


@pytest.mark.parametrize(("setting", "macos", "torch", "expected"), MPS_TABLE)
def test_mps_needs_macos_14_and_torch_2_6_for_bf16_and_torch_2_8_for_fp16(setting, macos, torch, expected):
    precision, why = resolve_precision(setting, "mps", MachineFacts(macos=macos, torch=TORCH.get(torch)))
    assert precision == expected
    assert why.endswith(": fp32") == (expected == "off" and setting != "off")  # every fallback says so


@pytest.mark.parametrize("torch", sorted(TORCH))
@pytest.mark.parametrize("setting", ["auto", "bf16", "fp16", "off"])
@pytest.mark.parametrize("facts", [AVX512_BF16, PLAIN_CPU, AMPERE, TURING, MachineFacts(torch=MODERN)])
def test_the_torch_version_changes_nothing_on_cpu_and_cuda(torch, setting, facts):
    """Autocast and the loss scaler on CPU and CUDA are older than the floor: only MPS asks for the version."""
    older = MachineFacts(cpu_bf16=facts.cpu_bf16, cuda_capability=facts.cuda_capability, torch=TORCH[torch])
    for device in ("cpu", "cuda"):
        assert resolve_precision(setting, device, older) == resolve_precision(setting, device, facts)
    assert resolve_precision(setting, "cuda", MachineFacts(cuda_capability=facts.cuda_capability)) \
        == resolve_precision(setting, "cuda", facts)  # torch unknown: CUDA does not ask


def test_a_fallback_says_why():
    assert resolve_precision("auto", "mps", VENTURA)[1] == "auto: bf16 on MPS needs macOS 14 (this is 13.6): fp32"
    assert "no AVX512-BF16" in resolve_precision("auto", "cpu", PLAIN_CPU)[1]
    old = MachineFacts(macos=(14, 4), torch=TORCH["2.5.1"])
    assert resolve_precision("auto", "mps", old)[1] == "auto: bf16 on MPS needs torch 2.6 (this is 2.5.1): fp32"
    assert resolve_precision("fp16", "mps", MachineFacts(macos=(14, 4), torch=TORCH["2.8.0.dev20250601"]))[1] == (
        "mixed_precision = fp16, but fp16 on MPS needs torch 2.8 for its loss scaler "
        "(this is 2.8.0 (a pre-release)): fp32")
    assert resolve_precision("bf16", "mps", MachineFacts(macos=(14, 4)))[1] == (
        "mixed_precision = bf16, but bf16 on MPS needs torch 2.6 (this is unknown): fp32")


def test_an_unknown_setting_or_device_is_refused():
    with pytest.raises(ValueError, match="unknown mixed_precision"):
        resolve_precision("fp8", "cpu", AVX512_BF16)
    with pytest.raises(ValueError, match="unknown device"):
        resolve_precision("auto", "tpu", AVX512_BF16)


@pytest.mark.parametrize(("text", "expected"), [
    ("2.13.0+cpu", (2, 13, 0, 1)),  # a local build label
    ("2.9.0+cu126", (2, 9, 0, 1)),
    ("2.6.0", (2, 6, 0, 1)),
    ("2.6", (2, 6, 0, 1)),
    ("2.5.1.post2", (2, 5, 1, 1)),
    ("2.8.0.dev20250601+cpu", (2, 8, 0, 0)),  # a nightly: before 2.8.0
    ("2.7.0rc3", (2, 7, 0, 0)),
    ("2.6.0a0+ecf3bae40a.nv25.01", (2, 6, 0, 0)),  # a source build of a commit before 2.6.0
    ("10.0.0", (10, 0, 0, 1)),
    ("", None), ("torch", None), ("2", None), ("2.6.0-garbage", None),
])
def test_torch_versions_compare_like_their_releases(text, expected):
    assert torch_version(text) == expected


def test_a_pre_release_comes_before_its_release():
    order = ["2.4.1", "2.5.1", "2.6.0rc1", "2.6.0", "2.6.1", "2.8.0.dev20250601", "2.8.0", "2.13.0+cpu"]
    versions = [torch_version(v) for v in order]
    assert all(a < b for a, b in zip(versions, versions[1:], strict=False))


def test_the_machine_reads_torchs_version_from_its_package_without_importing_it(monkeypatch):
    import importlib.metadata
    import sys

    import torch

    from mtld.platform import machine

    machine._torch_version.cache_clear()
    assert machine.machine_facts("mps").torch == torch_version(torch.__version__)  # the same torch the child has

    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    for reading, expected in ((not_installed, None), (lambda name: "2.5.1", (2, 5, 1, 1)), (lambda name: None, None)):
        monkeypatch.setattr(importlib.metadata, "version", reading)
        machine._torch_version.cache_clear()
        assert machine.machine_facts("mps").torch == expected
    machine._torch_version.cache_clear()
    assert "torch" in sys.modules  # (this test imported it; the daemon's modules never do: import-linter)


def test_the_torch_floor_is_what_the_code_needs_and_the_pinned_build_meets_it():
    """2.6: torch.nn.utils.get_total_norm (mtld.train.step). Below it a run fails at its first step."""
    import tomllib

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    floor = torch_version(next(d for d in deps if re.match(r"torch\b", d)).removeprefix("torch>="))
    assert floor == (2, 6, 0, 1)
    pinned = re.search(r"TORCH \?= torch==(\S+)", (ROOT / "Makefile").read_text())
    assert pinned and torch_version(pinned[1]) >= floor


def test_old_job_files_still_load_and_bad_values_get_one_line(train_job):
    from mtld.config.jobspec import JobFileError, load_job

    job = train_job

    assert load_job(job("mixed_precision = true")).train.mixed_precision == "auto"
    assert load_job(job("mixed_precision = false")).train.mixed_precision == "off"
    assert load_job(job('mixed_precision = "fp16"')).train.mixed_precision == "fp16"
    assert load_job(job("")).train.mixed_precision == "auto"
    with pytest.raises(JobFileError) as e:
        load_job(job('mixed_precision = "half"'), shown_as="job.toml")
    assert str(e.value) == "job.toml: train.mixed_precision - Input should be 'auto', 'bf16', 'fp16' or 'off'"


def test_the_family_key_knows_the_precision_and_fp32_keeps_the_old_key(jobs):
    from mtld.decide.family import family

    spec = jobs.spec([jobs.task("classification", 8)], mixed_precision="auto")
    old_key = f"{spec.model}|{spec.max_length}|cpu"  # families stored before precision was in the key
    assert family(spec, "cpu", "off") == old_key
    assert family(spec, "cpu", "bf16") == old_key + "|bf16"
    assert family(spec, "cpu", "fp16") == old_key + "|fp16"
    from mtld.estimate.history import job_family  # the family in the precision the job trains in here

    assert job_family(spec.model_copy(update={"train": spec.train.model_copy(update={"mixed_precision": "off"})}),
                      "cpu") == old_key


def test_fp16_trains_with_a_loss_scaler_whose_state_is_checkpointed(jobs, read_events):
    import torch

    from mtld.config.settings import DiskSettings
    from mtld.train import run_attempt

    spec = jobs.spec([jobs.task("classification", 24)], epochs=1, mixed_precision="fp16")
    run_dir = jobs.run_dir(spec, micro_batch=4, disk=DiskSettings(keep_last_checkpoint=True))
    assert run_attempt(run_dir) == 0
    assert read_events(run_dir, "run.started")[0]["mixed_precision"] == "fp16"
    checkpoint = sorted((run_dir / "checkpoints").iterdir())[-1]
    state = torch.load(checkpoint, weights_only=True)
    assert state["scaler"]["scale"] > 0 and state["scaler"]["_growth_tracker"] >= 0
    assert state["step"] == 3


# torch.compile in the child: tests/test_compile.py


def test_the_resume_fingerprint_of_an_old_job_file_is_what_it_was(jobs):
    """A run interrupted before mixed_precision took four values resumes after: its settings hash the same."""
    import hashlib
    import json

    from mtld.train.setup import job_fingerprint

    spec = jobs.spec([jobs.task("classification", 8)], mixed_precision=False)
    old_train = spec.train.model_dump(mode="json", exclude={"batch_size", "eval_every", "checkpoint_every",
                                                            "keep_checkpoints", "compile", "attention_dropout"}) | {"mixed_precision": False}
    about = {"model": spec.model, "max_length": spec.max_length, "train": old_train, "tasks": []}
    assert job_fingerprint(spec, []) == hashlib.sha256(json.dumps(about, sort_keys=True).encode()).hexdigest()
    assert job_fingerprint(spec.model_copy(update={"train": spec.train.model_copy(update={"mixed_precision": "bf16"})}), []) \
        != job_fingerprint(spec, [])

    def compiling(setting):
        return spec.model_copy(update={"train": spec.train.model_copy(update={"compile": setting})})

    assert spec.train.compile == "auto"  # the default: decided per attempt, so no part of the fingerprint
    assert job_fingerprint(compiling(False), []) == job_fingerprint(spec, [])  # as before "auto"
    old_compiled = {**old_train, "compile": True}  # `compile = true` hashed as it always has
    assert job_fingerprint(compiling(True), []) == hashlib.sha256(json.dumps(
        {**about, "train": old_compiled}, sort_keys=True).encode()).hexdigest()


class AutocastOfAnOlderTorch:
    """torch.autocast as torch 2.5 is for bf16 on MPS (torch/amp/autocast_mode.py, 2.5.0): it takes the dtype,
    warns and disables itself, so everything under it runs in fp32. Here it stands in for any device."""

    real = None

    def __init__(self, device_type, dtype=None, enabled=True, cache_enabled=None):
        warnings.warn("In MPS autocast, but the target dtype is not supported. Disabling autocast.\n"
                      "MPS Autocast only supports dtype of torch.bfloat16 currently.", stacklevel=2)
        self.inner = self.real(device_type, dtype=dtype, enabled=False)

    def __enter__(self):
        return self.inner.__enter__()

    def __exit__(self, *exc):
        return self.inner.__exit__(*exc)


@pytest.fixture
def older_torch(monkeypatch):
    import torch

    monkeypatch.setattr(AutocastOfAnOlderTorch, "real", torch.autocast)
    monkeypatch.setattr(torch, "autocast", AutocastOfAnOlderTorch)


def _build(jobs, **train):
    import structlog
    import torch

    from mtld.train.guard import NoGuard
    from mtld.train.setup import build
    from mtld.train.signals import StopFlag

    spec = jobs.spec([jobs.task("classification", 8)], **train)
    return build(spec, torch.device("cpu"), 2, stop=StopFlag(), guard=NoGuard(), log=structlog.get_logger())


def _linear_dtypes_in_one_step(parts) -> set:
    """The dtypes the model's first linear layer produced in one training step."""
    import torch

    seen = set()
    linear = next(m for m in parts.model.modules() if isinstance(m, torch.nn.Linear))
    handle = linear.register_forward_hook(lambda module, args, out: seen.add(out.dtype))
    try:
        assert parts.runner.run(parts.plans[0][0], 1).outcome == "done"
    finally:
        handle.remove()
    return seen


def test_the_child_trains_in_what_autocast_really_produces(jobs, older_torch, monkeypatch):
    """The rule says bf16 (a CPU runs it); autocast quietly gives fp32: the run says fp32 and trains in fp32."""
    import torch

    parts = _build(jobs, mixed_precision="bf16")
    assert parts.precision == "off"
    assert parts.precision_reason == (
        f"mixed_precision = bf16, but autocast to bf16 on cpu with torch {torch.__version__} failed: a matmul came "
        "out float32 (torch warned: In MPS autocast, but the target dtype is not supported. Disabling autocast.): fp32")
    assert parts.amp is None and parts.runner.amp is None
    assert _linear_dtypes_in_one_step(parts) == {torch.float32}

    monkeypatch.setattr(torch, "autocast", AutocastOfAnOlderTorch.real)  # today's torch: the check passes
    parts = _build(jobs, mixed_precision="bf16")
    assert (parts.precision, parts.precision_reason) == ("bf16", "mixed_precision = bf16")
    assert _linear_dtypes_in_one_step(parts) == {torch.bfloat16}


def test_a_torch_that_refuses_autocast_on_the_device_trains_in_fp32(jobs, monkeypatch):
    """torch 2.4 on MPS: autocast raises for the device (ATen/autocast_mode.h has no kMPS before 2.5)."""
    import torch

    def refuses(device_type, **kwargs):
        raise RuntimeError(f"User specified an unsupported autocast device_type '{device_type}'")

    monkeypatch.setattr(torch, "autocast", refuses)
    parts = _build(jobs, mixed_precision="bf16")
    assert parts.precision == "off" and parts.runner.amp is None
    assert "failed: RuntimeError: User specified an unsupported autocast device_type 'cpu': fp32" in parts.precision_reason


def test_run_started_and_the_checkpoint_agree_with_what_an_older_torch_trained_in(jobs, read_events, older_torch):
    """fp16 asked for, autocast gives fp32: run.started says off (never "fp16") and no loss scaler ran."""
    import torch

    from mtld.config.settings import DiskSettings
    from mtld.train import run_attempt

    spec = jobs.spec([jobs.task("classification", 24)], epochs=1, mixed_precision="fp16")
    run_dir = jobs.run_dir(spec, micro_batch=4, disk=DiskSettings(keep_last_checkpoint=True))
    assert run_attempt(run_dir) == 0
    started = read_events(run_dir, "run.started")[0]
    assert started["mixed_precision"] == "off"
    assert started["mixed_precision_reason"].startswith("mixed_precision = fp16, but autocast to fp16 on cpu with torch")
    assert "a matmul came out float32" in started["mixed_precision_reason"]
    assert started["torch"] == torch.__version__
    state = torch.load(sorted((run_dir / "checkpoints").iterdir())[-1], weights_only=True)
    assert state["scaler"] is None  # fp32: no loss scaling


def test_a_run_that_fell_back_to_fp32_is_stored_in_the_fp32_family(tmp_path, monkeypatch):
    """Its autocast check found no bf16: its figures (speed, peak) are fp32's, so they go to fp32's history."""
    import os

    from mtld.config.jobspec import JobSpec, spec_to_json
    from mtld.config.settings import Settings
    from mtld.daemon.loop import Daemon
    from mtld.decide.family import in_precision
    from mtld.logs.events import configure
    from mtld.runs.files import RunResult
    from mtld.runs.rundir import RunDir
    from mtld.store import Store
    from mtld.testing import FakeExecutor, ScriptedProbe

    assert in_precision("m|a|b|128|mps|bf16", "off") == "m|a|b|128|mps" and in_precision("m|128|cpu", "bf16") == "m|128|cpu|bf16"
    for name in [n for n in os.environ if n.startswith("MTLD_")]:
        monkeypatch.delenv(name)
    monkeypatch.setattr("mtld.estimate.history.precision_for", lambda setting, device: ("bf16", "auto: bf16"))
    settings = Settings(home=tmp_path / "home", train={"device": "cpu"}, daemon={"notify": False, "prevent_sleep": False})
    configure(settings.daemon_log)
    spec = JobSpec.model_validate({"name": "j", "model": "/models/bert", "tasks": [
        {"name": "t", "type": "classification", "train": "/data/t.jsonl"}]})
    with Store(settings.db_path) as store:
        job = store.submit(name="j", spec_json=spec_to_json(spec), job_file="/j.toml",
                           run_root=str(settings.local_runs_dir), now=0.0)
        executor = FakeExecutor()
        daemon = Daemon(settings, store, executor=executor, probe=ScriptedProbe(["normal"]), clock=lambda: 0.0)
        daemon.tick(0.0)
        run = store.latest_run(job.id)
        assert run.family == "/models/bert|128|cpu|bf16"  # what the rule said before the run
        RunDir(store.get(job.id).run_dir).write_result(RunResult(outcome="succeeded", exit_code=0, run_id=run.id,
                                                                 precision="off"))
        executor.runs[0].end(0)
        daemon.tick(1.0)
        assert store.latest_run(job.id).family == "/models/bert|128|cpu"
