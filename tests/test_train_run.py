"""Whole attempts in this process: every task type, results, events, predict, resume, the guard seam.

Tests that train whole runs are marked slow; the bad-input and tokenizer cases stay in `make test-fast`.
"""

from __future__ import annotations

import json

import pytest

from mtld.testing import ScriptedGuard
from mtld.train import run_attempt

RESULT_KEYS = {
    "outcome", "exit_code", "step", "total_steps", "micro_batch_start", "micro_batch_end", "scaled_down",
    "oom_count", "peak_memory_bytes", "samples_per_s", "tokens_per_s", "duration_s", "device", "best_score",
    "message", "job_id", "run_id", "peak_vm_bytes", "timing",
}


def final_weights(run_dir):
    """The trained weights as the run exported them (model/: encoder and heads); its checkpoints are
    pruned after a successful run."""
    import torch
    from safetensors.torch import load_file

    weights = load_file(run_dir / "model" / "model.safetensors")
    heads = torch.load(run_dir / "model" / "heads.pt", weights_only=True)
    return weights | {f"heads.{name}": tensor for name, tensor in heads.items()}


def assert_same_weights(a, b, *, exact: bool, atol: float = 0.0):
    import torch

    assert a.keys() == b.keys()
    for name in a:
        if exact:
            assert torch.equal(a[name], b[name]), name
        else:
            torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=atol, msg=lambda m: f"{name}: {m}")


# ---------------------------------------------------------------- every task type


@pytest.fixture(scope="module")
def trained(tmp_path_factory, make_jobs):
    """One job with all four task types (classification both single and pair), trained to the end."""
    jobs = make_jobs(tmp_path_factory.mktemp("all-tasks"))
    tasks = [
        jobs.task("classification", 160, n_eval=40),
        jobs.task("pair", 160, n_eval=40),
        jobs.task("multilabel", 160, n_eval=40),
        jobs.task("regression", 160, n_eval=40),
        jobs.task("tokens", 160, n_eval=40, labels=False),  # the label list comes from the data
    ]
    spec = jobs.spec(tasks, epochs=3, checkpoint_every=25)
    run_dir = jobs.run_dir(spec, micro_batch=8, progress_every_s=0.0)
    assert run_attempt(run_dir) == 0
    return jobs, run_dir


@pytest.mark.slow
def test_every_task_type_trains_and_is_evaluated(trained):
    _, run_dir = trained
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert [e["step"] for e in metrics["evals"]] == [100, 200, 300]  # after each epoch
    last = metrics["evals"][-1]["tasks"]
    assert set(last["classification"]) == {"accuracy", "macro_f1"}
    assert set(last["multilabel"]) == {"micro_f1", "macro_f1", "exact_match"}
    assert set(last["regression"]) == {"pearson", "spearman", "rmse"}
    assert {"entity_f1", "tag_accuracy"} <= set(last["tokens"])
    # the rules in the synthetic data are learnable: training must have learned them
    assert last["classification"]["accuracy"] >= 0.9
    assert last["tokens"]["entity_f1"] >= 0.9
    assert last["multilabel"]["micro_f1"] >= 0.5
    assert last["regression"]["spearman"] > 0.3
    assert last["pair"]["accuracy"] > 0.6
    best = max(e["score"] for e in metrics["evals"])
    assert metrics["best_score"] == best
    assert metrics["evals"][0]["score"] < best


@pytest.mark.slow
def test_the_run_directory_holds_result_models_and_checkpoints(trained):
    _, run_dir = trained
    result = json.loads((run_dir / "result.json").read_text())
    assert RESULT_KEYS <= set(result)
    assert result["outcome"] == "succeeded" and result["exit_code"] == 0
    assert result["step"] == result["total_steps"] == 300
    assert result["micro_batch_start"] == result["micro_batch_end"] == 8 and not result["scaled_down"]
    assert result["samples_per_s"] > 0 and result["tokens_per_s"] > result["samples_per_s"]
    assert result["timing"]["8"]["steps"] == 300
    assert (result["job_id"], result["run_id"]) == (7, 11)
    for folder in ("model", "best"):
        names = {p.name for p in (run_dir / folder).iterdir()}
        assert {"config.json", "model.safetensors", "heads.pt", "tasks.json", "tokenizer.json"} <= names
    tasks = json.loads((run_dir / "model" / "tasks.json").read_text())
    assert tasks["tasks"][4]["labels"] == sorted(["O", "B-PER", "B-LOC", "I-LOC"])  # from the data
    assert tasks["job"]["name"] == "test"
    assert not (run_dir / "checkpoints").exists()  # pruned after success: model/ and best/ are what stays
    assert [p.name for p in run_dir.glob(".*")] == [".mtld-run"]  # no temporary folders or files left


