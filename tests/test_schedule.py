"""Run windows and recurring jobs: pure tables, then the daemon's tick with an injected clock."""

from __future__ import annotations

import json
import signal
import sqlite3
from datetime import datetime
from pathlib import Path

import pytest

from mtld.config.jobspec import JobSpec, spec_to_json
from mtld.logs.events import configure
from mtld.config.calendar import ScheduleError, next_firing, parse_window
from mtld.decide.schedule import finish_time, firing, first_open, inside, next_opening, open_window
from mtld.config.settings import Settings
from mtld.store import Store
from mtld.testing import FakeExecutor
from tests.conftest import Home, finish, job_file, log_events


def at(text: str) -> datetime:
    """A local, aware time: 'Fri 2026-11-27 23:30'."""
    return datetime.strptime(text, "%a %Y-%m-%d %H:%M").astimezone()


NIGHTS = [parse_window("22:00-07:00")]
WEEKDAY_NIGHTS = [parse_window("mon-fri 22:00-07:00")]


@pytest.mark.parametrize(
    ("windows", "now", "expected"),
    [
        (NIGHTS, "Fri 2026-11-27 23:30", True),
        (NIGHTS, "Sat 2026-11-28 06:59", True),  # crossed midnight
        (NIGHTS, "Sat 2026-11-28 07:00", False),  # the end is not inside
        (NIGHTS, "Fri 2026-11-27 21:59", False),
        (NIGHTS, "Fri 2026-11-27 22:00", True),
        (WEEKDAY_NIGHTS, "Sat 2026-11-28 06:00", True),  # Friday's window runs into Saturday
        (WEEKDAY_NIGHTS, "Sat 2026-11-28 23:00", False),
        (WEEKDAY_NIGHTS, "Mon 2026-11-30 06:00", False),  # Sunday night has no window
        (WEEKDAY_NIGHTS, "Mon 2026-11-30 22:30", True),
        ([parse_window("sat,sun 09:00-18:00"), parse_window("wed 12:00-13:00")], "Wed 2026-11-25 12:30", True),
        ([parse_window("sat,sun 09:00-18:00")], "Sun 2026-11-29 17:59", True),
        ([parse_window("fri-mon 00:00-24:00")], "Sun 2026-11-29 03:00", True),
        ([parse_window("fri-mon 00:00-24:00")], "Tue 2026-12-01 03:00", False),
        ([], "Tue 2026-12-01 03:00", True),  # no windows: always
    ],
)
def test_inside(windows, now, expected):
    assert inside(windows, at(now)) is expected


@pytest.mark.parametrize(
    ("windows", "now", "opens"),
    [
        (NIGHTS, "Fri 2026-11-27 12:00", "Fri 2026-11-27 22:00"),
        (NIGHTS, "Fri 2026-11-27 23:00", "Sat 2026-11-28 22:00"),
        (WEEKDAY_NIGHTS, "Sat 2026-11-28 08:00", "Mon 2026-11-30 22:00"),
        ([parse_window("sun 09:00-10:00")], "Sun 2026-11-29 09:30", "Sun 2026-12-06 09:00"),
    ],
)
def test_next_opening(windows, now, opens):
    assert next_opening(windows, at(now)) == at(opens)


def test_open_window_says_when_it_closes():
    assert open_window(NIGHTS, at("Sat 2026-11-28 01:00")) == (at("Fri 2026-11-27 22:00"), at("Sat 2026-11-28 07:00"))


@pytest.mark.parametrize("text", ["22-07", "25:00-07:00", "22:00-22:00", "funday 22:00-07:00", "mon-xyz 1:00-2:00", ""])
def test_bad_windows(text):
    with pytest.raises(ScheduleError):
        parse_window(text)


