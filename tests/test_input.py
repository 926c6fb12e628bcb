"""One validation path: every malformed input of issue 13 (cases 1, 5 and 6) is refused when it is given,
with one line and exit status 2, nothing queued; user text never breaks the tables; and no traceback
ever reaches a user (the last-resort handler writes a crash report instead)."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mtld.cli import app, main
from mtld.store import Store
from tests.conftest import GOOD_JOB, write_job

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
]


@pytest.mark.parametrize(("env", "change", "argv", "line"), [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_malformed_input_is_refused_with_one_line_and_exit_2(home, job_folder, monkeypatch, env, change, argv, line):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    if change:
        change(job_folder)
    job = str(job_folder / "job.toml")
    argv = [job if a == "JOB" else str(job_folder) if a == "FOLDER" else a for a in argv]
    code, stdout, stderr = mtld(*argv)
    assert (code, stdout) == (2, ""), stderr
    lines = stderr.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(line.replace("JOB", job).replace("FOLDER", str(job_folder))), lines[0]
    assert queued(home) == []
    assert not (Path.cwd() / "state.db").exists() and not (Path.cwd() / "logs").exists()


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
    (["show", "abc"], "JOB_ID: Input should be a valid integer"),
    (["logs", "1", "--lines", "-5"], "--lines: Input should be greater than or equal to 1"),
    (["wait", "1", "--interval", "0"], "--interval: Input should be greater than or equal to 0.1"),
    (["nosuch"], "mtld: No such command 'nosuch'."),
])
def test_a_usage_error_is_one_line_and_exit_2_never_a_box(home, capsys, argv, line):
    """Issue 25, item 8: click's boxes were 5-6 lines for what is one mistake on the command line."""
    with pytest.raises(SystemExit) as done:
        main(argv)
    err = capsys.readouterr().err
    assert done.value.code == 2 and err.startswith(line) and err.count("\n") == 1 and "╭" not in err
