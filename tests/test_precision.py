"""Mixed precision: the auto rule per device and machine, old job files, the family key, fp16's scaler."""

from __future__ import annotations

import pytest

from mtld.decide.precision import MachineFacts, resolve_precision

AVX512_BF16 = MachineFacts(cpu_bf16=True)
PLAIN_CPU = MachineFacts(cpu_bf16=False)
SONOMA, VENTURA = MachineFacts(macos=(14, 0)), MachineFacts(macos=(13, 6))
AMPERE, TURING = MachineFacts(cuda_capability=(8, 0)), MachineFacts(cuda_capability=(7, 5))


@pytest.mark.parametrize(("setting", "device", "facts", "expected"), [
    ("auto", "cpu", AVX512_BF16, "bf16"),
    ("auto", "cpu", PLAIN_CPU, "off"),  # emulated bf16 does not pay
    ("auto", "mps", SONOMA, "bf16"),
    ("auto", "mps", MachineFacts(macos=(15, 2)), "bf16"),
    ("auto", "mps", VENTURA, "off"),  # no bf16 in MPSGraph before macOS 14
    ("auto", "mps", MachineFacts(), "off"),  # version unreadable: the safe side
    ("auto", "cuda", AMPERE, "bf16"),
    ("auto", "cuda", MachineFacts(cuda_capability=(9, 0)), "bf16"),
    ("auto", "cuda", TURING, "off"),
    ("auto", "cuda", MachineFacts(), "bf16"),  # nvidia-smi silent: today's cards have bf16
    ("bf16", "cpu", PLAIN_CPU, "bf16"),  # asked for: the CPU emulates it, slowly
    ("bf16", "mps", VENTURA, "off"),  # cannot run there
    ("bf16", "cuda", TURING, "off"),
    ("fp16", "cpu", PLAIN_CPU, "fp16"),
    ("fp16", "cuda", TURING, "fp16"),
    ("fp16", "mps", VENTURA, "fp16"),
    ("off", "cpu", AVX512_BF16, "off"),
    ("off", "cuda", AMPERE, "off"),
    ("off", "mps", SONOMA, "off"),
])
def test_what_each_setting_resolves_to_per_device_and_machine(setting, device, facts, expected):
    precision, why = resolve_precision(setting, device, facts)
    assert precision == expected
    assert why  # logged in run.started and shown by doctor


def test_a_fallback_says_why():
    assert resolve_precision("auto", "mps", VENTURA)[1] == "auto: bf16 on MPS needs macOS 14 (this is (13, 6)): fp32"
    assert "no AVX512-BF16" in resolve_precision("auto", "cpu", PLAIN_CPU)[1]


def test_an_unknown_setting_or_device_is_refused():
    with pytest.raises(ValueError, match="unknown mixed_precision"):
        resolve_precision("fp8", "cpu", AVX512_BF16)
    with pytest.raises(ValueError, match="unknown device"):
        resolve_precision("auto", "tpu", AVX512_BF16)


def test_old_job_files_still_load_and_bad_values_get_one_line(tmp_path, tiny_model):
    from mtld.config.jobspec import JobFileError, load_job

    data = tmp_path / "t.jsonl"
    data.write_text('{"text": "a", "label": "x"}\n')

    def job(value: str) -> str:
        path = tmp_path / "job.toml"
        path.write_text(f'name = "j"\nmodel = "{tiny_model}"\n[[tasks]]\nname = "t"\ntype = "classification"\n'
                        f'train = "t.jsonl"\n[train]\n{value}\n')
        return path

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


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # importing torch._dynamo
def test_compile_true_compiles_the_encoder_in_place(jobs):
    import structlog
    import torch

    from mtld.train.guard import NoGuard
    from mtld.train.setup import build
    from mtld.train.signals import StopFlag

    def parts(**train):
        spec = jobs.spec([jobs.task("classification", 8)], **train)
        return build(spec, torch.device("cpu"), 2, stop=StopFlag(), guard=NoGuard(), log=structlog.get_logger())

    eager, compiled = parts(), parts(compile=True)
    assert getattr(eager.model.encoder, "_compiled_call_impl", None) is None
    assert compiled.model.encoder._compiled_call_impl is not None
    assert compiled.model.state_dict().keys() == eager.model.state_dict().keys()  # checkpoints and exports unchanged


def test_the_resume_fingerprint_of_an_old_job_file_is_what_it_was(jobs):
    """A run interrupted before mixed_precision took four values resumes after: its settings hash the same."""
    import hashlib
    import json

    from mtld.train.setup import job_fingerprint

    spec = jobs.spec([jobs.task("classification", 8)], mixed_precision=False)
    old_train = spec.train.model_dump(mode="json", exclude={"batch_size", "eval_every", "checkpoint_every",
                                                            "keep_checkpoints", "compile"}) | {"mixed_precision": False}
    about = {"model": spec.model, "max_length": spec.max_length, "train": old_train, "tasks": []}
    assert job_fingerprint(spec, []) == hashlib.sha256(json.dumps(about, sort_keys=True).encode()).hexdigest()
    assert job_fingerprint(spec.model_copy(update={"train": spec.train.model_copy(update={"mixed_precision": "bf16"})}), []) \
        != job_fingerprint(spec, [])