@pytest.mark.slow
def test_events_carry_the_promised_fields(trained, read_events):
    _, run_dir = trained
    events = read_events(run_dir)
    assert all(e["job_id"] == 7 and e["run_id"] == 11 for e in events)
    names = [e["event"] for e in events]
    assert names[0] == "run.started" and names[-1] == "run.finished"
    started = events[0]
    assert started["device"] == "cpu" and started["micro_batch"] == 8 and started["accumulation"] == 1
    assert started["effective_batch"] == 8 and started["total_steps"] == 300 and started["resumed_from_step"] is None
    progress = read_events(run_dir, "step.progress")
    assert progress and {"step", "total", "loss", "samples_per_s", "tokens_per_s", "micro_batch", "eta_s"} <= set(progress[-1])
    assert progress[-1]["eta_s"] >= 0 and progress[0]["loss"] > progress[-1]["loss"]
    assert len(read_events(run_dir, "eval")) == 3
    saved = read_events(run_dir, "checkpoint.saved")
    assert [e["step"] for e in saved] == [25, 50, 75, 100, 125, 150, 175, 200, 225, 250, 275]  # 300: the last step
    finished = events[-1]
    assert finished["outcome"] == "succeeded" and finished["peak_memory_bytes"] > 0 and finished["samples_per_s"] > 0
    assert not [e for e in events if e["event"] == "library.log" and e["level"] != "debug"]


@pytest.mark.slow
def test_predict_writes_a_prediction_per_row_and_task(trained, tmp_path, data_rows):
    from mtld.train.predict import predict

    _, run_dir = trained
    rows = data_rows("classification", 20, seed=5) + data_rows("tokens", 20, seed=5) + data_rows("pair", 5, seed=5)
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out" / "predictions.jsonl"
    assert predict(run_dir, source, out, device="cpu", batch_size=4) == 45
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["line"] for line in lines] == list(range(1, 46))
    sentiment = [line["predictions"]["classification"] for line in lines[:20]]
    assert sum(p == r["label"] for p, r in zip(sentiment, rows[:20])) >= 18
    tags = [line["predictions"]["tokens"] for line in lines[20:40]]
    assert all(len(t) == len(r["tokens"]) for t, r in zip(tags, rows[20:40]))
    assert sum(t == r["tags"] for t, r in zip(tags, rows[20:40])) >= 16
    assert all(line["predictions"]["tokens"] is None for line in lines[:20])  # no words in those rows
    pair_rows = lines[40:]
    assert all(isinstance(p["predictions"]["regression"], float) for p in pair_rows)  # a and b are there
    assert all(isinstance(p["predictions"]["multilabel"], list) for p in lines[:20])


@pytest.mark.slow
def test_predict_finds_the_best_model_and_refuses_a_folder_without_one(trained, tmp_path):
    from mtld.train.errors import BadInput
    from mtld.train.predict import predict, resolve_model_dir

    _, run_dir = trained
    assert resolve_model_dir(run_dir) == run_dir / "best"
    assert resolve_model_dir(run_dir / "model") == run_dir / "model"
    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps({"text": "a great film"}) + "\n")
    with pytest.raises(BadInput, match="holds no trained model"):
        predict(tmp_path, source, tmp_path / "out.jsonl")
    source.write_text("{oops\n")
    with pytest.raises(BadInput, match="not valid JSON"):
        predict(run_dir, source, tmp_path / "out.jsonl")
    assert not (tmp_path / "out.jsonl").exists()


# ---------------------------------------------------------------- micro-batch independence


