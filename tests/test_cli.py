"""The CLI end to end: submit, status, show, cancel, retry, logs, settings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from mtld import __version__
from mtld.queue.jobs import BadOption, parse_not_before
from mtld.config.settings import Settings, SettingsError, load_settings, platform_dirs
from tests.conftest import run_cli as mtld
from tests.conftest import open_under, write_job


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("MTLD_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MTLD_CONFIG", raising=False)
    return tmp_path / "home"


@pytest.fixture
def job_file(tmp_path):
    folder = tmp_path / "job"
    folder.mkdir()
    return write_job(folder)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="reads /proc/self/fd")
def test_a_command_gives_back_its_store_connection_and_its_log(home, job_file):
    for _ in range(5):
        assert mtld("submit", str(job_file))[0] == 0
        assert mtld("status", "--json")[0] == 0
    # the log stays open (one per process, as configured last); no connection to the store does
    assert open_under(home) == [str(home / "logs" / "mtld.jsonl")]  # a leak once ran a test worker past select()'s 1,024


def test_submit_status_cancel_and_the_log(home, job_file):
    code, stdout, _ = mtld("submit", str(job_file))
    assert code == 0
    job_id = int(stdout)

    status = json.loads(mtld("status", "--json")[1])
    [job] = status["queued"]
    assert (job["id"], job["name"], job["state"]) == (job_id, "demo", "queued")
    assert status["counts"]["queued"] == 1
    assert status["daemon"] == {"running": False, "pid": None, "paused": False}

    assert mtld("cancel", str(job_id))[0] == 0
    status = json.loads(mtld("status", "--json")[1])
    [job] = status["finished"]
    assert job["state"] == "cancelled" and status["queued"] == []

    lines = (home / "logs" / "mtld.jsonl").read_text().splitlines()
    events = [json.loads(line) for line in lines]
    assert [e["event"] for e in events] == ["job.submitted", "job.cancelled"]
    assert all(e["job_id"] == job_id and e["level"] == "info" for e in events)
    assert events[0]["tasks"] == ["sentiment", "score", "entities"]
    assert datetime.fromisoformat(events[0]["ts"].replace("Z", "+00:00")).tzinfo is not None

    code, stdout, _ = mtld("logs", str(job_id), "--json")
    assert [json.loads(line)["event"] for line in stdout.splitlines()] == ["job.submitted", "job.cancelled"]

    assert mtld("retry", str(job_id))[0] == 0
    assert json.loads(mtld("show", str(job_id), "--json")[1])["state"] == "queued"


def test_pause_resume_and_unschedule_log_their_events(home, job_file):
    assert mtld("pause", "--now") == (0, "paused: the running job checkpoints and goes back to the queue\n", "")
    assert json.loads(mtld("status", "--json")[1])["daemon"]["paused"] is True
    assert mtld("resume")[1] == "resumed\n"
    assert json.loads(mtld("status", "--json")[1])["daemon"]["paused"] is False
    schedule = json.loads(mtld("submit", str(job_file), "--every", "0 1 * * *", "--json")[1])
    assert mtld("unschedule", str(schedule["id"]))[1] == f"schedule {schedule['id']} (demo) removed\n"
    assert mtld("unschedule", str(schedule["id"]))[0] == 1
    events = [json.loads(line) for line in (home / "logs" / "mtld.jsonl").read_text().splitlines()]
    assert [(e["event"], e.get("now")) for e in events] == [
        ("daemon.paused", True), ("daemon.resumed", None), ("schedule.added", None), ("schedule.removed", None)]
    assert events[-1]["schedule_id"] == schedule["id"] and events[-1]["name"] == "demo"


def test_submit_counts_the_rows_and_status_only_reads_them(home, job_file):
    rows_cache = home / "estimates" / "rows.json"
    mtld("submit", str(job_file))
    counted = json.loads(rows_cache.read_text())
    assert counted and all(len(v) == 3 and v[2] > 0 for v in counted.values())  # size, mtime, rows per data file
    before = rows_cache.stat().st_mtime_ns
    mtld("status")
    assert rows_cache.stat().st_mtime_ns == before
    rows_cache.unlink()
    assert json.loads(mtld("status", "--json")[1])["queued"]
    assert not rows_cache.exists()  # a read counts what the cache misses, and writes nothing


def test_the_stored_spec_does_not_change_when_the_file_does(home, job_file):
    job_id = mtld("submit", str(job_file))[1].strip()
    job_file.write_text(job_file.read_text().replace("epochs = 2", "epochs = 9"))
    shown = json.loads(mtld("show", job_id, "--json")[1])
    assert shown["spec"]["train"]["epochs"] == 2
    assert [t["to_state"] for t in shown["transitions"]] == ["queued"]


def test_options_override_the_job_file(home, job_file):
    out = json.loads(mtld("submit", str(job_file), "--priority", "5", "--batch-size", "2", "--not-before", "2031-01-02T03:04", "--json")[1])
    assert (out["priority"], out["batch_size"]) == (5, "2")
    assert out["not_before"] == datetime(2031, 1, 2, 3, 4).astimezone().astimezone(timezone.utc).isoformat().replace("+00:00", "Z")
    spec = json.loads(mtld("show", str(out["id"]), "--json")[1])["spec"]
    assert spec["train"]["batch_size"] == 2


@pytest.mark.parametrize("option", [("--batch-size", "3"), ("--not-before", "tomorrow")])
def test_bad_options_are_refused(home, job_file, option):
    code, _, stderr = mtld("submit", str(job_file), *option)
    assert code == 2 and option[0] in stderr
    assert json.loads(mtld("status", "--json")[1])["counts"]["queued"] == 0


def test_unknown_ids_and_impossible_moves_are_clear_errors(home, job_file):
    assert mtld("cancel", "42") == (1, "", "no job 42\n")
    job_id = mtld("submit", str(job_file))[1].strip()
    code, _, stderr = mtld("retry", job_id)
    assert code == 1 and "queued" in stderr


def test_status_table_lists_the_queue_in_run_order(home, job_file):
    low = mtld("submit", str(job_file), "--priority", "1")[1].strip()
    high = mtld("submit", str(job_file), "--priority", "9")[1].strip()
    table = mtld("status")[1]
    assert table.index(f"\n{high} ") < table.index(f"\n{low} ")


def test_version():
    assert mtld("--version")[1].strip() == f"mtld {__version__}"


@pytest.mark.slow
def test_the_console_script_runs_in_a_real_process(home, job_file):
    env = {**os.environ, "MTLD_HOME": str(home)}
    mtld_bin = Path(sys.executable).parent / "mtld"
    submitted = subprocess.run([mtld_bin, "submit", str(job_file)], env=env, capture_output=True, text=True, check=True)
    status = subprocess.run([mtld_bin, "status", "--json"], env=env, capture_output=True, text=True, check=True)
    assert json.loads(status.stdout)["queued"][0]["id"] == int(submitted.stdout)


# ------------------------------------------------------------------ settings


def test_settings_from_file_and_environment(tmp_path, monkeypatch):
    config = tmp_path / "config.toml"
    config.write_text('log_level = "debug"\n[train]\ndevice = "cpu"\nstart_batch_size = 2\nthreads = "auto"\n')
    monkeypatch.setenv("MTLD_TRAIN__START_BATCH_SIZE", "8")
    monkeypatch.setenv("MTLD_TRAIN__THREADS", "3")
    monkeypatch.setenv("MTLD_HOME", str(tmp_path / "h"))
    settings = load_settings(config)
    assert (settings.log_level, settings.train.device, settings.train.start_batch_size) == ("debug", "cpu", 8)
    assert settings.train.threads == 3
    assert settings.db_path == tmp_path / "h" / "state.db"
    assert settings.daemon_log == tmp_path / "h" / "logs" / "mtld.jsonl"


def test_the_repository_config_is_the_defaults(monkeypatch):
    for name in [n for n in os.environ if n.startswith("MTLD_")]:
        monkeypatch.delenv(name)
    from mtld.executor.registry import kinds, plugin_for

    documented = load_settings(Path(__file__).parent.parent / "config.toml")
    assert documented.model_dump(exclude={"executor"}) == Settings().model_dump(exclude={"executor"})
    assert documented.executor.kind == Settings().executor.kind
    # each executor's table, as its own model reads it: its defaults, and one for every kind that has settings
    tables = documented.executor.model_extra
    assert sorted(tables) == sorted(k for k, p in kinds().items() if p.settings_model is not None)
    for kind in tables:
        assert plugin_for(documented, kind).section == kinds()[kind].settings_model()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("colour = 1\n", "colour - unknown key"),
        ("[train]\nstart_batch_size = 3\n", "train.start_batch_size - Input should be 2, 4 or 8"),
        ("log_level = \n", "Invalid value"),
        ("[train]\nthreads = 0\n", 'train.threads - Input should be "auto" or a number of threads'),
        ('[train]\nthreads = "many"\n', 'train.threads - Input should be "auto" or a number of threads'),
    ],
)
def test_bad_config_files(tmp_path, text, message):
    config = tmp_path / "config.toml"
    config.write_text(text)
    with pytest.raises(SettingsError, match=message):
        load_settings(config)


def test_a_named_config_file_must_exist(tmp_path, home, job_file):
    code, _, stderr = mtld("--config", str(tmp_path / "missing.toml"), "status")
    assert code == 2 and "config file not found" in stderr


def test_platform_folders():
    assert platform_dirs("darwin", {"HOME": "/Users/a"}) == (
        Path("/Users/a/Library/Application Support/mtld"),
        Path("/Users/a/Library/Logs/mtld"),
    )
    assert platform_dirs("linux", {"HOME": "/home/a"})[0] == Path("/home/a/.local/state/mtld")
    assert platform_dirs("linux", {"HOME": "/home/a", "XDG_STATE_HOME": "/s"})[1] == Path("/s/mtld/logs")


def test_not_before_parsing():
    now = datetime(2026, 11, 27, 23, 0).astimezone()
    assert parse_not_before("01:30", now=now) == (now + timedelta(days=1)).replace(hour=1, minute=30)
    assert parse_not_before("23:30", now=now) == now.replace(minute=30)
    with pytest.raises(BadOption):
        parse_not_before("25:00", now=now)


def test_the_running_line_shows_its_progress_bar():
    from rich.console import Console

    from mtld.cli.render import running_line

    console = Console(width=200, record=True)
    console.print(running_line({"id": 3, "name": "demo", "progress": {
        "step": 150, "total": 300, "micro_batch": 4, "samples_per_s": 310.5, "eta_s": 75}}))
    text = console.export_text()
    assert "[############------------] 150/300 steps" in text and "ETA 1m15s" in text  # the bar is text, not markup


@pytest.mark.slow
def test_estimate_probe_prints_the_table_and_json_carries_the_same_figures(home, jobs):
    from mtld.cli.render import duration_text

    task = jobs.task("classification", 48, n_eval=8)
    lines = ['name = "probe"', f"model = {json.dumps(str(jobs.model))}", "max_length = 64", "[[tasks]]"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in task.items()]
    lines += ["[train]", "epochs = 1", "effective_batch_size = 8"]
    path = jobs.base / "probe.toml"
    path.write_text("\n".join(lines) + "\n")

    code, stdout, stderr = mtld("estimate", str(path), "--probe", "--json")
    assert code == 0 and "probing probe" in stderr
    rows = json.loads(stdout)["rows"]
    assert [r["micro_batch"] for r in rows] == [2, 4, 8]
    assert all(r["basis"] == "probe" and r["seconds"] > 0 and r["peak_bytes"] > 0 for r in rows)
    assert sum(r["chosen"] for r in rows) == 1
    assert json.loads(stdout)["compile"]["compile"] is False  # no compiled run in the family: the default, no faster

    code, text, _ = mtld("estimate", str(path))  # the stored probe is now the family's history
    assert code == 0
    for r in rows:
        mark = "  <- mtld would choose this" if r["chosen"] else ""
        # --json rounds seconds to 0.1, the table rounds the exact figure to whole seconds
        assert any(f"{r['micro_batch']:>4}  {duration_text(r['seconds'] + d):>9}" in text for d in (-0.05, 0.0, 0.05))
        assert f"  probe{mark}\n" in text + "\n"
    assert "\ntorch.compile: no (auto: compiled steps were no faster (0.89x, bench/compile.md" in text


# ---------------------------------------------------------------- issue 22: macOS privacy at submit

FRAMEWORK = "/Library/Frameworks/Python.framework/Versions/3.12"


def install_agent(mac_home: Path, python: str, env: dict[str, str] | None = None) -> None:
    """An installed LaunchAgent as `mtld agent install` writes it (its plist is all submit reads)."""
    from mtld.platform import launchd

    plist = launchd.plist_path(mac_home)
    plist.parent.mkdir(parents=True, exist_ok=True)
    plist.write_bytes(launchd.render_plist([python, "-m", "mtld", "daemon"], {"PATH": "/usr/bin", **(env or {})},
                                           mac_home / "Library/Logs/mtld", 30))


def spec_reading(model: str, *data: str, output: str | None = None):
    from mtld.config.jobspec import JobSpec

    return JobSpec.model_validate({"name": "j", "model": model, "output": output, "tasks": [
        {"name": f"t{i}", "type": "classification", "train": path} for i, path in enumerate(data)]})


# (case, the agent's python under the home ("@HOME/") or absolute, what it links to, the agent's extra
#  environment, the job's model, data and output, the warnings' starts, the binary to grant)
SUBMIT_TCC = [
    ("venv in ~/Documents, python.org", "@HOME/Documents/p/.venv/bin/python", f"{FRAMEWORK}/bin/python3.12", {},
     "/models/bert", ["/data/t.jsonl"], None, ["the agent's Python environment (@HOME/Documents/p/.venv) is in ~/Documents"],
     f"{FRAMEWORK}/Resources/Python.app"),
    ("data on a USB stick", "/opt/venv/bin/python", "/opt/py/bin/python3.12", {}, "/models/bert",
     ["/Volumes/USB/t.jsonl", "/data/u.jsonl"], None,
     ["the job's data (/Volumes/USB/t.jsonl) is in /Volumes/USB (a removable or network volume)"],
     "/opt/py/bin/python3.12"),
    ("model in ~/Downloads, output on a NAS", "/opt/venv/bin/python", f"{FRAMEWORK}/bin/python3.12", {},
     "@HOME/Downloads/bert", ["/data/t.jsonl"], "/Volumes/nas/runs",
     ["the job's model (@HOME/Downloads/bert) is in ~/Downloads",
      "the job's output (/Volumes/nas/runs) is in /Volumes/nas (a removable or network volume)"],
     f"{FRAMEWORK}/Resources/Python.app"),
    ("the agent's HF_HOME in ~/Desktop", "/opt/venv/bin/python", "/opt/py/bin/python3.12", {"HF_HOME": "@HOME/Desktop/hf"},
     "/models/bert", ["/data/t.jsonl"], None, ["HF_HOME (@HOME/Desktop/hf) is in ~/Desktop"], "/opt/py/bin/python3.12"),
    ("nothing protected", "/opt/venv/bin/python", f"{FRAMEWORK}/bin/python3.12", {}, "/models/bert",
     ["/data/t.jsonl"], None, [], None),
]


@pytest.mark.parametrize(("python", "real", "env", "model", "data", "output", "warned", "grant"),
                         [c[1:] for c in SUBMIT_TCC], ids=[c[0] for c in SUBMIT_TCC])
def test_submit_checks_the_job_and_the_installed_agent_for_privacy_protection(tmp_path, python, real, env, model,
                                                                              data, output, warned, grant):
    from mtld.queue.jobs import agent_privacy_warnings

    mac = tmp_path / "ann"
    here = lambda text: text.replace("@HOME", str(mac))  # noqa: E731  (recorded paths under this test's home)
    install_agent(mac, here(python), {k: here(v) for k, v in env.items()})
    spec = spec_reading(here(model), *data, output=output)

    lines = agent_privacy_warnings(spec, platform="darwin", home=mac, resolve=lambda p: real if p == here(python) else p)

    assert [line.removeprefix("warning: ").split(", which macOS")[0] for line in lines[:-1]] == [here(w) for w in warned]
    if grant:
        assert f"add {grant} (press Cmd-Shift-G" in lines[-1]
    else:
        assert lines == []
    assert agent_privacy_warnings(spec, platform="linux", home=mac) == []  # no TCC there


def test_without_an_agent_submit_warns_about_nothing(tmp_path):
    from mtld.queue.jobs import agent_privacy_warnings

    spec = spec_reading("/models/bert", str(tmp_path / "Documents/t.jsonl"))
    assert agent_privacy_warnings(spec, platform="darwin", home=tmp_path) == []  # a Terminal's daemon has its grants


def test_submit_warns_logs_and_still_queues(home, tmp_path, capsys):
    from mtld.logs.events import configure
    from mtld.queue import jobs
    from mtld.store import Store

    mac = tmp_path / "ann"
    folder = mac / "Documents/job"
    folder.mkdir(parents=True)
    job = write_job(folder)
    install_agent(mac, "/opt/venv/bin/python")
    settings = load_settings()
    configure(settings.daemon_log)
    said: list[str] = []
    now = datetime.now(timezone.utc)
    with Store(settings.db_path) as store:
        made = jobs.submit(settings, store, job, now=now, platform="darwin", home=mac, warn=said.append)
        jobs.submit(settings, store, job, now=now, platform="darwin", home=mac)  # default: on stderr
        assert [j.id for j in store.list_jobs(["queued"])] == [made.id, made.id + 1]
    assert said[0] == (f"warning: the job's model ({folder / 'model'}) is in ~/Documents, which macOS hides from "
                       "agents unless allowed")
    assert len(said) == 5 and "Full Disk Access" in said[-1]  # model, three data files, then the advice
    assert capsys.readouterr().err == "".join(f"mtld: {line}\n" for line in said)
    [event, _] = [e for e in map(json.loads, settings.daemon_log.read_text().splitlines())
                  if e["event"] == "job.privacy_warning"]
    assert event["job_id"] == made.id and event["level"] == "warning"
    assert event["warnings"] == said[:-1] and event["advice"] == said[-1]


def test_an_unknown_mtld_variable_is_one_warning_line_and_an_event_and_changes_nothing(home, job_file, monkeypatch):
    """Issue 25, item 6: a typo in a setting was silent."""
    monkeypatch.setenv("MTLD_LOGLEVEL", "debug")  # MTLD_LOG_LEVEL
    monkeypatch.setenv("MTLD_DEAMON__NOTIFY", "false")  # MTLD_DAEMON__NOTIFY
    monkeypatch.setenv("MTLD_TEST_ANYTHING", "1")  # the test suite's own; MTLD_CONFIG is not a setting either
    code, stdout, stderr = mtld("submit", str(job_file))
    assert (code, stdout.strip()) == (0, "1")
    assert stderr == ("mtld: warning: MTLD_DEAMON__NOTIFY (did you mean MTLD_DAEMON__NOTIFY?), MTLD_LOGLEVEL (did you "
                      "mean MTLD_LOG_LEVEL?): not a setting; ignored\n")
    events = [json.loads(line) for line in (home / "logs" / "mtld.jsonl").read_text().splitlines()]
    warned = [(e["variable"], e["suggestion"]) for e in events if e["event"] == "settings.unknown_variable"]
    assert warned == [("MTLD_DEAMON__NOTIFY", "MTLD_DAEMON__NOTIFY"), ("MTLD_LOGLEVEL", "MTLD_LOG_LEVEL")]
    monkeypatch.delenv("MTLD_LOGLEVEL")
    monkeypatch.delenv("MTLD_DEAMON__NOTIFY")
    assert mtld("status")[2] == ""
