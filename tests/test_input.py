"""One validation path: every malformed input of issue 13 (cases 1, 5 and 6) and issue 25 (items 4-7, 9, 10) is
refused when it is given, with one line and exit status 2, nothing queued; user text never breaks the tables; and
no traceback ever reaches a user (the last-resort handler writes a crash report instead)."""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mtld.cli import app, main
from mtld.store import Store
from tests.conftest import GOOD_JOB, SENTIMENT, write_job

BIG = str(10**21)  # beyond SQLite's 64-bit INTEGER


@pytest.fixture
def home(tmp_path, monkeypatch):
    for name in [n for n in os.environ if n.startswith("MTLD_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("MTLD_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)  # where a relative or empty MTLD_HOME would have put the state
    return tmp_path / "home"


@pytest.fixture
def job_folder(tmp_path):
    folder = tmp_path / "job"
    folder.mkdir()
    write_job(folder)
    return folder


def mtld(*args: str) -> tuple[int, str, str]:
    """The CLI in-process; an exception escaping a command is a traceback a user would see: it fails the test."""
    result = CliRunner().invoke(app, list(args))
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def queued(home: Path) -> list:
    if not (home / "state.db").exists():
        return []
    with Store(home / "state.db") as store:
        return store.list_jobs() + store.list_schedules()


def edit_job(folder: Path, old: str, new: str) -> None:
    path = folder / "job.toml"
    assert old in path.read_text()
    path.write_text(path.read_text().replace(old, new, 1))


def in_train(line: str):
    """A change that adds `line` to the job file's [train] table."""
    return lambda f: edit_job(f, "[train]\n", f"[train]\n{line}\n")


def in_schedule(line: str):
    return lambda f: edit_job(f, "[train]", f"[schedule]\n{line}\n\n[train]")


def top_level(line: str):
    return lambda f: edit_job(f, "max_length = 64", f"max_length = 64\n{line}")


def symlink_loop(name: str):
    """`name` (in the job folder) replaced by a link to itself."""
    def apply(folder: Path) -> None:
        path = folder / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
        path.symlink_to(path.name)
    return apply


def write_file(name: str, text: str):
    def apply(folder: Path) -> None:
        (folder / name).write_text(text, encoding="utf-8")
    return apply


def with_eval(task: str, rows: list[dict]):
    """Give the task named `task` an eval file of `rows`."""
    def apply(folder: Path) -> None:
        (folder / "data/ev.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        edit_job(folder, f'name = "{task}"', f'name = "{task}"\neval = "data/ev.jsonl"')
    return apply


def planted_heads(folder: Path) -> None:
    """A model folder whose heads.pt is a pickle that would create a file if it were ever unpickled in full."""
    (folder / "model/tasks.json").write_text('{"tasks": [], "max_length": 64}')
    (folder / "model/heads.pt").write_bytes(pickle.dumps(Planted(str(folder / "unpickled"))))


def damaged_heads(folder: Path) -> None:
    """A heads.pt cut short (a copy that stopped half-way)."""
    import io

    import torch

    buffer = io.BytesIO()
    torch.save({"0.weight": torch.zeros(4, 4)}, buffer)
    (folder / "model/tasks.json").write_text('{"tasks": [], "max_length": 64}')
    (folder / "model/heads.pt").write_bytes(buffer.getvalue()[:200])


class Planted:
    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


HUGE_LINE = json.dumps({"text": "x" * 1_100_000, "label": "pos"})
DEEP_JSON = '{"text": "ok", "label": "pos", "x": ' + "[" * 100_000 + "]" * 100_000 + "}"


# (case id, environment, what to do to the job folder, command line (JOB: the job file), the one line's start)
REFUSED = [
    ("priority 5000", {}, None, ["submit", "JOB", "--priority", "5000"],
     "--priority: Input should be less than or equal to 1000"),
    ("priority beyond 64 bits", {}, None, ["submit", "JOB", "--priority", BIG],
     "--priority: Input should be less than or equal to 1000"),
    ("priority below -1000", {}, None, ["submit", "JOB", "--priority", "-5000"],
     "--priority: Input should be greater than or equal to -1000"),
    ("a cron that never fires", {}, None, ["submit", "JOB", "--every", "0 0 31 2 *"],
     "--every: '0 0 31 2 *' never fires"),
    ("a cron that never fires, in the file", {}, lambda f: edit_job(f, "[train]", '[schedule]\ncron = "0 0 30 2 *"\n\n[train]'),
     ["submit", "JOB"], "JOB: schedule.cron - '0 0 30 2 *' never fires"),
    ("empty batch size", {}, None, ["submit", "JOB", "--batch-size", ""], "--batch-size: must be auto, 2, 4 or 8, not ''"),
    ("empty not-before", {}, None, ["submit", "JOB", "--not-before", ""], "--not-before: not a time: ''"),
    ("empty every", {}, None, ["submit", "JOB", "--every", ""], "--every: '' is not a cron expression"),
    ("model folder that is not one", {}, lambda f: edit_job(f, 'model = "model"', 'model = "/etc"'), ["submit", "JOB"],
     "JOB: model - /etc is not a model folder (it has no config.json)"),
    ("output that cannot hold run folders", {}, lambda f: edit_job(f, "max_length = 64", 'max_length = 64\noutput = "/dev/null/runs"'),
     ["submit", "JOB"], "JOB: output - cannot make run folders in /dev/null/runs: /dev/null is not a folder"),
    ("a job file over 1 MiB", {}, lambda f: (f / "job.toml").write_text(GOOD_JOB + "#" * (1 << 20)), ["submit", "JOB"],
     "JOB: (file) - larger than 1 MiB: not a job file"),
    ("a folder as the job file", {}, None, ["submit", "FOLDER"], "FOLDER: (file) - not a regular file (a folder)"),
    ("/dev/zero as the job file", {}, None, ["submit", "/dev/zero"], "/dev/zero: (file) - not a regular file"),
    ("show an id beyond 64 bits", {}, None, ["show", BIG], f"{BIG}: not a job id"),
    ("cancel an id beyond 64 bits", {}, None, ["cancel", BIG], f"{BIG}: not a job id"),
    ("retry an id beyond 64 bits", {}, None, ["retry", BIG], f"{BIG}: not a job id"),
    ("logs of an id beyond 64 bits", {}, None, ["logs", BIG], f"{BIG}: not a job id"),
    ("MTLD_HOME=/dev/null", {"MTLD_HOME": "/dev/null"}, None, ["status"], "MTLD_HOME: /dev/null is not a folder"),
    ("MTLD_HOME under a file", {"MTLD_HOME": "/dev/null/mtld"}, None, ["submit", "JOB"], "MTLD_HOME: /dev/null is not a folder"),
    ("MTLD_HOME empty", {"MTLD_HOME": ""}, None, ["status"], "MTLD_HOME: must be an absolute folder path, not empty"),
    ("MTLD_HOME relative", {"MTLD_HOME": "state"}, None, ["status"], "MTLD_HOME: must be an absolute folder path, not 'state'"),
    ("MTLD_DAEMON not JSON", {"MTLD_DAEMON": "notjson"}, None, ["status"], "MTLD_DAEMON: not valid JSON"),
    ("infinite backoff in the environment", {"MTLD_DAEMON__RETRY_BACKOFF_S": "inf"}, None, ["status"],
     "MTLD_DAEMON__RETRY_BACKOFF_S: Input should be a finite number"),
    ("nan headroom in the environment", {"MTLD_MEMORY__HEADROOM": "nan"}, None, ["status"],
     "MTLD_MEMORY__HEADROOM: Input should be a finite number"),
    ("simulated probe without its file, status", {"MTLD_MEMORY__PROBE": "simulated"}, None, ["status"],
     'environment: memory.simulated_file - required when memory.probe = "simulated"'),
    ("simulated probe without its file, doctor", {"MTLD_MEMORY__PROBE": "simulated"}, None, ["doctor"],
     'environment: memory.simulated_file - required when memory.probe = "simulated"'),
    ("simulated probe without its file, daemon", {"MTLD_MEMORY__PROBE": "simulated"}, None, ["daemon", "--exit-when-idle"],
     'environment: memory.simulated_file - required when memory.probe = "simulated"'),
    ("an unknown --state", {}, None, ["status", "--state", "done"], "--state: must be one of queued, running"),
    ("a stop timeout launchd's ExitTimeOut cannot hold", {"MTLD_DAEMON__STOP_TIMEOUT_S": "46"}, None, ["status"],
     "MTLD_DAEMON__STOP_TIMEOUT_S: at most 45 s: with 5 s to reap the child and 10 s to record the run, launchd's "
     "ExitTimeOut must stay within 60 s"),
    # issue 25, item 4: accepted, then held forever
    ("output on /proc", {}, top_level('output = "/proc/mtld-runs"'), ["submit", "JOB"],
     "JOB: output - cannot make run folders in /proc/mtld-runs: /proc is on a file system that stores nothing"),
    ("output on /sys", {}, top_level('output = "/sys/kernel/mtld-runs"'), ["submit", "JOB"],
     "JOB: output - cannot make run folders in /sys/kernel/mtld-runs: /sys/kernel is on a file system that stores "
     "nothing"),
    # item 5: --not-before beyond the calendar
    ("not-before past the calendar's end", {}, None, ["submit", "JOB", "--not-before", "9999-12-31T23:59-12:00"],
     "--not-before: out of range: a time from 1970-01-01 to 9999-12-30 (UTC), not '9999-12-31T23:59-12:00'"),
    ("not-before before the calendar's start", {}, None, ["submit", "JOB", "--not-before", "0001-01-01T00:00+14:00"],
     "--not-before: out of range: a time from 1970-01-01 to 9999-12-30 (UTC), not '0001-01-01T00:00+14:00'"),
    ("not-before off the calendar, local time", {}, None, ["submit", "JOB", "--not-before", "9999-12-31T23:59"],
     "--not-before: out of range"),
    ("not-before off the calendar in the file", {}, in_schedule("not_before = 9999-12-31T23:59:00-12:00"),
     ["submit", "JOB"], "JOB: schedule.not_before - out of range: a time from 1970-01-01 to 9999-12-30 (UTC)"),
    # item 6: lax types
    ("epochs as a string", {}, lambda f: edit_job(f, "epochs = 2", 'epochs = "3"'), ["submit", "JOB"],
     "JOB: train.epochs - Input should be a valid integer"),
    ("epochs as a boolean", {}, lambda f: edit_job(f, "epochs = 2", "epochs = true"), ["submit", "JOB"],
     "JOB: train.epochs - Input should be a valid integer"),
    ("trust_remote_code as a string", {}, top_level('trust_remote_code = "yes"'), ["submit", "JOB"],
     "JOB: trust_remote_code - Input should be a valid boolean"),
    ("max_grad_norm inf", {}, in_train("max_grad_norm = inf"), ["submit", "JOB"],
     "JOB: train.max_grad_norm - Input should be a finite number"),
    ("learning_rate nan", {}, in_train("learning_rate = nan"), ["submit", "JOB"],
     "JOB: train.learning_rate - Input should be a finite number"),
    ("a task weight of inf", {}, lambda f: edit_job(f, 'labels = ["pos", "neg"]', 'labels = ["pos", "neg"]\nweight = inf'),
     ["submit", "JOB"], "JOB: tasks.0.weight - Input should be a finite number"),
    ("a priority of 1.5 in the file", {}, in_schedule("priority = 1.5"), ["submit", "JOB"],
     "JOB: schedule.priority - Input should be a valid integer"),
    ("not_before as a number", {}, in_schedule("not_before = 1700000000"), ["submit", "JOB"],
     "JOB: schedule.not_before - Input should be a valid datetime"),
    ("batch size as a string in the file", {}, lambda f: edit_job(f, 'batch_size = "auto"', 'batch_size = "8"'),
     ["submit", "JOB"], "JOB: train.batch_size - Input should be 'auto', 2, 4 or 8"),
    ("a full-width checkpoint_every", {}, in_train('checkpoint_every = "１０m"'), ["submit", "JOB"],
     "JOB: train.checkpoint_every - not a duration: '１０m' (use ASCII digits"),
    ("a full-width batch size", {}, None, ["submit", "JOB", "--batch-size", "８"],
     "--batch-size: must be auto, 2, 4 or 8, not '８'"),
    ("a full-width priority", {}, None, ["submit", "JOB", "--priority", "５"],
     "--priority: Input should be a valid integer, not '５'"),
    ("a priority with an underscore", {}, None, ["submit", "JOB", "--priority", "1_0"],
     "--priority: Input should be a valid integer, not '1_0'"),
    ("a full-width priority to restart", {}, None, ["restart", "1", "--priority", "５"],
     "--priority: Input should be a valid integer, not '５'"),
    ("a full-width batch size to set", {}, None, ["set", "1", "--batch-size", "８"],
     "--batch-size: must be auto, 2, 4 or 8, not '８'"),
    ("not-before off the calendar to set", {}, None, ["set", "1", "--not-before", "9999-12-31T23:59-12:00"],
     "--not-before: out of range"),
    # item 7: internal errors where bad input is one line
    ("a data file that is a symlink loop", {}, symlink_loop("data/sentiment.jsonl"), ["submit", "JOB"],
     "JOB: tasks.0.train - FOLDER/data/sentiment.jsonl cannot be followed: a symlink loop"),
    ("a model folder that is a symlink loop", {}, symlink_loop("model"), ["submit", "JOB"],
     "JOB: model - FOLDER/model cannot be followed: a symlink loop"),
    ("an output folder below a symlink loop", {}, lambda f: (symlink_loop("out")(f), top_level('output = "out/runs"')(f)),
     ["submit", "JOB"], "JOB: output - FOLDER/out/runs cannot be followed: a symlink loop"),
    ("a CSV field longer than the line limit", {},
     lambda f: (top_level("max_line_chars = 1000")(f), write_file("data/score.csv", 'a,b,score\nq,r,1\n"' + "x\n" * 600 + '",y,2\n')(f)),
     ["submit", "JOB"], "JOB: tasks.1.train - score.csv line 3: a field longer than 1,000 characters"),
    ("deeply nested JSON", {}, write_file("data/sentiment.jsonl", DEEP_JSON + "\n"), ["submit", "JOB"],
     "JOB: tasks.0.train - sentiment.jsonl line 1: not valid JSON (nested too deeply)"),
    ("a deeply nested job file", {}, write_file("job.toml", "name = " + "[" * 100_000 + "]" * 100_000 + "\n"),
     ["submit", "JOB"], "JOB: (file) - TOML syntax error: nested too deeply"),
    ("a deeply nested config file", {"MTLD_CONFIG": "FOLDER/config.toml"},
     write_file("config.toml", "log_level = " + "[" * 100_000 + "]" * 100_000 + "\n"), ["status"],
     "FOLDER/config.toml: TOML nested too deeply"),
    ("predict with a heads.pt mtld did not write", {}, planted_heads,
     ["predict", "FOLDER/model", "FOLDER/data/sentiment.jsonl"],
     "FOLDER/model/heads.pt: not a file mtld wrote (it holds more than tensors, so it was not loaded: mtld never "
     "unpickles a file it did not write)"),
    ("predict with a heads.pt cut short", {}, damaged_heads, ["predict", "FOLDER/model", "FOLDER/data/sentiment.jsonl"],
     "FOLDER/model/heads.pt: cannot be read, it is damaged (RuntimeError)"),
    # item 9: eval labels never seen in training
    ("an eval label the training data never has", {},
     lambda f: (edit_job(f, 'labels = ["pos", "neg"]\n', ""),
                with_eval("sentiment", [{"text": "ok", "label": "pos"}, {"text": "so-so", "label": "neutral"}])(f)),
     ["submit", "JOB"], "JOB: tasks.0.eval - ev.jsonl line 2: label 'neutral' never occurs in the training data "
     "(sentiment.jsonl): the model would have a class no example teaches"),
    ("an eval tag the training data never has", {},
     with_eval("entities", [{"tokens": ["Ann", "at", "ACME"], "tags": ["B-PER", "O", "B-ORG"]}]),
     ["submit", "JOB"], "JOB: tasks.2.eval - ev.jsonl line 1: label 'B-ORG' never occurs in the training data "
     "(entities.jsonl)"),
    ("an eval label outside the label list", {},
     with_eval("sentiment", [{"text": "ok", "label": "pos"}, {"text": "so-so", "label": "neutral"}]),
     ["submit", "JOB"], "JOB: tasks.0.labels - label 'neutral' in ev.jsonl line 2 is not in the label list"),
    # item 10: one huge line
    ("a line longer than max_line_chars", {},
     lambda f: write_file("data/sentiment.jsonl", json.dumps(SENTIMENT[0]) + "\n" + HUGE_LINE + "\n")(f),
     ["submit", "JOB"], "JOB: tasks.0.train - sentiment.jsonl line 2: longer than 1,000,000 characters (the job "
     "file's max_line_chars)"),
    ("a line limit below its floor", {}, top_level("max_line_chars = 10"), ["submit", "JOB"],
     "JOB: max_line_chars - Input should be greater than or equal to 1000"),
]


@pytest.mark.filterwarnings("error::UserWarning")  # a warning would be more lines on a user's stderr
@pytest.mark.parametrize(("env", "change", "argv", "line"), [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_malformed_input_is_refused_with_one_line_and_exit_2(home, job_folder, monkeypatch, env, change, argv, line):
    job = str(job_folder / "job.toml")

    def placed(text: str) -> str:
        return text.replace("JOB", job).replace("FOLDER", str(job_folder))

    for name, value in env.items():
        monkeypatch.setenv(name, placed(value))
    if change:
        change(job_folder)
    before = None
    if argv[0] in ("set", "restart"):  # a job to change: queued for `set`, finished for `restart`
        before = submitted(home, job, finished=argv[0] == "restart")
    code, stdout, stderr = mtld(*map(placed, argv))
    assert (code, stdout) == (2, ""), stderr
    lines = stderr.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(placed(line)), lines[0]
    assert queued(home) == ([] if before is None else [before])  # nothing queued, nothing changed
    assert not (Path.cwd() / "state.db").exists() and not (Path.cwd() / "logs").exists()
    assert not (job_folder / "unpickled").exists()  # no planted pickle ever ran


def submitted(home: Path, job_file: str, *, finished: bool):
    assert mtld("submit", job_file)[0] == 0
    with Store(home / "state.db") as store:
        if finished:
            store.start_run(1, micro_batch=2, now=2.0)
            store.transition(1, "failed", reason="test", last_error="test", now=3.0)
        return store.get(1)


@pytest.mark.parametrize("text", ["retry_backoff_s = inf", "retry_backoff_s = nan", "poll_interval_s = -inf"])
def test_non_finite_numbers_in_the_config_file_are_refused(home, tmp_path, text):
    config = tmp_path / "config.toml"
    config.write_text(f"[daemon]\n{text}\n")
    code, _, stderr = mtld("--config", str(config), "status")
    key = text.split()[0]
    assert code == 2 and stderr == f"{config}: daemon.{key} - Input should be a finite number\n"


def test_a_fifo_as_the_job_file_is_refused_not_waited_on(home, tmp_path):
    fifo = tmp_path / "job.fifo"
    os.mkfifo(fifo)
    answer: list = []
    worker = threading.Thread(target=lambda: answer.append(mtld("submit", str(fifo))), daemon=True)
    worker.start()
    worker.join(20)
    if worker.is_alive():  # unblock the reader so the thread can end, then fail
        with open(fifo, "w"):
            pass
        pytest.fail("submit waited on the FIFO")
    assert answer == [(2, "", f"{fifo}: (file) - not a regular file\n")]


def test_a_corrupt_store_is_one_line_naming_it(home, job_folder):
    home.mkdir()
    (home / "state.db").write_bytes(b"this is not a database, " * 100)
    for argv in (["status"], ["show", "1"], ["submit", str(job_folder / "job.toml")]):
        code, stdout, stderr = mtld(*argv)
        assert (code, stdout) == (2, "")
        assert stderr.startswith(f"{home / 'state.db'}: the job store is damaged (") and stderr.count("\n") == 1


# ------------------------------------------------------------------ case 1: an override cannot reach the store unchecked


def test_an_override_goes_through_the_job_files_validation(home, job_folder):
    job = str(job_folder / "job.toml")
    assert mtld("submit", job, "--priority", "1000")[0] == 0
    assert mtld("submit", job, "--priority", "1001")[0] == 2
    assert [j.priority for j in queued(home)] == [1000]


def test_show_reads_a_spec_an_older_mtld_let_through(home, job_folder):
    with Store(home / "state.db") as store:
        spec = {"name": "old", "model": "/m", "tasks": [{"name": "t", "type": "classification", "train": "/t.jsonl"}],
                "schedule": {"priority": 5000}}
        store.submit(name="old", spec_json=json.dumps(spec), job_file="/old.toml", run_root="/runs", now=1.0,
                     priority=5000)
    code, stdout, _ = mtld("show", "1", "--json")
    assert code == 0 and json.loads(stdout)["spec"]["schedule"]["priority"] == 5000
    code, stdout, _ = mtld("show", "1")
    assert code == 0 and "t (classification)" in stdout


# ------------------------------------------------------------------ issue 22: a hub id is stored as its snapshot folder


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An HF_HOME of its own with org/bert-ja at two commits: main (aaa111) and the tag v1 (bbb222)."""
    cache = tmp_path / "hf/hub"
    repo = cache / "models--org--bert-ja"
    for commit in ("aaa111", "bbb222"):
        (repo / "snapshots" / commit).mkdir(parents=True)
        (repo / "snapshots" / commit / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs/main").write_text("aaa111")
    (repo / "refs/v1").write_text("bbb222")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))  # what HF_HOME set at import
    return repo


def test_a_cached_hub_id_is_stored_as_its_snapshot_folder_and_a_revision_picks_the_commit(home, job_folder, hub):
    edit_job(job_folder, 'model = "model"', 'model = "org/bert-ja"')
    code, _, stderr = mtld("submit", str(job_folder / "job.toml"))
    assert code == 0, stderr
    assert json.loads(queued(home)[0].spec_json)["model"] == str(hub / "snapshots/aaa111")  # runs without HF_HOME
    events = [json.loads(line)["event"] for line in (home / "logs/mtld.jsonl").read_text().splitlines()]
    assert "job.model_outside" not in events  # the cache is not "a model folder outside the job's folder"

    edit_job(job_folder, 'model = "org/bert-ja"', 'model = "org/bert-ja"\nrevision = "v1"')
    assert mtld("submit", str(job_folder / "job.toml"))[0] == 0
    assert json.loads(queued(home)[1].spec_json)["model"] == str(hub / "snapshots/bbb222")


@pytest.mark.parametrize(("model", "revision", "key", "message"), [
    ("org/not-cached", None, "model", "'org/not-cached' is neither a folder next to the job file nor in the local "
     "Hugging Face cache (HF_CACHE): mtld never downloads; download it first with `hf download org/not-cached`, or give "
     "a folder"),
    ("org/bert-ja", "v9", "model", "'org/bert-ja' is neither a folder next to the job file nor in the local Hugging Face "
     "cache (HF_CACHE): mtld never downloads; download it first with `hf download org/bert-ja --revision v9`, or give "
     "a folder"),
    ("model", "v1", "revision", "a revision goes with a hub id, not a model folder"),
])  # fmt: skip
def test_a_hub_id_that_cannot_run_offline_is_one_line_saying_what_to_download(home, job_folder, hub, model, revision,
                                                                             key, message):
    edit_job(job_folder, 'model = "model"', f'model = "{model}"' + (f'\nrevision = "{revision}"' if revision else ""))
    job = str(job_folder / "job.toml")
    code, stdout, stderr = mtld("submit", job)
    assert (code, stdout) == (2, "")
    assert stderr == f"{job}: {key} - {message.replace('HF_CACHE', str(hub.parent))}\n"
    assert queued(home) == []


# ------------------------------------------------------------------ case 5: user text is never markup


def test_a_label_that_looks_like_markup_prints_as_itself(home):
    error = "bad input: label '[/]' in data.jsonl line 3 is not in the label list [bold]"
    with Store(home / "state.db") as store:
        job = store.submit(name="demo", spec_json="{}", job_file="/j[/].toml", run_root="/runs[/]", now=1.0)
        store.start_run(job.id, micro_batch=2, now=2.0)
        store.transition(job.id, "failed", reason=error, last_error=error, now=3.0)
        store.add_schedule(name="nightly", cron="0 1 * * *", spec_json="{}", job_file="/n[/].toml", run_root="/r",
                           next_fire_at=4.0, now=1.0)
    code, stdout, _ = mtld("status")
    assert code == 0 and "'[/]'" in stdout and "[bold]" in stdout
    code, stdout, _ = mtld("show", str(job.id))
    assert code == 0 and "'[/]'" in stdout and "/j[/].toml" in stdout
    code, stdout, _ = mtld("schedules")
    assert code == 0 and "/n[/].toml" in stdout


# ------------------------------------------------------------------ no traceback: the last-resort handler


def test_an_internal_error_prints_one_line_and_writes_a_crash_report(home, monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr("mtld.queue.status.collect", broken)
    with pytest.raises(SystemExit) as exited:
        main(["status"])
    assert exited.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("mtld: internal error: RuntimeError: boom second line; report: ")
    report = Path(err.strip().rsplit("report: ", 1)[1])
    assert report.parent == home / "crash" and oct(report.stat().st_mode & 0o777) == "0o600"
    text = report.read_text()
    assert "command: mtld status" in text and "Traceback" in text and "RuntimeError: boom" in text


def test_the_crash_report_goes_to_the_temporary_folder_when_the_state_folder_will_not_take_it(home, tmp_path,
                                                                                             monkeypatch, capsys):
    home.mkdir()
    (home / "crash").write_text("a file where the folder would go")
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    monkeypatch.setattr("mtld.queue.status.collect", lambda *a, **kw: 1 / 0)
    with pytest.raises(SystemExit):
        main(["status"])
    report = Path(capsys.readouterr().err.strip().rsplit("report: ", 1)[1])
    assert report.parent == tmp_path and "ZeroDivisionError" in report.read_text()


def test_the_handler_lets_ordinary_exits_through(home, capsys):
    with pytest.raises(SystemExit) as exited:
        main(["show", "42"])
    assert exited.value.code == 1 and capsys.readouterr().err == "no job 42\n"
    with pytest.raises(SystemExit) as exited:
        main(["status", "--json"])
    assert exited.value.code == 0


@pytest.mark.parametrize(("argv", "line"), [
    (["submit", "job.toml", "--priority", "abc"], "--priority: Input should be a valid integer"),
    (["show", "-1"], "-1: no such option for `mtld show` (see mtld show --help)"),
    (["show"], "JOB_ID: missing (see mtld show --help)"),
    (["show", "abc"], "JOB_ID: 'abc' is not a job id (a whole number, digits 0-9)"),
    (["logs", "1", "--lines", "-5"], "--lines: Input should be greater than or equal to 1"),
    (["wait", "1", "--interval", "0"], "--interval: Input should be greater than or equal to 0.1"),
    (["nosuch"], "mtld: No such command 'nosuch'."),
    (["show", "1_0"], "JOB_ID: '1_0' is not a job id (a whole number, digits 0-9)"),  # int() would read 10
    (["retry", "１０"], "JOB_ID: '１０' is not a job id (a whole number, digits 0-9)"),
    (["clean", "--older-than", "１０d"], "--older-than: not a duration: '１０d'"),
])
def test_a_usage_error_is_one_line_and_exit_2_never_a_box(home, capsys, argv, line):
    """Issue 25, item 8: click's boxes were 5-6 lines for what is one mistake on the command line."""
    with pytest.raises(SystemExit) as done:
        main(argv)
    err = capsys.readouterr().err
    assert done.value.code == 2 and err.startswith(line) and err.count("\n") == 1 and "╭" not in err


# ------------------------------------------------------------------ issue 25: a store that cannot take the job


def test_a_state_folder_on_a_full_disk_refuses_submit_set_and_every_in_one_line_with_the_disk_full_wording(
        tmp_path, monkeypatch, job_folder, small_fs):
    """Item 4: with MTLD_HOME itself on a full disk, `submit` printed an internal error. Two cases: a daemon
    holds the store open (its -wal and -shm exist), so a command opens it and its write is refused for room;
    no process holds it, so opening it fails (SQLite cannot map its -shm: SQLITE_IOERR_SHMSIZE)."""
    from mtld.store import Store
    from tests.conftest import fill

    disk = small_fs("4m")
    home = disk / "home"
    monkeypatch.setenv("MTLD_HOME", str(home))
    job = str(job_folder / "job.toml")
    assert mtld("submit", job)[0] == 0  # the store exists, closed; then the disk fills up
    fill(disk, leave=0)
    for argv in (["submit", job], ["set", "1", "--priority", "5"], ["status"]):
        code, stdout, stderr = mtld(*argv)
        assert (code, stdout) == (2, ""), stderr
        assert stderr == (f"{home / 'state.db'}: disk full: 0 B free on {home}: the job store cannot be opened, "
                          "nothing was changed; free some space and try again\n")
    (disk / "filler").unlink()
    with Store(home / "state.db"):  # as a running daemon does
        fill(disk, leave=0)
        for argv, what in ((["submit", job], "nothing was queued"),
                           (["submit", job, "--every", "0 1 * * *"], "no schedule was added"),
                           (["set", "1", "--priority", "5"], "nothing was changed")):
            code, stdout, stderr = mtld(*argv)
            assert (code, stdout) == (2, ""), stderr
            assert stderr == (f"{home / 'state.db'}: disk full: 0 B free on {home}: {what}; free some space and "
                              "try again\n")
    (disk / "filler").unlink()
    [job_row] = queued(home)
    assert (job_row.id, job_row.priority) == (1, 0)


@pytest.fixture
def a_daemon_pid_file(home):
    """The pid file held as a running daemon holds it (the lock, our own pid); the wake-ups a submit sends it
    (SIGUSR1) are counted, not taken for the default action, which ends the process."""
    import signal

    from mtld.platform.pidfile import PidFile

    wakeups: list[int] = []
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: wakeups.append(signum))
    pid_file = PidFile(home / "daemon.pid")
    pid_file.acquire()
    yield os.getpid()
    pid_file.release()
    signal.signal(signal.SIGUSR1, previous)


def test_a_busy_store_is_one_line_naming_the_daemon_and_nothing_is_queued(home, job_folder, monkeypatch,
                                                                          a_daemon_pid_file):
    """Item 7: `database is locked` after the busy timeout was an internal error."""
    import sqlite3

    job = str(job_folder / "job.toml")
    assert mtld("submit", job)[0] == 0
    monkeypatch.setattr("mtld.store.database.BUSY_TIMEOUT_S", 0.3)  # SQLite's wait, shortened: the lock is real
    holder = sqlite3.connect(home / "state.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        code, stdout, stderr = mtld("submit", job)
        assert (code, stdout) == (2, "")
        assert re.fullmatch(rf"{re.escape(str(home / 'state.db'))}: the job store is busy: another process held its "
                            rf"write lock for \d+ s \(the daemon, pid {a_daemon_pid_file}, has it open\); nothing was "
                            r"queued; try again\n", stderr), stderr
        code, _, stderr = mtld("set", "1", "--priority", "9")
        assert code == 2 and "the job store is busy" in stderr and "nothing was changed" in stderr
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert [(j.id, j.priority) for j in queued(home)] == [(1, 0)]


def test_a_failure_after_the_write_takes_the_job_back_out(home, job_folder, a_daemon_pid_file):
    """Item 5: a job was left queued although submit failed. Here Ctrl-C arrives just as submit wakes the
    daemon (a real SIGUSR1 to the pid in the daemon's pid file: this process, whose handler raises)."""
    import signal
    from datetime import datetime, timezone

    from mtld.config.settings import load_settings
    from mtld.logs.events import configure
    from mtld.queue import jobs

    def interrupted(signum, frame):
        raise KeyboardInterrupt

    settings = load_settings()
    configure(settings.daemon_log)  # as the CLI does
    signal.signal(signal.SIGUSR1, interrupted)  # the fixture puts its own handler back
    with Store(home / "state.db") as store:
        with pytest.raises(KeyboardInterrupt):
            jobs.submit(settings, store, job_folder / "job.toml", now=datetime.now(timezone.utc))
        assert store.list_jobs() == [] and store.transitions_for(1) == []
    events = [json.loads(line)["event"] for line in (home / "logs/mtld.jsonl").read_text().splitlines()]
    assert events == ["job.submitted", "job.withdrawn"]


def test_withdraw_takes_back_only_a_job_that_never_ran(home):
    with Store(home / "state.db") as store:
        ran = store.submit(name="ran", spec_json="{}", job_file="/j.toml", run_root="/runs", now=1.0)
        store.start_run(ran.id, micro_batch=2, now=2.0)
        store.transition(ran.id, "queued", reason="interrupted", now=3.0)
        fresh = store.submit(name="fresh", spec_json="{}", job_file="/j.toml", run_root="/runs", now=4.0)
        assert store.withdraw(ran.id) is False and store.withdraw(fresh.id) is True
        assert [j.name for j in store.list_jobs()] == ["ran"] and store.withdraw(fresh.id) is False