@pytest.fixture(scope="module")
def no_dropout_jobs(tmp_path_factory, make_jobs, tiny_model_no_dropout):
    jobs = make_jobs(tmp_path_factory.mktemp("b-independence"), tiny_model_no_dropout)
    # 45 and 30 examples: short final steps; token task: loss units are tokens, unequal per micro-batch
    spec = jobs.spec([jobs.task("classification", 45), jobs.task("tokens", 30)], epochs=2, max_grad_norm=1.0)
    runs = {}
    for b in (2, 8):
        runs[b] = jobs.run_dir(spec, micro_batch=b, name=f"b{b}")
        assert run_attempt(runs[b]) == 0
    return jobs, spec, runs


@pytest.mark.slow
def test_weights_after_training_do_not_depend_on_the_micro_batch(no_dropout_jobs):
    _, _, runs = no_dropout_jobs
    assert_same_weights(final_weights(runs[2]), final_weights(runs[8]), exact=False, atol=2e-5)


# Under bf16 autocast each micro-batch's matrix products are rounded to bf16 (8 bits of mantissa),
# so micro-batch 2 and 8 no longer give bit-equal sums: their weights after training agree to
# BF16_ATOL. That is of the order of how far bf16 itself moves them from fp32, not below it: across
# sessions the micro-batch moved them 0.8e-3 to 1.8e-3 and bf16 against fp32 1.7e-3 to 4.1e-3, so
# the two overlap and are not compared (they once were, and that assertion flaked).
BF16_ATOL = 3e-3  # tiny model, 2 epochs, rate 1e-3


@pytest.mark.slow
def test_under_bf16_the_weights_still_barely_depend_on_the_micro_batch(no_dropout_jobs):
    import torch

    jobs, spec, runs = no_dropout_jobs
    bf16 = spec.model_copy(update={"train": spec.train.model_copy(update={"mixed_precision": "bf16"})})
    weights = {}
    for b in (2, 8):
        run_dir = jobs.run_dir(bf16, micro_batch=b, name=f"bf16-b{b}")
        assert run_attempt(run_dir) == 0
        weights[b] = final_weights(run_dir)
    fp32 = final_weights(runs[8])
    across_b = max((weights[2][n] - weights[8][n]).abs().max().item() for n in fp32)
    bf16_vs_fp32 = max((weights[8][n] - fp32[n]).abs().max().item() for n in fp32)
    assert across_b <= BF16_ATOL
    assert bf16_vs_fp32 > 1e-4  # bf16 really was used: without it the bound above would say nothing of bf16
    assert all(torch.isfinite(w).all() for w in weights[2].values())


@pytest.mark.slow
def test_the_gradient_of_a_step_does_not_depend_on_the_micro_batch(no_dropout_jobs):
    import numpy as np
    import structlog
    import torch

    from mtld.train.data import load_tasks
    from mtld.train.guard import NoGuard
    from mtld.train.model import MultiTaskModel, load_encoder, load_tokenizer
    from mtld.train.plan import Step
    from mtld.train.signals import StopFlag
    from mtld.train.step import StepRunner

    _, spec, _ = no_dropout_jobs
    tasks = load_tasks(spec, load_tokenizer(spec.model, trust_remote_code=False))
    torch.manual_seed(0)
    model = MultiTaskModel(load_encoder(spec.model, trust_remote_code=False), [t.info for t in tasks])
    steps = [Step(0, np.arange(0, 8)), Step(0, np.array([3, 9, 40, 41, 44])), Step(1, np.arange(10, 18)), Step(1, np.arange(25, 30))]
    for step in steps:
        grads = {}
        for b in (2, 4, 8):
            runner = StepRunner(model, tasks, None, None, device=torch.device("cpu"), micro_batch=b, max_grad_norm=0.0,
                                amp=None, stop=StopFlag(), guard=NoGuard(), log=structlog.get_logger())
            model.zero_grad(set_to_none=True)
            assert runner.accumulate(step, 0).outcome == "done"
            grads[b] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        assert any(g.abs().sum() > 0 for g in grads[8].values())
        for b in (2, 4):
            assert grads[b].keys() == grads[8].keys()
            for name in grads[8]:
                torch.testing.assert_close(grads[b][name], grads[8][name], rtol=1e-4, atol=1e-7, msg=lambda m: f"b={b} {name}: {m}")


