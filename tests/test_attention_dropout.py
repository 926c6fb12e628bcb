"""Attention dropout (train.attention_dropout): what "auto" picks per device, that the layers really get it,
that the exported config keeps the checkpoint's value, and that the reason "auto" gives is still true of
the installed torch (its CPU attention takes the fused kernel only without dropout)."""

from __future__ import annotations

import json
import sys

import pytest

from mtld.decide.dropout import resolve_attention_dropout


@pytest.mark.parametrize(("setting", "device", "expected"), [
    ("auto", "cpu", 0.0),
    ("auto", "cuda", None),
    ("auto", "mps", None),
    ("model", "cpu", None),
    ("model", "mps", None),
    (0.05, "cpu", 0.05),
    (0.0, "cuda", 0.0),
])
def test_what_each_setting_means_on_each_device(setting, device, expected):
    value, reason = resolve_attention_dropout(setting, device)
    assert value == expected
    assert reason  # run.started says why, as for the precision
    if setting == "auto" and device == "cpu":
        assert "fused" in reason


def _build(jobs, **train):
    import structlog
    import torch

    from mtld.train.guard import NoGuard
    from mtld.train.setup import build
    from mtld.train.signals import StopFlag

    spec = jobs.spec([jobs.task("classification", 8)], **train)
    return build(spec, torch.device("cpu"), 2, stop=StopFlag(), guard=NoGuard(), log=structlog.get_logger())


def _attention_p(parts) -> set[float]:
    return {m.dropout.p for m in parts.model.encoder.modules() if type(m).__name__ == "BertSelfAttention"}


def test_the_attention_layers_get_what_was_decided_and_nothing_else_changes(jobs):
    auto, model, asked = _build(jobs), _build(jobs, attention_dropout="model"), _build(jobs, attention_dropout=0.2)
    assert _attention_p(auto) == {0.0} and auto.attention_dropout == 0.0
    assert _attention_p(model) == {0.1} and model.attention_dropout == 0.1  # the tiny model's config says 0.1
    assert _attention_p(asked) == {0.2} and asked.attention_dropout == 0.2
    for parts in (auto, model, asked):
        encoder = parts.model.encoder
        assert encoder.config.attention_probs_dropout_prob == 0.1  # an export says what the checkpoint said
        hidden = {m.p for name, m in encoder.named_modules() if name.endswith("output.dropout")}
        assert hidden == {0.1}  # the hidden-state dropout is the model's whatever the setting


def test_run_started_says_what_the_run_trains_with_and_why(jobs, read_events):
    from mtld.train import run_attempt

    spec = jobs.spec([jobs.task("classification", 16)], epochs=1)
    run_dir = jobs.run_dir(spec, micro_batch=4)
    assert run_attempt(run_dir) == 0
    started = read_events(run_dir, "run.started")[0]
    assert started["attention_dropout"] == 0.0
    assert started["attention_dropout_reason"].startswith("off: on cpu attention dropout keeps")
    assert started["malloc_tuned"] is (True if sys.platform.startswith("linux") else None)  # glibc's mallopt
    exported = json.loads((run_dir / "model" / "config.json").read_text())
    assert exported["attention_probs_dropout_prob"] == 0.1


def test_the_default_changes_no_resume_fingerprint_and_a_value_does(jobs):
    from mtld.train.setup import job_fingerprint

    spec = jobs.spec([jobs.task("classification", 8)])
    with_value = spec.model_copy(update={"train": spec.train.model_copy(update={"attention_dropout": 0.0})})
    assert job_fingerprint(with_value, []) != job_fingerprint(spec, [])


@pytest.mark.parametrize(("value", "loaded"), [("", "auto"), ('"model"', "model"), ("0", 0.0), ("0.05", 0.05)])
def test_the_job_file_takes_auto_model_or_a_probability(train_job, value, loaded):
    from mtld.config.jobspec import load_job

    assert load_job(train_job(f"attention_dropout = {value}" if value else "")).train.attention_dropout == loaded


@pytest.mark.parametrize("value", ["1", "1.5", "-0.1", '"off"', '"0.1"', "true"])
def test_a_bad_attention_dropout_gets_one_line(train_job, value):
    from mtld.config.jobspec import JobFileError, load_job

    with pytest.raises(JobFileError) as e:
        load_job(train_job(f"attention_dropout = {value}"), shown_as="job.toml")
    assert len(str(e.value).splitlines()) == 1
    assert str(e.value).startswith("job.toml: train.attention_dropout - ")


@pytest.mark.parametrize(("dropout", "fused"), [(0.0, True), (0.1, False)])
def test_cpu_attention_keeps_its_fused_kernel_only_without_dropout(dropout, fused):
    """Why "auto" turns it off on CPU, checked against the installed torch: in training, with dropout the
    attention runs the math path (the whole matrix and a Bernoulli mask), without it the flash kernel."""
    import torch
    import torch.nn.functional as F
    from torch.profiler import ProfilerActivity, profile

    q, k, v = (torch.randn(2, 4, 64, 32, requires_grad=True) for _ in range(3))
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        F.scaled_dot_product_attention(q, k, v, dropout_p=dropout).sum().backward()
    ops = {e.key for e in prof.key_averages()}
    assert ("aten::_scaled_dot_product_flash_attention_for_cpu" in ops) == fused
    assert ("aten::_scaled_dot_product_attention_math" in ops) == (not fused)
