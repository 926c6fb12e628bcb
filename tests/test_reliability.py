"""Reliability under races and damage: `mtld clean` against `mtld retry` on a real SQLite file, a damaged or
empty store refused in one line, a daemon whose ticks keep failing that stops instead of spinning, and held
jobs that do not keep `--exit-when-idle` waiting."""

from __future__ import annotations

import os
import sqlite3
import threading
from collections import Counter
from pathlib import Path

import pytest

from mtld.config.jobspec import JobSpec, spec_to_json
from mtld.config.settings import Settings
from mtld.queue.cleanup import clean
from mtld.runs.rundir import RunDir
from mtld.store import InvalidTransition, Store
from tests.conftest import run_cli

T0 = 1_790_000_000.0
SPEC = JobSpec.model_validate({"name": "j", "model": "/models/bert", "tasks": [
    {"name": "t", "type": "classification", "train": "/data/t.jsonl"}]})


def failed_job_with_a_checkpoint(settings: Settings, store: Store, n: int) -> tuple[int, Path]:
    job = store.submit(name=f"j{n}", spec_json=spec_to_json(SPEC), job_file="/jobs/j.toml",
                       run_root=str(settings.local_runs_dir), now=T0)
    run = store.start_run(job.id, micro_batch=4, now=T0 + 1)
    rd = RunDir(job.run_dir)
    rd.claim({"job_id": job.id, "store": str(settings.db_path)})
    rd.checkpoints.mkdir()
    checkpoint = rd.checkpoints / "step-00000010.pt"
    checkpoint.write_bytes(os.urandom(200_000))
    store.finish_run(run.id, outcome="crashed", exit_code=1, now=T0 + 2)
    store.transition(job.id, "failed", reason="crashed", now=T0 + 2, last_error="crashed")
    return job.id, checkpoint