@pytest.mark.slow
def test_guard_scale_down_halves_the_micro_batch_and_keeps_the_maths(no_dropout_jobs, read_events):
    jobs, spec, runs = no_dropout_jobs
    run_dir = jobs.run_dir(spec, micro_batch=8, name="guard-scale")
    assert run_attempt(run_dir, guard=ScriptedGuard({3: "scale_down", 6: "scale_down", 9: "scale_down"})) == 0
    scaled = read_events(run_dir, "batch.scaled_down")
    assert [(e["from"], e["to"], e["reason"], e["step"]) for e in scaled] == [(8, 4, "memory_guard", 3), (4, 2, "memory_guard", 6)]
    for e in scaled:  # the cache (CPU: the heap, malloc_trim) is handed back, and the fall is said
        assert e["freed_bytes"] == e["device_bytes_before"] - e["device_bytes_after"]
    result = json.loads((run_dir / "result.json").read_text())
    assert result["scaled_down"] and result["micro_batch_start"] == 8 and result["micro_batch_end"] == 2
    assert result["step"] == result["total_steps"] == json.loads((runs[8] / "result.json").read_text())["total_steps"]
    assert set(result["timing"]) == {"8", "4", "2"}
    assert_same_weights(final_weights(run_dir), final_weights(runs[8]), exact=False, atol=2e-5)


# ---------------------------------------------------------------- interrupt and exact resume


class InterruptMidStep:
    """A fake guard that asks to interrupt at the third micro-batch of one step,
    after two micro-batches have drawn dropout masks from the RNG."""

    def __init__(self, step: int):
        self.target, self.step, self.calls = step, -1, 0

    def at_step(self, step):
        self.step, self.calls = step, 0

    def advice(self):
        self.calls += 1
        return "interrupt" if (self.step, self.calls) == (self.target, 3) else "ok"


@pytest.mark.slow
def test_guard_interrupt_checkpoints_and_the_resumed_run_ends_bit_identical(jobs, read_events):
    """Dropout on: an exact resume needs the RNG states as well as weights and optimizer."""
    spec = jobs.spec([jobs.task("classification", 40, n_eval=16), jobs.task("tokens", 24, n_eval=8)], epochs=2, eval_every=4)
    whole = jobs.run_dir(spec, micro_batch=2, name="whole")
    assert run_attempt(whole) == 0

    parts = jobs.run_dir(spec, micro_batch=2, name="parts")
    assert run_attempt(parts, guard=InterruptMidStep(9)) == 75
    result = json.loads((parts / "result.json").read_text())
    assert result["outcome"] == "interrupted" and result["step"] == 9
    assert result["checkpoint"].endswith("step-00000009.pt")
    assert read_events(parts, "run.interrupted")[-1]["reason"] == "memory_critical"
    assert not (parts / "model").exists()

    assert run_attempt(parts) == 0
    assert read_events(parts, "run.started")[-1]["resumed_from_step"] == 9
    assert_same_weights(final_weights(parts), final_weights(whole), exact=True)
    whole_metrics = json.loads((whole / "metrics.json").read_text())
    assert json.loads((parts / "metrics.json").read_text()) == whole_metrics


def test_a_checkpoint_of_another_job_is_refused(jobs):
    spec = jobs.spec([jobs.task("classification", 24)], epochs=1, checkpoint_every=1)
    run_dir = jobs.run_dir(spec, micro_batch=2)
    assert run_attempt(run_dir, guard=ScriptedGuard({2: "interrupt"})) == 75
    changed = jobs.spec([jobs.task("classification", 24, seed=1)], epochs=1, checkpoint_every=1)  # other data
    jobs.run_dir(changed, micro_batch=2)
    assert run_attempt(run_dir) == 2
    assert "different job" in json.loads((run_dir / "result.json").read_text())["message"]


# ---------------------------------------------------------------- bad input


def bad_label_row(jobs):
    task = jobs.task("classification", 260)
    path = jobs.base / "data" / "classification.train.jsonl"
    lines = path.read_text().splitlines()
    lines[249] = json.dumps({"text": "a fine day", "label": "meh"})  # past the rows `submit` checks
    path.write_text("\n".join(lines) + "\n")
    return jobs.spec([task]), "classification.train.jsonl line 250: label 'meh' is not in the label list"


def unreadable_model(jobs):
    model = jobs.base / "broken-model"
    model.mkdir()
    (model / "config.json").write_text("{not json")
    return jobs.spec([jobs.task("classification", 16)], model=model), "cannot load the tokenizer from"


