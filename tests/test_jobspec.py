"""Bad job files are refused at submit with one exact line each, exit 2, nothing queued."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mtld.cli import app
from mtld.config.jobspec import JobFileError, load_job
from mtld.store import Store
from tests.conftest import GOOD_JOB, write_job


def edit(old: str, new: str):
    def apply(folder: Path) -> None:
        path = folder / "job.toml"
        text = path.read_text()
        assert old in text, old
        path.write_text(text.replace(old, new, 1))

    return apply


def write_data(name: str, content: bytes):
    def apply(folder: Path) -> None:
        (folder / "data" / name).write_bytes(content)

    return apply


def remove(name: str):
    return lambda folder: (folder / name).unlink() if (folder / name).is_file() else shutil.rmtree(folder / name)


# (case id, change to a good job folder, expected key, a fragment of the message)
BAD_JOBS = [
    ("syntax", edit('epochs = 2', 'epochs = = 2'), "line 27, column 10", "TOML syntax error"),
    ("unknown top-level key", edit('max_length = 64', 'max_length = 64\nepoch = 3'), "epoch", "unknown key"),
    ("unknown task key", edit('labels = ["pos", "neg"]', 'labels = ["pos", "neg"]\ncolour = "red"'), "tasks.0.colour", "unknown key"),
    ("missing name", edit('name = "demo"\n', ''), "name", "missing (required)"),
    ("missing train file key", edit('train = "data/score.csv"\n', ''), "tasks.1.train", "missing (required)"),
    ("wrong type", edit('max_length = 64', 'max_length = "long"'), "max_length", "valid integer"),
    ("batch size 3", edit('batch_size = "auto"', 'batch_size = 3'), "train.batch_size", "'auto', 2, 4 or 8"),
    ("epochs 0", edit('epochs = 2', 'epochs = 0'), "train.epochs", "greater than or equal to 1"),
    ("negative learning rate", edit('epochs = 2', 'epochs = 2\nlearning_rate = -0.1'), "train.learning_rate", "greater than 0"),
    ("unknown sampling", edit('epochs = 2', 'epochs = 2\nsampling = "random"'), "train.sampling", "proportional"),
    ("unknown task type", edit('type = "regression"', 'type = "ranking"'), "tasks.1.type", "classification"),
    ("duplicate task names", edit('name = "score"', 'name = "sentiment"'), "tasks.1.name", "duplicate task name"),
    ("no tasks", lambda f: (f / "job.toml").write_text(GOOD_JOB.split("[[tasks]]")[0] + "tasks = []\n"), "tasks", "at least 1"),
    ("zero weight", edit('labels = ["pos", "neg"]', 'labels = ["pos", "neg"]\nweight = 0'), "tasks.0.weight", "greater than 0"),
    ("labels on regression", edit('label_field = "score"', 'label_field = "score"\nlabels = ["x"]'), "tasks.1.labels", "no label list"),
    ("missing model folder", edit('model = "model"', 'model = "./models/bert"'), "model", "model folder not found"),
    ("model neither folder nor cached", remove("model"), "model", "neither a folder next to the job file nor in the local Hugging Face cache"),
    ("missing data file", remove("data/sentiment.jsonl"), "tasks.0.train", "file not found"),
    ("empty data file", write_data("sentiment.jsonl", b""), "tasks.0.train", "has no rows"),
    ("non-UTF-8 data", write_data("sentiment.jsonl", '{"text": "caf\u00e9", "label": "pos"}\n'.encode("latin-1")), "tasks.0.train", "not valid UTF-8"),
    ("invalid JSON line", write_data("sentiment.jsonl", b'{"text": "ok", "label": "pos"}\n{"text": \n'), "tasks.0.train", "line 2: not valid JSON"),
    ("unsupported format", lambda folder: (write_data("sentiment.txt", b'{"text": "ok", "label": "pos"}\n')(folder),
                                           edit('data/sentiment.jsonl', 'data/sentiment.txt')(folder)),
     "tasks.0.train", "unsupported format '.txt': use .jsonl or .csv"),
    ("label field absent", write_data("sentiment.jsonl", b'{"text": "ok", "sentiment": "pos"}\n'), "tasks.0.label_field", "field 'label' not in sentiment.jsonl"),
    ("text field absent", write_data("score.csv", b"x,b,score\nq,r,1\n"), "tasks.1.text_field", "field 'a' not in score.csv"),
    ("label outside the label list", write_data("sentiment.jsonl", b'{"text": "ok", "label": "pos"}\n{"text": "meh", "label": "mixed"}\n'), "tasks.0.labels", "'mixed' in sentiment.jsonl line 2 is not in the label list"),
    ("score not a number", write_data("score.csv", b"a,b,score\nq,r,high\n"), "tasks.1.train", "must be a number"),
    ("words and tags differ", write_data("entities.jsonl", b'{"tokens": ["a", "b"], "tags": ["O"]}\n'), "tasks.2.train", "2 words but 1 tags"),
]


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("MTLD_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MTLD_CONFIG", raising=False)
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    return job_dir


def test_the_good_job_is_accepted_and_resolved(env):
    spec = load_job(write_job(env))
    assert spec.model == str((env / "model").resolve())
    assert spec.tasks[1].train == (env / "data/score.csv").resolve()
    assert spec.train.effective_batch_size == 8 and spec.train.batch_size == "auto"


def test_a_cached_hub_id_becomes_its_snapshot_folder(env, monkeypatch):
    cache = env / "hf"
    snapshot = cache / "hub/models--org--bert-ja/snapshots/abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (cache / "hub/models--org--bert-ja/refs").mkdir()
    (cache / "hub/models--org--bert-ja/refs/main").write_text("abc123")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache / "hub"))
    spec = load_job(write_job(env, GOOD_JOB.replace('model = "model"', 'model = "org/bert-ja"')))
    assert spec.model == str(snapshot)  # runs whatever HF_HOME the daemon that runs it has (issue 22)


@pytest.mark.parametrize(("change", "key", "fragment"), [case[1:] for case in BAD_JOBS], ids=[case[0] for case in BAD_JOBS])
def test_a_bad_job_file_is_refused_with_one_line_naming_the_key(env, change, key, fragment):
    job_file = write_job(env)
    change(env)
    result = CliRunner().invoke(app, ["submit", str(job_file)])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"{job_file}: {key} - "), lines[0]
    assert fragment in lines[0]
    assert result.stdout == ""
    with Store(Path(env.parent / "home" / "state.db")) as store:
        assert store.list_jobs() == []


def test_every_problem_is_listed(env):
    write_job(env, GOOD_JOB.replace("epochs = 2", "epochs = 0\nbatch_size = 5").replace('batch_size = "auto"\n', ""))
    with pytest.raises(JobFileError) as info:
        load_job(env / "job.toml")
    assert sorted(p.key for p in info.value.problems) == ["train.batch_size", "train.epochs"]


def test_a_missing_job_file(env):
    result = CliRunner().invoke(app, ["submit", str(env / "nope.toml")])
    assert result.exit_code == 2
    assert re.fullmatch(r".*nope\.toml: \(file\) - not found\n", result.stderr)