def test_clean_racing_retry_never_leaves_a_queued_job_without_its_checkpoints(tmp_path):
    """Issue 25, item 1: each of 60 rounds runs `clean` and `retry` at once on one job (two connections to
    one file, as two processes have). Whoever wins, the job is whole: queued with its checkpoint, or removed
    with its folder; never queued with its checkpoints gone, and neither side fails other than in one line."""
    settings = Settings(home=tmp_path / "home")
    winners: Counter[str] = Counter()
    for n in range(60):
        with Store(settings.db_path) as store:
            job_id, checkpoint = failed_job_with_a_checkpoint(settings, store, n)
        start = threading.Barrier(2)
        errors: list[BaseException] = []

        def cleaner() -> None:
            with Store(settings.db_path) as store:
                start.wait()
                clean(settings, store, now=T0 + 10)

        def retrier() -> None:
            with Store(settings.db_path) as store:
                start.wait()
                try:
                    store.retry(job_id, now=T0 + 10)
                except InvalidTransition as e:  # refused, in one line: being cleaned, or removed
                    assert "being cleaned" in str(e) or "removed" in str(e) or "cannot retry" in str(e)

        def guarded(target):
            def run() -> None:
                try:
                    target()
                except BaseException as e:  # noqa: BLE001 - reported below
                    errors.append(e)
            return run

        threads = [threading.Thread(target=guarded(cleaner)), threading.Thread(target=guarded(retrier))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert errors == []
        with Store(settings.db_path) as store:
            job = store.get(job_id)
            if job.state == "queued":
                assert checkpoint.exists() and job.removed_at is None and job.cleaning_at is None
                winners["retry"] += 1
                store.cancel(job_id, now=T0 + 20)  # out of the way of the next round's clean
            else:
                assert job.removed_at is not None and not checkpoint.parent.exists()
                winners["clean"] += 1
    assert sum(winners.values()) == 60


def test_a_retry_while_a_clean_holds_the_job_is_refused_in_one_line(tmp_path):
    settings = Settings(home=tmp_path / "home")
    with Store(settings.db_path) as store:
        job_id, checkpoint = failed_job_with_a_checkpoint(settings, store, 0)
        store.claim_cleaning(job_id, now=T0 + 5)  # a clean that is deleting (or died deleting)
        with pytest.raises(InvalidTransition, match="is being cleaned"):
            store.retry(job_id, now=T0 + 6)
        done = clean(settings, store, now=T0 + 7)  # the next clean finishes it
        assert done["jobs"] == 1 and store.get(job_id).removed_at == T0 + 7 and store.get(job_id).cleaning_at is None


# ------------------------------------------------------------------ a damaged store (issue 25, item 3)


def damage(path: Path, how: str) -> None:
    if how == "pages":  # pages overwritten inside the file (their b-tree headers), past the file's own header
        with path.open("r+b") as f:
            for page in range(1, 6):
                f.seek(4096 * page)
                f.write(b"\xff" * 600)
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "truncated":
        with path.open("r+b") as f:
            f.truncate(4096 + 512)


@pytest.fixture
def populated(tmp_path, monkeypatch):
    """A store with a few jobs (enough pages to damage), no daemon, the daemon's backup taken."""
    for name in [n for n in os.environ if n.startswith("MTLD_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("MTLD_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MTLD_DAEMON__NOTIFY", "false")
    settings = Settings()
    with Store(settings.db_path) as store:
        for n in range(40):
            job = store.submit(name=f"j{n}", spec_json=spec_to_json(SPEC) + " " * 2000, job_file="/jobs/j.toml",
                               run_root=str(settings.local_runs_dir), now=T0)
            store.cancel(job.id, now=T0)
        backup = store.db.backup()
        store.db.connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # everything in the main file
    return settings, backup


@pytest.mark.parametrize("how", ["pages", "empty", "truncated"])
def test_a_damaged_store_is_refused_in_one_line_by_status_submit_and_the_daemon(populated, how, tmp_path):
    from tests.conftest import write_job

    settings, backup = populated
    assert backup.is_file() and (backup.stat().st_mode & 0o777) == 0o600
    damage(settings.db_path, how)
    job = write_job(tmp_path)
    for argv in (["status"], ["submit", str(job)], ["daemon", "--exit-when-idle", "--quiet"]):
        code, out, err = run_cli(*argv)
        assert (code, out) == (2, ""), (argv, err)
        assert err.count("\n") == 1 and err.startswith(f"{settings.db_path}: the job store is damaged (")
        assert "the daemon's backup from " in err and str(backup) in err
    with sqlite3.connect(backup) as copy:  # the backup is whole: 40 jobs
        assert copy.execute("SELECT COUNT(*) FROM jobs").fetchone()[0] == 40


def test_a_store_created_by_two_openers_at_once_is_never_taken_for_damaged(tmp_path):
    path = tmp_path / "state.db"
    opened: list[BaseException | None] = []
    start = threading.Barrier(4)

    def open_it() -> None:
        start.wait()
        try:
            Store(path).close()
            opened.append(None)
        except BaseException as e:  # noqa: BLE001 - reported below
            opened.append(e)

    threads = [threading.Thread(target=open_it) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert opened == [None] * 4


def test_a_daemon_whose_ticks_keep_failing_stops_with_status_1_instead_of_spinning(tmp_path, monkeypatch):
    from mtld.daemon import loop
    from mtld.logs.events import configure
    from mtld.testing import FakeExecutor, FaultyStore, ScriptedProbe
    from tests.conftest import log_events

    for name in [n for n in os.environ if n.startswith("MTLD_")]:
        monkeypatch.delenv(name)
    settings = Settings(home=tmp_path / "home", daemon={"notify": False, "prevent_sleep": False,
                                                         "poll_interval_s": 0.01})
    configure(settings.daemon_log)
    with Store(settings.db_path) as real:
        store = FaultyStore(real).fail("list_schedules", sqlite3.DatabaseError("database disk image is malformed"),
                                       times=1000)
        daemon = loop.Daemon(settings, store, executor=FakeExecutor(), probe=ScriptedProbe(["normal"]))
        assert daemon.run() == 1
    failed = log_events(settings.daemon_log, "daemon.tick_failed")
    assert len(failed) == loop.MAX_FAILED_TICKS and failed[-1]["in_a_row"] == loop.MAX_FAILED_TICKS
    [gave_up] = log_events(settings.daemon_log, "daemon.giving_up")
    assert "malformed" in gave_up["error"]


def test_exit_when_idle_does_not_wait_for_a_job_on_hold(tmp_path, monkeypatch):
    """Issue 25, item 4: a held job waits for a condition or a person; `--exit-when-idle` (the demo, scripts)
    ends once nothing else could start."""
    from mtld.daemon.loop import Daemon
    from mtld.logs.events import configure
    from mtld.testing import FakeExecutor, ScriptedProbe

    for name in [n for n in os.environ if n.startswith("MTLD_")]:
        monkeypatch.delenv(name)
    settings = Settings(home=tmp_path / "home", daemon={"notify": False, "prevent_sleep": False})
    configure(settings.daemon_log)
    with Store(settings.db_path) as store:
        held = store.submit(name="held", spec_json=spec_to_json(SPEC), job_file="/j.toml",
                            run_root=str(settings.local_runs_dir), now=T0)
        store.set_hold(held.id, "memory pressure: 3 interrupts in 20 min — `mtld retry 1` to release", now=T0)
        daemon = Daemon(settings, store, executor=FakeExecutor(), probe=ScriptedProbe(["normal"]), clock=lambda: T0,
                        exit_when_idle=True)
        daemon.tick(T0)
        assert daemon.finished and store.get(held.id).state == "queued"  # still there, still held
        waiting = store.submit(name="waiting", spec_json=spec_to_json(SPEC), job_file="/j.toml",
                               run_root=str(settings.local_runs_dir), now=T0, not_before=T0 + 3600)
        again = Daemon(settings, store, executor=FakeExecutor(), probe=ScriptedProbe(["normal"]), clock=lambda: T0,
                       exit_when_idle=True)
        again.tick(T0)
        assert not again.finished and store.get(waiting.id).state == "queued"  # a job that will start: wait for it


def test_an_exit_the_store_could_not_record_is_settled_by_what_was_seen_not_as_lost(tmp_path, monkeypatch):
    """Issue 25, item 4: with the store's disk full, a run's disk-full exit could not be written; the next
    tick found no result.json and called the run lost. The exit the daemon saw decides instead."""
    from mtld.daemon.loop import Daemon
    from mtld.logs.events import configure
    from mtld.testing import FakeExecutor, FaultyStore, ScriptedProbe

    for name in [n for n in os.environ if n.startswith("MTLD_")]:
        monkeypatch.delenv(name)
    settings = Settings(home=tmp_path / "home", daemon={"notify": False, "prevent_sleep": False})
    configure(settings.daemon_log)
    with Store(settings.db_path) as real:
        job = real.submit(name="j", spec_json=spec_to_json(SPEC), job_file="/j.toml",
                          run_root=str(settings.local_runs_dir), now=T0)
        store = FaultyStore(real)
        executor = FakeExecutor()
        daemon = Daemon(settings, store, executor=executor, probe=ScriptedProbe(["normal"]), clock=lambda: T0)
        daemon.tick(T0)
        store.fail("finish_run", sqlite3.OperationalError("database or disk is full"), times=1)
        executor.runs[0].end(74)  # disk full, and it could not even write its result.json
        daemon.tick(T0 + 1)
        run = real.runs_for(job.id)[0]
        assert store.failed == ["finish_run"] and run.outcome == "disk_full" and run.exit_code == 74
        assert real.get(job.id).hold.startswith("disk full: ")


def test_a_retried_job_has_its_attempts_again_and_a_poll_that_fails_is_that_runs_problem(tmp_path, monkeypatch):
    """`mtld retry` says the attempts start again: failures from before it no longer count against
    daemon.max_attempts. And an executor whose poll raises costs that run a log line, not the tick."""
    from mtld.daemon.loop import Daemon
    from mtld.logs.events import configure
    from mtld.testing import FakeExecutor, ScriptedProbe
    from tests.conftest import log_events

    for name in [n for n in os.environ if n.startswith("MTLD_")]:
        monkeypatch.delenv(name)
    settings = Settings(home=tmp_path / "home", daemon={"notify": False, "prevent_sleep": False, "max_attempts": 2,
                                                        "retry_backoff_s": 0})
    configure(settings.daemon_log)
    with Store(settings.db_path) as store:
        job = store.submit(name="j", spec_json=spec_to_json(SPEC), job_file="/j.toml",
                           run_root=str(settings.local_runs_dir), now=T0)
        executor = FakeExecutor()
        daemon = Daemon(settings, store, executor=executor, probe=ScriptedProbe(["normal"]), clock=lambda: T0)
        for n in range(2):  # two crashes: gave up
            daemon.tick(T0 + 10 * n)
            executor.runs[-1].end(1)
            daemon.tick(T0 + 10 * n + 1)
        assert store.get(job.id).state == "failed"
        store.retry(job.id, now=T0 + 30)
        daemon.tick(T0 + 31)
        executor.runs[-1].end(1)
        daemon.tick(T0 + 32)
        assert store.get(job.id).state == "running" and len(executor.runs) == 4  # one failure since: again

        daemon.tick(T0 + 40)
        broken = executor.runs[-1]
        broken.poll = lambda: 1 / 0  # type: ignore[method-assign]
        daemon.tick(T0 + 41)
        daemon.tick(T0 + 42)
        assert [e["error"] for e in log_events(settings.daemon_log, "run.poll_failed")] == [
            "ZeroDivisionError: division by zero"]  # once, and the ticks went on
        assert not log_events(settings.daemon_log, "daemon.tick_failed")