def tokenizer_needs_fugashi(jobs):
    model = japanese_tokenizer_model(jobs, "ja-model", word_tokenizer_type="mecab")
    return jobs.spec([jobs.task("classification", 16)], model=model), "pip install 'mtld[ja]'"


def model_without_weights(jobs):
    import shutil

    model = jobs.base / "no-weights"
    shutil.copytree(jobs.model, model)
    (model / "model.safetensors").unlink()
    return jobs.spec([jobs.task("classification", 16)], model=model), "cannot load the model from"


def missing_data_file(jobs):
    task = jobs.task("classification", 16)
    spec = jobs.spec([task])
    (jobs.base / "data" / "classification.train.jsonl").unlink()
    return spec, "cannot read"


@pytest.mark.parametrize("case", [bad_label_row, unreadable_model, tokenizer_needs_fugashi, model_without_weights, missing_data_file])
def test_bad_input_exits_2_with_a_clear_message_and_no_result_model(jobs, case, capsys, read_events):
    spec, expected = case(jobs)
    run_dir = jobs.run_dir(spec, micro_batch=2)
    assert run_attempt(run_dir) == 2
    result = json.loads((run_dir / "result.json").read_text())
    assert result["outcome"] == "bad_input" and result["exit_code"] == 2
    assert expected in result["message"]
    failed = read_events(run_dir, "run.failed")
    assert len(failed) == 1 and expected in failed[0]["error"]
    stderr = capsys.readouterr().err.strip().splitlines()
    assert len(stderr) == 1 and expected in stderr[0]
    assert not (run_dir / "model").exists() and not (run_dir / "best").exists() and not (run_dir / "checkpoints").exists()
    assert read_events(run_dir)[-1]["event"] == "run.finished"


@pytest.mark.parametrize(("size", "effective", "problem"), [
    (8, 4, "8 is larger than the job's effective batch 4 (the launcher's size for it: 4)"),
    (4, 3, "4 is larger than the job's effective batch 3 (the launcher's size for it: 2)"),
    (3, 8, "3 is not one of 2, 4, 8"),
])
def test_a_micro_batch_the_launcher_did_not_decide_is_bad_input(jobs, capsys, read_events, size, effective, problem):
    """The launcher fits the size to the job (mtld.decide.policy.fit_effective_batch); the child does not
    correct it, so a wrong launch.json cannot train at a size the store does not record."""
    spec = jobs.spec([jobs.task("classification", 16)], effective_batch_size=effective)
    run_dir = jobs.run_dir(spec, micro_batch=size)
    assert run_attempt(run_dir) == 2
    message = f"{run_dir / 'launch.json'}: micro_batch - {problem}"
    assert json.loads((run_dir / "result.json").read_text())["message"] == message
    assert capsys.readouterr().err.strip().splitlines() == [f"mtld train: {message}"]
    assert not read_events(run_dir, "run.started")


@pytest.mark.parametrize(("size", "effective"), [(2, 1), (4, 4), (4, 6)])
def test_the_child_trains_at_the_launchers_size_as_given(jobs, read_events, size, effective):
    spec = jobs.spec([jobs.task("classification", 12)], epochs=1, effective_batch_size=effective)
    run_dir = jobs.run_dir(spec, micro_batch=size)
    assert run_attempt(run_dir) == 0
    [started] = read_events(run_dir, "run.started")
    assert (started["micro_batch"], started["accumulation"]) == (size, -(-effective // size))
    assert json.loads((run_dir / "result.json").read_text())["micro_batch_end"] == size


def test_a_missing_launch_file_is_bad_input(tmp_path):
    assert run_attempt(tmp_path) == 2
    assert json.loads((tmp_path / "result.json").read_text())["outcome"] == "bad_input"


def test_an_unexpected_error_is_logged_with_its_traceback(jobs, read_events):
    class Exploding:
        def at_step(self, step):
            pass

        def advice(self):
            raise ZeroDivisionError("boom")

    run_dir = jobs.run_dir(jobs.spec([jobs.task("classification", 16)]), micro_batch=2)
    assert run_attempt(run_dir, guard=Exploding()) == 1
    failed = read_events(run_dir, "run.failed")[-1]
    assert failed["outcome"] == "failed" and "ZeroDivisionError: boom" in failed["error"]
    assert failed["exception"][-1]["exc_type"] == "ZeroDivisionError"
    assert json.loads((run_dir / "result.json").read_text())["outcome"] == "failed"


# ---------------------------------------------------------------- formats, tokenizers, precision


def python_tokenizer_model(jobs):
    """A copy of the tiny model whose tokenizer is pure Python (no word_ids()): BertJapaneseTokenizer
    with its basic word splitter, which needs no MeCab."""
    return japanese_tokenizer_model(jobs, "python-tokenizer", word_tokenizer_type="basic", do_lower_case=True)


def japanese_tokenizer_model(jobs, name: str, **config):
    """A copy of the tiny model with its WordPiece vocabulary behind a BertJapaneseTokenizer."""
    import shutil

    model = jobs.base / name
    shutil.copytree(jobs.model, model)
    vocab = json.loads((model / "tokenizer.json").read_text())["model"]["vocab"]
    (model / "vocab.txt").write_text("\n".join(sorted(vocab, key=vocab.get)) + "\n")
    (model / "tokenizer.json").unlink()
    (model / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "BertJapaneseTokenizer", "subword_tokenizer_type": "wordpiece", **config}))
    return model


