"""Log lines stay whole whatever their length, the daemon log rotates, and its readers follow."""

from __future__ import annotations

import json
import os
import threading
import time
import types
from pathlib import Path

import pytest
from typer.testing import CliRunner

import mtld.logs.events
from mtld.logs.events import AppendWriter, follow_files, read_events, tail_events
from tests.conftest import fill, open_under


def event(n: int, size: int = 0, **fields) -> str:
    return json.dumps({"ts": mtld.logs.events.iso(1_700_000_002.0001 + n / 1000), "event": "x", "n": n, "pad": "é" * size, **fields},
                      ensure_ascii=False)


def parsed(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_bytes().split(b"\n") if line]  # every line, or it raises


def test_a_100_kb_event_is_one_whole_line_even_when_the_kernel_takes_part_of_it(tmp_path, monkeypatch):
    """A write(2) may take part of a line (a full disk, a signal): the writer goes on with the rest."""
    calls = []

    def short_write(fd: int, data: bytes) -> int:
        calls.append(len(data))
        return os.write(fd, data[:4096])

    monkeypatch.setattr(mtld.logs.events, "os", types.SimpleNamespace(**{**vars(os), "write": short_write}))
    writer = AppendWriter(tmp_path / "run.jsonl")
    for n in range(3):
        writer.msg(event(n, size=50_000))  # 100 KB of UTF-8
    assert [e["n"] for e in parsed(tmp_path / "run.jsonl")] == [0, 1, 2]
    assert len(calls) > 3 * 24


def test_a_line_the_disk_cannot_hold_is_taken_back_and_the_next_ones_are_whole(small_fs):
    folder = small_fs("1m")
    writer = AppendWriter(folder / "run.jsonl")
    writer.msg(event(0))
    filler = fill(folder, leave=8192)
    writer.msg(event(1, size=50_000))  # 100 KB: only part of it fits
    writer.msg(event(2))
    assert writer.dropped >= 1
    filler.unlink()
    writer.msg(event(3, size=50_000))
    lines = parsed(folder / "run.jsonl")
    assert [e["n"] for e in lines][0] == 0 and lines[-1]["n"] == 3 and 1 not in [e["n"] for e in lines]


def test_the_daemon_log_rotates_and_every_writer_and_reader_follows(tmp_path):
    from mtld.logs.files import rotate

    log = tmp_path / "mtld.jsonl"
    daemon, cli = AppendWriter(log), AppendWriter(log)
    for n in range(10):
        (daemon if n % 2 else cli).msg(event(n, job_id=1))
    assert rotate(log, max_bytes=100, keep=2)
    assert not rotate(log, max_bytes=100, keep=2)  # gone below the limit: nothing to do
    for n in range(10, 20):
        (daemon if n % 2 else cli).msg(event(n, job_id=1))  # both move to the new file
    assert [e["n"] for e in parsed(log)] == list(range(10, 20))
    rotate(log, max_bytes=100, keep=2)
    cli.msg(event(20, job_id=1))
    rotate(log, max_bytes=10, keep=2)  # a third rotation: the oldest file goes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mtld.jsonl.1", "mtld.jsonl.2"]
    daemon.msg(event(21, job_id=1))
    assert [e["n"] for e in read_events(log, match={"job_id": 1})] == list(range(10, 22))
    assert [e["n"] for e in tail_events(log, 3)] == [19, 20, 21]


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="reads /proc/self/fd")
def test_configuring_again_keeps_one_log_open_and_a_logger_bound_before_still_writes_whole_lines(tmp_path):
    from mtld.logs.events import configure, get_logger

    first, second = tmp_path / "a" / "mtld.jsonl", tmp_path / "b" / "mtld.jsonl"
    configure(first)
    early = get_logger(job_id=1)  # bound to the first file's writer
    for _ in range(20):  # a test process, or `mtld train` after the CLI's own: configured again and again
        configure(second)
        configure(first)
    assert open_under(tmp_path) == [str(first)]
    configure(second)
    assert open_under(tmp_path) == [str(second)]
    get_logger().info("to.second")
    early.info("to.first")  # its writer was closed: the line still goes, whole, to its own file
    assert [e["event"] for e in parsed(second)] == ["to.second"]
    assert [(e["event"], e["job_id"]) for e in parsed(first)] == [("to.first", 1)]
    assert open_under(tmp_path) == [str(second)]
    configure(None)
    assert open_under(tmp_path) == []