@pytest.mark.parametrize(
    ("windows", "start", "hours", "at_window_end", "finish"),
    [
        ([], "Fri 2026-11-27 15:00", 3, "checkpoint", "Fri 2026-11-27 18:00"),
        (NIGHTS, "Fri 2026-11-27 23:00", 3, "checkpoint", "Sat 2026-11-28 02:00"),
        (NIGHTS, "Sat 2026-11-28 05:00", 3, "finish", "Sat 2026-11-28 08:00"),  # runs on past the window
        (NIGHTS, "Sat 2026-11-28 05:00", 3, "checkpoint", "Sat 2026-11-28 23:00"),  # 2 h, then 1 h the next night
        (NIGHTS, "Fri 2026-11-27 22:00", 20, "checkpoint", "Mon 2026-11-30 00:00"),  # 9 h + 9 h + 2 h
        (WEEKDAY_NIGHTS, "Sat 2026-11-28 06:00", 2, "checkpoint", "Mon 2026-11-30 23:00"),  # no weekend nights
    ],
)
def test_finish_time_pauses_between_windows(windows, start, hours, at_window_end, finish):
    assert finish_time(windows, at(start), hours * 3600, at_window_end) == at(finish)


def test_first_open():
    assert first_open(NIGHTS, at("Fri 2026-11-27 23:00")) == at("Fri 2026-11-27 23:00")
    assert first_open(NIGHTS, at("Fri 2026-11-27 12:00")) == at("Fri 2026-11-27 22:00")
    assert first_open([], at("Fri 2026-11-27 12:00")) == at("Fri 2026-11-27 12:00")


def test_a_schedule_fires_when_due_and_not_before():
    due = at("Sat 2026-11-28 01:00")
    assert firing("0 1 * * *", due, at("Sat 2026-11-28 00:59")) == (False, due)
    assert firing("0 1 * * *", due, at("Sat 2026-11-28 01:00")) == (True, at("Sun 2026-11-29 01:00"))


def test_three_missed_nights_fire_once():
    due = at("Wed 2026-11-25 01:00")
    fire, following = firing("0 1 * * *", due, at("Sat 2026-11-28 08:00"))
    assert fire and following == at("Sun 2026-11-29 01:00")
    assert firing("0 1 * * *", following, at("Sat 2026-11-28 08:00")) == (False, following)


def test_next_firing_and_bad_cron():
    assert next_firing("*/15 * * * *", at("Fri 2026-11-27 10:07")) == at("Fri 2026-11-27 10:15")
    with pytest.raises(ScheduleError, match="cron"):
        next_firing("0 1 * *", at("Fri 2026-11-27 10:07"))


# ------------------------------------------------------------------ the daemon's tick, clock injected


def make_daemon(tmp_path, monkeypatch, **schedule):
    from mtld.daemon.loop import Daemon

    for name in [n for n in __import__("os").environ if n.startswith("MTLD_")]:
        monkeypatch.delenv(name)
    settings = Settings(home=tmp_path / "home", schedule=schedule, daemon={"prevent_sleep": False, "notify": False},
                        memory={"probe": "simulated", "simulated_file": str(tmp_path / "pressure")},
                        train={"device": "cpu"})
    configure(settings.daemon_log)
    store = Store(settings.db_path)
    executor = FakeExecutor()
    return Daemon(settings, store, executor=executor), store, executor, settings


SPEC = JobSpec.model_validate({"name": "nightly", "model": "/models/bert", "tasks": [
    {"name": "t", "type": "classification", "train": "/data/t.jsonl"}]})


def submit(store: Store, settings: Settings, now: datetime):
    return store.submit(name="nightly", spec_json=spec_to_json(SPEC), job_file="/jobs/nightly.toml",
                        run_root=str(settings.local_runs_dir), now=now.timestamp())


def events(settings: Settings, name: str) -> list[dict]:
    return log_events(settings.daemon_log, name)


@pytest.mark.parametrize(("at_window_end", "interrupted"), [("checkpoint", True), ("finish", False)])
def test_a_run_reaching_the_window_end(tmp_path, monkeypatch, at_window_end, interrupted):
    daemon, store, executor, settings = make_daemon(tmp_path, monkeypatch, windows=["22:00-07:00"],
                                                    at_window_end=at_window_end)
    job = submit(store, settings, at("Fri 2026-11-27 20:00"))
    daemon.tick(now=at("Fri 2026-11-27 21:00").timestamp())
    assert executor.runs == []
    [deferred] = events(settings, "run.deferred")
    assert deferred["reason"] == "outside_window"
    daemon.tick(now=at("Fri 2026-11-27 21:30").timestamp())
    assert len(events(settings, "run.deferred")) == 1  # logged when it changes, not every tick

    daemon.tick(now=at("Fri 2026-11-27 22:00").timestamp())
    [child] = executor.runs
    daemon.tick(now=at("Sat 2026-11-28 06:59").timestamp())
    assert child.signals == []
    daemon.tick(now=at("Sat 2026-11-28 07:00").timestamp())
    if interrupted:
        assert child.signals == [signal.SIGTERM]
        daemon.tick(now=at("Sat 2026-11-28 07:00").timestamp() + 1)
        assert store.get(job.id).state == "queued"
        [stopped] = events(settings, "run.interrupted")
        assert stopped["reason"] == "window_end"
        daemon.tick(now=at("Sat 2026-11-28 12:00").timestamp())
        assert len(executor.runs) == 1  # waits for the next window
        daemon.tick(now=at("Sat 2026-11-28 22:01").timestamp())
        assert len(executor.runs) == 2
    else:
        assert child.signals == [] and store.get(job.id).state == "running"
        child.end(0)
        daemon.tick(now=at("Sat 2026-11-28 08:00").timestamp())
        assert store.get(job.id).state == "succeeded"


