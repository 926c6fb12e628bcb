"""Bad job files are refused at submit with one exact line each, exit 2, nothing queued."""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
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


# ------------------------------------------------------------------ issue 25: strict types, old files still valid


@pytest.mark.parametrize(("line", "key", "value"), [
    ('mixed_precision = true', "mixed_precision", "auto"),  # before the four settings: true is "auto"
    ('mixed_precision = false', "mixed_precision", "off"),
    ("learning_rate = 1", "learning_rate", 1.0),  # a whole number is still a number
    ("max_grad_norm = 0", "max_grad_norm", 0.0),
])
def test_job_files_that_were_valid_read_as_before(env, line, key, value):
    spec = load_job(write_job(env, GOOD_JOB.replace("[train]\n", f"[train]\n{line}\n")))
    assert getattr(spec.train, key) == value


def test_a_not_before_written_as_a_string_still_reads(env):
    text = GOOD_JOB.replace("[train]", '[schedule]\nnot_before = "2026-11-28T01:30:00+09:00"\n\n[train]')
    spec = load_job(write_job(env, text))
    assert spec.schedule.not_before == datetime(2026, 11, 27, 16, 30, tzinfo=timezone.utc)


def test_a_stored_spec_from_before_strict_types_and_the_line_limit_is_read_and_restarts(env):
    """Specs in the store are JSON an older mtld wrote: no max_line_chars, true for mixed precision."""
    from mtld.config.jobspec import spec_from_dict, stored_spec
    from mtld.config.taskrows import MAX_LINE_CHARS

    spec = load_job(write_job(env))
    old = json.loads(spec.model_dump_json(exclude={"max_line_chars"}))
    old["train"]["mixed_precision"] = True
    text = json.dumps(old)
    assert stored_spec(text, shown_as="job 1").train.mixed_precision == "auto"
    restarted = spec_from_dict(json.loads(text), base_dir=env, shown_as="job 1", stored=True)
    assert restarted.max_line_chars == MAX_LINE_CHARS and restarted.tasks == spec.tasks


# ------------------------------------------------------------------ issue 25: eval labels, the whole files


def test_an_eval_label_the_training_data_lacks_is_found_beyond_the_first_rows(env):
    """Item 9: the label set is the training data's; submit reads both files whole for this check."""
    rows = [{"text": f"row {i}", "label": "pos" if i % 2 else "neg"} for i in range(300)]
    (env / "data").mkdir(exist_ok=True)
    (env / "data/ev.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [*rows, {"text": "x", "label": "meh"}]))
    text = GOOD_JOB.replace('labels = ["pos", "neg"]\n', 'eval = "data/ev.jsonl"\n')
    with pytest.raises(JobFileError) as refused:
        load_job(write_job(env, text))
    [problem] = refused.value.problems
    assert problem.key == "tasks.0.eval"
    assert problem.message.startswith("ev.jsonl line 301: label 'meh' never occurs in the training data "
                                      "(sentiment.jsonl)")
    (env / "data/ev.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert load_job(env / "job.toml").tasks[0].eval == (env / "data/ev.jsonl").resolve()


# ------------------------------------------------------------------ issue 25: the output folder


def test_an_output_on_a_read_only_file_system_is_refused_by_the_probe_even_for_root(env, small_fs):
    """Item 4: root passes every permission check (os.access), so only a real write tells."""
    import subprocess

    disk = small_fs("1m")
    subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
    text = GOOD_JOB.replace("max_length = 64", f'max_length = 64\noutput = "{disk}/runs"')
    with pytest.raises(JobFileError) as refused:
        load_job(write_job(env, text))
    assert str(refused.value) == (f"{env / 'job.toml'}: output - cannot make run folders in {disk}/runs: {disk} is "
                                  "not writable (Read-only file system)")


def test_an_output_on_a_full_disk_is_accepted_and_leaves_no_probe_behind(env, small_fs):
    """A full disk is not bad input: the job is held until there is room (mtld.daemon.diskguard)."""
    from tests.conftest import fill

    disk = small_fs("1m")
    fill(disk, leave=0)
    text = GOOD_JOB.replace("max_length = 64", f'max_length = 64\noutput = "{disk}/runs"')
    assert load_job(write_job(env, text)).output == disk / "runs"
    assert sorted(p.name for p in disk.iterdir()) == ["filler"]


# ------------------------------------------------------------------ issue 25: the line limit


def test_a_huge_line_is_refused_by_number_without_being_read_whole(tmp_path):
    """Item 10: a 10 MB line took a run's peak memory from 0.54 to 2.0 GB; it is refused while at most the
    limit is held."""
    import tracemalloc

    from mtld.config.taskrows import DataError, read_rows

    path = tmp_path / "data.jsonl"
    with path.open("w") as f:
        f.write(json.dumps({"text": "ok", "label": "pos"}) + "\n")
        f.write('{"text": "' + "x" * 10_000_000 + '", "label": "pos"}\n')
    tracemalloc.start()
    try:
        with pytest.raises(DataError) as refused:
            list(read_rows(path, max_line_chars=100_000))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(refused.value) == "data.jsonl line 2: longer than 100,000 characters (the job file's max_line_chars)"
    assert peak < 2_000_000  # the line alone is 10 MB


@pytest.mark.parametrize("ending", ["\n", "\r\n"])
def test_a_line_of_exactly_the_limit_is_read_and_one_more_character_is_not(tmp_path, ending):
    from mtld.config.taskrows import DataError, read_rows

    for suffix, row in ((".jsonl", lambda text: json.dumps({"text": text})), (".csv", lambda text: text)):
        path = tmp_path / f"data{suffix}"
        header = "text" + ending if suffix == ".csv" else ""
        fits = row("x" * 10)
        limit = len(fits)
        path.write_bytes((header + fits + ending).encode())
        assert [r["text"] for _, r in read_rows(path, max_line_chars=limit)] == ["x" * 10]
        path.write_bytes((header + row("x" * 11) + ending).encode())
        with pytest.raises(DataError, match="longer than"):
            list(read_rows(path, max_line_chars=limit))


def test_a_csv_field_over_pythons_128_kb_is_read_up_to_the_line_limit(tmp_path):
    """Item 7: csv's own field limit (131,072 characters) was an internal error; now the line limit rules."""
    from mtld.config.taskrows import read_rows

    path = tmp_path / "score.csv"
    path.write_text("a,b,score\n" + "x" * 200_000 + ",y,1.5\n")
    [(line, row)] = list(read_rows(path))
    assert line == 2 and len(row["a"]) == 200_000