@pytest.mark.parametrize("python_tokenizer", [False, True])
def test_word_tags_land_on_each_words_first_sub_token(jobs, data_rows, python_tokenizer):
    from mtld.config.taskrows import Example
    from mtld.train.data import IGNORE, TaskInfo, make_split
    from mtld.train.model import load_tokenizer

    model = python_tokenizer_model(jobs) if python_tokenizer else jobs.model
    tokenizer = load_tokenizer(model, trust_remote_code=False)
    assert tokenizer.is_fast != python_tokenizer
    rows = data_rows("tokens", 30, seed=3) + [{"tokens": ["carol", "visited", "東京", "and", "new", "york"] * 4,
                                                "tags": ["B-PER", "O", "B-LOC", "O", "B-LOC", "I-LOC"] * 4}]
    labels = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    info = TaskInfo("ner", "token_classification", labels, "tokens", None, "tags")
    split = make_split(info, [Example(r["tokens"], None, r["tags"]) for r in rows], tokenizer, max_length=16)
    assert split.input_ids.shape[1] == 16 and split.lengths.max() == 16  # the long row was cut at 16
    for i, row in enumerate(rows):
        starts = split.word_starts[i]
        kept = starts >= 0
        targets = split.targets[i].numpy()
        assert sorted(targets[targets != IGNORE].tolist()) == sorted(labels.index(t) for t, k in zip(row["tags"], kept) if k)
        pieces = tokenizer.convert_ids_to_tokens(split.input_ids[i].tolist())
        for word, start in zip(row["tokens"], starts):
            if start >= 0:
                assert pieces[start] == tokenizer.tokenize(word)[0]
        assert split.units[i] == kept.sum()
    assert split.word_starts[-1][-1] == -1  # words past max_length are not trained on


@pytest.mark.slow
def test_csv_data_a_python_tokenizer_and_mixed_precision(jobs, data_rows, read_events):
    import csv

    def write_csv(name, rows, fields):
        path = jobs.base / f"{name}.csv"
        with path.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            for row in rows:
                writer.writerow({k: json.dumps(v) if k == "tokens" else " ".join(v) if isinstance(v, list) else v
                                 for k, v in row.items()})
        return str(path)

    pair = jobs.task("pair", 8) | {"train": write_csv("pair", data_rows("pair", 48), ["a", "b", "label"])}
    tokens = jobs.task("tokens", 8) | {"train": write_csv("tokens", data_rows("tokens", 48), ["tokens", "tags"]),
                                       "eval": write_csv("tokens-eval", data_rows("tokens", 16, seed=9), ["tokens", "tags"])}
    spec = jobs.spec([pair, tokens], model=python_tokenizer_model(jobs), mixed_precision="bf16")
    run_dir = jobs.run_dir(spec, micro_batch=4)
    assert run_attempt(run_dir) == 0
    started = read_events(run_dir, "run.started")[0]
    assert started["mixed_precision"] == "bf16" and started["mixed_precision_reason"] == "mixed_precision = bf16"
    assert [t["train"] for t in started["tasks"]] == [48, 48]
    assert "entity_f1" in json.loads((run_dir / "metrics.json").read_text())["evals"][-1]["tasks"]["tokens"]