def test_a_schedule_fires_into_a_dated_job_and_missed_nights_fire_once(tmp_path, monkeypatch):
    daemon, store, executor, settings = make_daemon(tmp_path, monkeypatch)
    added = at("Mon 2026-11-23 12:00")
    schedule = store.add_schedule(name="nightly", cron="0 1 * * *", spec_json=spec_to_json(SPEC),
                                  job_file="/jobs/nightly.toml", run_root=str(settings.local_runs_dir),
                                  next_fire_at=next_firing("0 1 * * *", added).timestamp(), now=added.timestamp())
    daemon.tick(now=at("Tue 2026-11-24 00:59").timestamp())
    assert store.list_jobs() == []
    daemon.tick(now=at("Tue 2026-11-24 01:00").timestamp())
    [first] = store.list_jobs()
    assert first.name == "nightly-20261124-0100" and first.run_dir.endswith(f"/{first.id}-nightly-20261124-0100")
    executor.runs[0].end(0)

    # The machine sleeps from Tuesday to Saturday morning: three nights missed, one run.
    daemon.tick(now=at("Sat 2026-11-28 08:00").timestamp())
    jobs = store.list_jobs()
    assert [j.name for j in jobs] == ["nightly-20261124-0100", "nightly-20261125-0100"]
    fired = events(settings, "schedule.fired")
    assert [e["missed"] for e in fired] == [False, True]
    assert store.get_schedule(schedule.id).next_fire_at == at("Sun 2026-11-29 01:00").timestamp()
    daemon.tick(now=at("Sat 2026-11-28 08:01").timestamp())
    assert len(store.list_jobs()) == 2


# ------------------------------------------------------------------ for real


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_job_recurring_every_minute_runs_twice_into_two_folders(tmp_path, data_dir):
    """A real daemon: a firing missed while no daemon ran fires at once, the next one on the minute."""
    home = Home(tmp_path / "home")
    made = home.mtld("submit", str(job_file(data_dir, name="minutely")), "--every", "* * * * *", "--json")
    schedule = json.loads(made.stdout)
    assert schedule["cron"] == "* * * * *" and json.loads(home.mtld("schedules", "--json").stdout)[0]["id"] == schedule["id"]
    db = sqlite3.connect(home.path / "state.db")  # as if the machine had slept through its last firings
    with db:
        db.execute("UPDATE schedules SET next_fire_at = next_fire_at - 180 WHERE id = ?", (schedule["id"],))
    db.close()

    def succeeded() -> list:
        with home.store() as store:
            return [j for j in store.list_jobs() if j.state == "succeeded"]

    daemon = home.daemon()
    try:
        done = home.wait_for(lambda: len(succeeded()) >= 2 and succeeded(), timeout=200, poll=1)
        home.mtld("unschedule", str(schedule["id"]))
        daemon.terminate()
        assert finish(daemon)[0] == 0
    finally:  # a failed wait must not leave a daemon training next to the other tests
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
    first, second = done[:2]
    assert first.run_dir != second.run_dir and all((Path(j.run_dir) / "model").is_dir() for j in (first, second))
    assert first.name.startswith("minutely-") and first.name != second.name
    fired = home.daemon_events("schedule.fired")
    assert [(e["schedule_id"], e["missed"]) for e in fired[:2]] == [(schedule["id"], True), (schedule["id"], False)]
    assert json.loads(home.mtld("schedules", "--json").stdout) == []