def test_following_reads_on_from_the_snapshot_across_a_rotation(tmp_path):
    from mtld.logs.files import rotate, snapshot

    log = tmp_path / "mtld.jsonl"
    writer = AppendWriter(log)
    writer.msg(event(0))
    end = snapshot(log)
    writer.msg(event(1))  # after the read, before following: must not be lost
    rotate(log, max_bytes=1, keep=3)
    writer.msg(event(2))
    seen = []
    for _, e in follow_files([log], start={log: end}, poll_s=0.01, stop=lambda: True):
        seen.append(e["n"])
    assert [e["n"] for e in read_events(log, end=end)] == [0] and seen == [1, 2]


# ------------------------------------------------------------------ mtld logs


@pytest.fixture
def cli_home(tmp_path, monkeypatch):
    from mtld.config.jobspec import JobSpec, spec_to_json
    from mtld.store import Store

    for name in [n for n in os.environ if n.startswith("MTLD_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("MTLD_HOME", str(tmp_path / "home"))
    spec = JobSpec.model_validate({"name": "job", "model": "org/bert", "tasks": [
        {"name": "t", "type": "classification", "train": "/t.jsonl"}]})
    with Store(tmp_path / "home" / "state.db") as store:
        job = store.submit(name="job", spec_json=spec_to_json(spec), job_file="/job.toml",
                           run_root=str(tmp_path / "home" / "runs"), now=1_700_000_000.0)
        store.start_run(job.id, micro_batch=2, now=1_700_000_001.0)
    run_log = Path(job.run_dir) / "run.jsonl"
    return types.SimpleNamespace(path=tmp_path / "home", job=job, run_log=run_log, writer=AppendWriter(run_log))


def test_logs_lines_prints_the_last_n_events(cli_home):
    from mtld.cli import app

    for n in range(30):
        cli_home.writer.msg(event(n, job_id=cli_home.job.id))
    done = CliRunner().invoke(app, ["logs", str(cli_home.job.id), "--lines", "5", "--json"])
    assert done.exit_code == 0, done.output
    assert [json.loads(line)["n"] for line in done.stdout.splitlines()] == [25, 26, 27, 28, 29]


def test_logs_follow_loses_no_line_written_between_reading_and_following(cli_home):
    """Lines keep coming while `mtld logs -f` reads what is there and starts following: each is printed once."""
    from mtld.cli import app
    from mtld.store import Store

    total = 3000
    for n in range(2000):
        cli_home.writer.msg(event(n, size=20, job_id=cli_home.job.id))

    def keep_writing() -> None:
        for n in range(2000, total):
            cli_home.writer.msg(event(n, size=20, job_id=cli_home.job.id))
            if n % 50 == 0:
                time.sleep(0.001)
        with Store(cli_home.path / "state.db") as store:  # the job ends: `-f` stops after a last read
            run = store.latest_run(cli_home.job.id)
            store.finish_run(run.id, outcome="succeeded", now=1_700_000_100.0)
            store.transition(cli_home.job.id, "succeeded", reason="done", now=1_700_000_100.0)

    writer = threading.Thread(target=keep_writing)
    writer.start()
    done = CliRunner().invoke(app, ["logs", str(cli_home.job.id), "-f", "--json"])
    writer.join()
    assert done.exit_code == 0, done.output
    assert [json.loads(line)["n"] for line in done.stdout.splitlines()] == list(range(total))


def test_log_timestamps_sort_as_the_times_do_even_on_a_whole_second():
    from datetime import datetime, timedelta, timezone

    from mtld.logs.events import utc_stamp

    whole = datetime(2026, 12, 1, 1, 30, tzinfo=timezone.utc)
    times = [whole - timedelta(microseconds=1), whole, whole + timedelta(microseconds=1)]
    stamps = [utc_stamp(t) for t in times]
    assert stamps[1] == "2026-12-01T01:30:00.000000Z"
    assert sorted(stamps) == stamps and len(set(map(len, stamps))) == 1
