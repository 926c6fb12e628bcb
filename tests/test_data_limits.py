"""Issue 25 in the run's child: the data it reads is held to the checks `mtld submit` makes (the line limit,
items 10; eval labels the training data never has, item 9), should the files have changed since."""

from __future__ import annotations

import json

from mtld.train import run_attempt


def bad_input(run_dir) -> str:
    result = json.loads((run_dir / "result.json").read_text())
    assert (result["outcome"], result["exit_code"]) == ("bad_input", 2)
    return result["message"]


def test_a_line_over_the_jobs_limit_ends_the_run_as_bad_input_naming_the_line(jobs, capsys):
    task = jobs.task("classification", 16)
    spec = jobs.spec([task]).model_copy(update={"max_line_chars": 1000})
    with open(task["train"], "a") as f:  # after submit: a row of 1,500 characters
        f.write(json.dumps({"text": "good " * 300, "label": "pos"}) + "\n")
    run_dir = jobs.run_dir(spec)
    assert run_attempt(run_dir) == 2
    assert bad_input(run_dir) == ("classification.train.jsonl line 17: longer than 1,000 characters (the job file's "
                                  "max_line_chars)")
    assert not (run_dir / "checkpoints").exists()


def test_an_eval_label_the_training_data_never_has_ends_the_run_as_bad_input(jobs, capsys):
    task = jobs.task("classification", 16, n_eval=8, labels=False)
    with open(task["eval"], "a") as f:
        f.write(json.dumps({"text": "a so-so film", "label": "mixed"}) + "\n")
    run_dir = jobs.run_dir(jobs.spec([task]))
    assert run_attempt(run_dir) == 2
    assert bad_input(run_dir).startswith("classification.eval.jsonl line 9: label 'mixed' never occurs in the "
                                         "training data (classification.train.jsonl)")
