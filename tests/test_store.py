"""The store: jobs, runs, transitions and flags in one SQLite file shared by processes."""

from __future__ import annotations

import json
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from mtld import store as store_module
from mtld.store import InvalidTransition, Store, UnknownJob, UnknownRun
from tests.conftest import REPO, child_env

STATES = ("queued", "running", "succeeded", "failed", "cancelled")
# Written out here, not imported: the test must disagree with the code when the code is wrong.
ALLOWED = {
    ("queued", "running"),
    ("queued", "cancelled"),
    ("queued", "failed"),  # the daemon could not start it as stored
    ("running", "succeeded"),
    ("running", "failed"),
    ("running", "cancelled"),
    ("running", "queued"),
    ("failed", "queued"),
    ("cancelled", "queued"),
}


@pytest.fixture
def db(tmp_path):
    with Store(tmp_path / "state" / "state.db") as s:
        yield s


def submit(s: Store, name: str = "job", *, now: float = 100.0, **kw):
    return s.submit(name=name, spec_json=kw.pop("spec_json", '{"name": "%s"}' % name), job_file=f"/jobs/{name}.toml",
                    run_root="/runs", now=now, **kw)


def job_in_state(s: Store, state: str, now: float = 100.0):
    """A job brought to `state` through the public API only."""
    job = submit(s, now=now)
    if state == "cancelled":
        return s.cancel(job.id, now=now + 1)
    if state != "queued":
        s.start_run(job.id, micro_batch=4, now=now + 1)
    if state in ("succeeded", "failed"):
        s.transition(job.id, state, reason="run ended", now=now + 2)
    return s.get(job.id)


# -- submit / read ----------------------------------------------------------------------------


def test_submit_then_get_returns_what_was_given(db):
    spec = '{"name": "ner", "max_length": 192}'
    job = db.submit(name="ner", spec_json=spec, job_file="/home/u/ner.toml", priority=5, not_before=500.0,
                    batch_size=4, run_root="/state/runs", now=123.5)
    assert db.get(job.id) == job
    assert (job.name, job.state, job.priority, job.not_before, job.batch_size) == ("ner", "queued", 5, 500.0, "4")
    assert (job.submitted_at, job.updated_at, job.finished_at) == (123.5, 123.5, None)
    assert job.spec_json == spec and job.job_file == "/home/u/ner.toml"
    assert job.run_dir == f"/state/runs/{job.id}-ner"
    assert (job.attempts, job.next_attempt_at, job.cancel_requested, job.last_error) == (0, None, False, None)
    assert [(t.from_state, t.to_state, t.at, t.reason) for t in db.transitions_for(job.id)] == [
        (None, "queued", 123.5, "submitted")
    ]


def test_ids_increase_and_are_not_reused_after_the_last_row_goes(db, tmp_path):
    ids = [submit(db, f"j{i}").id for i in range(3)]
    assert ids == sorted(set(ids))
    assert [db.get(i).run_dir for i in ids] == [f"/runs/{i}-j{n}" for n, i in enumerate(ids)]
    raw = sqlite3.connect(db.path)  # simulate someone pruning old rows
    with raw:
        raw.execute("DELETE FROM transitions")
        raw.execute("DELETE FROM jobs WHERE id = ?", (ids[-1],))
    raw.close()
    assert submit(db, "later").id > ids[-1]


def test_get_unknown_is_none_and_moves_on_unknown_raise(db):
    assert db.get(42) is None
    with pytest.raises(UnknownJob, match="^no job 42$"):
        db.cancel(42, now=1.0)
    with pytest.raises(UnknownRun, match="^no run 7$"):
        db.finish_run(7, outcome="succeeded", now=1.0)


@pytest.mark.parametrize("bad", [{"batch_size": "16"}, {"batch_size": 3}, {"name": "../etc"}, {"name": ""}])
def test_submit_refuses_bad_values_and_queues_nothing(db, bad):
    kw = {"name": "ok", "batch_size": "auto"} | bad
    with pytest.raises(ValueError):
        db.submit(name=kw["name"], spec_json="{}", job_file="f", run_root="/r", batch_size=kw["batch_size"], now=1.0)
    assert db.list_jobs() == []


def test_list_jobs_and_counts_by_state(db):
    queued, running, failed = (job_in_state(db, s) for s in ("queued", "running", "failed"))
    assert [j.id for j in db.list_jobs()] == [queued.id, running.id, failed.id]
    assert [j.id for j in db.list_jobs(["failed", "queued"])] == [queued.id, failed.id]
    assert db.counts() == {"queued": 1, "running": 1, "succeeded": 0, "failed": 1, "cancelled": 0}
    with pytest.raises(ValueError, match="done"):
        db.list_jobs(["done"])


def test_to_dict_is_plain_json(db):
    job = job_in_state(db, "running")
    run = db.finish_run(db.latest_run(job.id).id, outcome="succeeded", figures={"peak_bytes": 3 << 30}, now=200.0)
    for record in (db.get(job.id), run, db.transitions_for(job.id)[-1]):
        assert json.loads(json.dumps(record.to_dict())) == record.to_dict()
    assert db.get(job.id).to_dict()["cancel_requested"] is False
    assert run.to_dict()["figures"] == {"peak_bytes": 3 << 30}


# -- transitions ------------------------------------------------------------------------------


@pytest.mark.parametrize("to_state", STATES)
@pytest.mark.parametrize("from_state", STATES)
def test_transition_table(db, from_state, to_state):
    job = job_in_state(db, from_state)
    history = db.transitions_for(job.id)

    def move():
        if to_state == "running":
            db.start_run(job.id, micro_batch=2, now=300.0)
            return db.get(job.id)
        return db.transition(job.id, to_state, reason="because", now=300.0)

    if (from_state, to_state) in ALLOWED:
        moved = move()
        assert (moved.state, moved.updated_at) == (to_state, 300.0)
        assert moved.finished_at == (300.0 if to_state in ("succeeded", "failed", "cancelled") else None)
        last = db.transitions_for(job.id)[-1]
        assert (last.from_state, last.to_state, last.at) == (from_state, to_state, 300.0)
    else:
        with pytest.raises(InvalidTransition, match=f"^job {job.id} is {from_state}; cannot "):
            move()
        assert db.get(job.id) == job
        assert db.transitions_for(job.id) == history


def test_transition_sets_error_and_backoff_as_given(db):
    job = job_in_state(db, "running")
    requeued = db.transition(job.id, "queued", reason="out of memory", last_error="OOM at micro-batch 2",
                             next_attempt_at=900.0, now=300.0)
    assert (requeued.last_error, requeued.next_attempt_at, requeued.attempts) == ("OOM at micro-batch 2", 900.0, 1)
    assert db.transitions_for(job.id)[-1].reason == "out of memory"


def test_transition_refuses_running_and_unknown_states(db):
    job = submit(db)
    with pytest.raises(ValueError, match="start_run"):
        db.transition(job.id, "running", reason="x", now=1.0)
    with pytest.raises(ValueError, match="done"):
        db.transition(job.id, "done", reason="x", now=1.0)
    assert db.get(job.id) == job


# -- next_eligible ----------------------------------------------------------------------------


def test_next_eligible_prefers_priority_then_age_then_id(db):
    old_low = submit(db, "old-low", now=10.0)
    young_high = submit(db, "young-high", priority=5, now=30.0)
    old_high = submit(db, "old-high", priority=5, now=20.0)
    twin = submit(db, "twin", priority=5, now=20.0)
    order = []
    while (job := db.next_eligible(now=100.0)) is not None:
        order.append(job.id)
        db.start_run(job.id, micro_batch=2, now=100.0)
    assert order == [old_high.id, twin.id, young_high.id, old_low.id]


def test_next_eligible_waits_for_not_before(db):
    later = submit(db, "later", priority=9, not_before=1000.0, now=10.0)
    now_job = submit(db, "now", now=20.0)
    assert db.next_eligible(now=999.0).id == now_job.id
    db.cancel(now_job.id, now=999.0)
    assert db.next_eligible(now=999.9) is None
    assert db.next_eligible(now=1000.0).id == later.id


def test_next_eligible_respects_backoff(db):
    job = job_in_state(db, "running")
    db.transition(job.id, "queued", reason="out of memory", next_attempt_at=500.0, now=200.0)
    assert db.next_eligible(now=499.0) is None
    assert db.next_eligible(now=500.0).id == job.id


@pytest.mark.parametrize("state", ["running", "succeeded", "failed", "cancelled"])
def test_only_queued_jobs_are_eligible(db, state):
    job_in_state(db, state)
    assert db.next_eligible(now=10_000.0) is None


# -- runs -------------------------------------------------------------------------------------


def test_a_job_cannot_start_twice(db):
    job = submit(db)
    run = db.start_run(job.id, micro_batch=4, family="bert|192|mps", now=200.0)
    assert (run.job_id, run.attempt, run.started_at) == (job.id, 1, 200.0)
    assert (run.micro_batch, run.family) == (4, "bert|192|mps")
    assert (run.ended_at, run.pid, run.outcome, run.figures) == (None, None, None, {})
    with pytest.raises(InvalidTransition, match=f"^job {job.id} is running; cannot start$"):
        db.start_run(job.id, micro_batch=4, now=201.0)
    assert db.runs_for(job.id) == [run]
    assert db.get(job.id).attempts == 1


def test_finish_run_records_outcome_once(db):
    job = submit(db)
    run = db.start_run(job.id, micro_batch=8, now=200.0)
    db.set_run_handle(run.id, executor="local", ref="4242", pid=4242)
    assert db.active_runs() == [db.latest_run(job.id)] and db.latest_run(job.id).pid == 4242
    done = db.finish_run(run.id, outcome="out_of_memory", exit_code=76, micro_batch_end=2,
                         figures={"peak_bytes": 123, "samples_per_s": 4.5}, now=260.0)
    assert (done.ended_at, done.outcome, done.exit_code, done.signal) == (260.0, "out_of_memory", 76, None)
    assert done.micro_batch_end == 2
    assert done.figures == {"peak_bytes": 123, "samples_per_s": 4.5}
    assert db.latest_run(job.id) == done and db.active_runs() == []
    with pytest.raises(InvalidTransition, match="already finished"):
        db.finish_run(run.id, outcome="succeeded", now=261.0)
    assert db.latest_run(job.id) == done
    with pytest.raises(UnknownRun):
        db.set_run_handle(999, executor="local", ref="1", pid=1)


def test_finish_run_stores_non_finite_figures_as_null(db):
    run = db.start_run(submit(db).id, micro_batch=2, now=1.0)
    nan, inf = float("nan"), float("inf")
    done = db.finish_run(run.id, outcome="failed", figures={"best_score": nan, "per_task": {"ner": inf}}, now=2.0)
    assert done.figures == {"best_score": None, "per_task": {"ner": None}}
    assert json.loads(json.dumps(done.to_dict()))["figures"] == done.figures


def test_finish_run_with_unjsonable_figures_leaves_the_run_open(db):
    run = db.start_run(submit(db).id, micro_batch=2, now=1.0)
    with pytest.raises(TypeError):
        db.finish_run(run.id, outcome="succeeded", figures={"path": Path("/x")}, now=2.0)
    assert db.active_runs() == [run]


def test_attempt_numbers_continue_across_retry(db):
    job = submit(db)
    for now in (10.0, 20.0):
        run = db.start_run(job.id, micro_batch=4, now=now)
        db.finish_run(run.id, outcome="failed", exit_code=1, now=now + 1)
        db.transition(job.id, "failed", reason="exit 1", last_error="boom", now=now + 1)
        db.retry(job.id, now=now + 2)
    assert [r.attempt for r in db.runs_for(job.id)] == [1, 2]
    assert db.get(job.id).attempts == 0


def test_active_runs_span_jobs(db):
    a, b = job_in_state(db, "running"), job_in_state(db, "running")
    db.finish_run(db.latest_run(a.id).id, outcome="succeeded", now=300.0)
    assert [r.job_id for r in db.active_runs()] == [b.id]


# -- cancel / retry ---------------------------------------------------------------------------


def test_cancel_queued_is_immediate(db):
    job = db.cancel(submit(db).id, now=150.0)
    assert (job.state, job.finished_at, job.cancel_requested) == ("cancelled", 150.0, False)
    assert db.transitions_for(job.id)[-1].to_state == "cancelled"


def test_cancel_running_only_asks_and_leaving_running_clears_the_request(db):
    job = job_in_state(db, "running")
    asked = db.cancel(job.id, now=150.0)
    assert (asked.state, asked.cancel_requested, asked.updated_at) == ("running", True, 150.0)
    assert [t.to_state for t in db.transitions_for(job.id)] == ["queued", "running"]  # no move yet
    done = db.transition(job.id, "cancelled", reason="cancelled by user", now=160.0)
    assert (done.state, done.cancel_requested, done.finished_at) == ("cancelled", False, 160.0)


def test_requeue_after_cancel_request_clears_it(db):
    job = job_in_state(db, "running")
    db.cancel(job.id, now=150.0)
    assert db.transition(job.id, "queued", reason="daemon stopping", now=151.0).cancel_requested is False


@pytest.mark.parametrize("state", ["succeeded", "failed", "cancelled"])
def test_cancel_of_finished_job_is_refused(db, state):
    job = job_in_state(db, state)
    with pytest.raises(InvalidTransition, match=f"^job {job.id} is {state}; cannot cancel$"):
        db.cancel(job.id, now=500.0)


@pytest.mark.parametrize("state", ["failed", "cancelled"])
def test_retry_starts_afresh(db, state):
    job = submit(db)
    db.start_run(job.id, micro_batch=4, now=110.0)
    db.transition(job.id, state, reason="ended", last_error="boom", next_attempt_at=999.0, now=120.0)
    again = db.retry(job.id, now=130.0)
    assert (again.state, again.attempts, again.last_error, again.next_attempt_at, again.finished_at) == (
        "queued", 0, None, None, None)
    assert (db.transitions_for(job.id)[-1].from_state, db.transitions_for(job.id)[-1].reason) == (state, "retry")
    assert db.next_eligible(now=130.0).id == job.id


@pytest.mark.parametrize("state", ["queued", "running", "succeeded"])
def test_retry_refused_unless_failed_or_cancelled(db, state):
    job = job_in_state(db, state)
    with pytest.raises(InvalidTransition, match=f"^job {job.id} is {state}; cannot retry$"):
        db.retry(job.id, now=500.0)
    assert db.get(job.id) == job


# -- flags ------------------------------------------------------------------------------------


def test_flags(db):
    assert db.get_flag("paused") is None and db.get_flag("paused", "0") == "0"
    db.set_flag("paused", "1")
    db.set_flag("paused", "yes")
    assert db.get_flag("paused") == "yes"
    db.set_flag("paused", None)
    assert db.get_flag("paused") is None


# -- schema and file --------------------------------------------------------------------------


def test_reopen_keeps_data_and_schema(tmp_path):
    path = tmp_path / "new" / "dir" / "state.db"
    with Store(path) as s:
        job = submit(s)
        s.set_flag("paused", "1")
        for f in (path, path.with_name("state.db-wal"), path.with_name("state.db-shm")):
            assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    with Store(path) as s:
        assert s.get(job.id) == job and s.get_flag("paused") == "1"
    raw = sqlite3.connect(path)
    assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert raw.execute("PRAGMA user_version").fetchone()[0] == len(store_module.schema.MIGRATIONS) >= 1
    raw.close()


def test_a_new_migration_applies_once_to_an_existing_file(tmp_path, monkeypatch):
    path = tmp_path / "state.db"
    with Store(path) as s:
        job = submit(s)
    extra = "CREATE TABLE extra (a TEXT DEFAULT ';'); -- a ; in a comment\nINSERT INTO extra VALUES ('x;y');"
    from mtld.store import database

    monkeypatch.setattr(database, "MIGRATIONS", [*database.MIGRATIONS, extra])
    for _ in range(2):
        with Store(path) as s:
            assert s.get(job.id) == job
    raw = sqlite3.connect(path)
    assert raw.execute("SELECT a FROM extra").fetchall() == [("x;y",)]
    assert raw.execute("PRAGMA user_version").fetchone()[0] == len(database.MIGRATIONS)
    raw.close()


def test_a_file_from_a_newer_version_is_refused(tmp_path):
    path = tmp_path / "state.db"
    Store(path).close()
    raw = sqlite3.connect(path)
    raw.execute(f"PRAGMA user_version = {len(store_module.schema.MIGRATIONS) + 1}")
    raw.close()
    with pytest.raises(store_module.SchemaTooNew):
        Store(path)


def test_foreign_keys_are_enforced(db):
    with pytest.raises(sqlite3.IntegrityError):
        db.db.connection.execute("INSERT INTO runs (job_id, attempt, started_at, micro_batch) VALUES (999, 1, 0, 2)")


def test_a_store_may_be_used_from_another_thread(db):
    # The daemon's scheduler runs its tick in a worker thread.
    result = []
    worker = threading.Thread(target=lambda: result.append(submit(db).id))
    worker.start()
    worker.join()
    assert db.get(result[0]) is not None


@pytest.mark.slow
def test_importing_the_store_stays_light():
    heavy = "{'pydantic', 'torch', 'numpy', 'structlog', 'apscheduler'}"
    code = f"import sys, mtld.store; print(sorted({{m.split('.')[0] for m in sys.modules}} & {heavy}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO, env=child_env())
    assert out.stdout.strip() == "[]"


# -- many processes, one brand-new file ------------------------------------------------------

CHILD = """
import sys, time
from pathlib import Path
from mtld.store import Store
index, path, barrier = int(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
(barrier.parent / f"ready-{index}").touch()
deadline = time.monotonic() + 60
while not barrier.exists():
    if time.monotonic() > deadline:
        sys.exit("barrier never opened")
    time.sleep(0.002)
with Store(path) as store:
    print(store.submit(name=f"job{index}", spec_json="{}", job_file="f", run_root="/runs", now=float(index)).id)
"""


@pytest.mark.slow
def test_fifty_processes_create_and_submit_to_one_new_file(tmp_path):
    n = 50
    path, barrier = tmp_path / "state" / "state.db", tmp_path / "go"
    env = child_env()
    children = [
        subprocess.Popen([sys.executable, "-c", CHILD, str(i), str(path), str(barrier)], cwd=REPO, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(n)
    ]
    try:
        deadline = time.monotonic() + 60
        while len(list(tmp_path.glob("ready-*"))) < n and time.monotonic() < deadline:
            time.sleep(0.01)
        barrier.touch()  # release them together, all past their imports
        results = [child.communicate(timeout=90) for child in children]
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
    errors = [err for child, (_, err) in zip(children, results) if child.returncode != 0 or err]
    assert errors == []
    ids = [int(out) for out, _ in results]
    assert len(set(ids)) == n
    with Store(path) as s:
        assert sorted(j.id for j in s.list_jobs()) == sorted(ids)
        assert s.counts()["queued"] == n


def test_a_held_job_is_never_next_until_released(db):
    held = db.submit(name="a", spec_json="{}", job_file="/j.toml", run_root="/runs", now=1.0, priority=9)
    other = db.submit(name="b", spec_json="{}", job_file="/j.toml", run_root="/runs", now=2.0)
    db.set_hold(held.id, "disk full: 3.0 GB needed on /runs", now=3.0)
    assert db.next_eligible(now=10.0).id == other.id
    assert db.get(held.id).hold == "disk full: 3.0 GB needed on /runs"
    assert db.retry(held.id, now=4.0).hold is None  # `mtld retry` releases a held job
    assert db.next_eligible(now=10.0).id == held.id
    reasons = [t.reason for t in db.transitions_for(held.id)]
    assert reasons == ["submitted", "held: disk full: 3.0 GB needed on /runs", "released"]


def test_a_hold_comes_with_a_requeue_and_goes_with_any_other_move(db):
    job = db.submit(name="a", spec_json="{}", job_file="/j.toml", run_root="/runs", now=1.0)
    db.start_run(job.id, micro_batch=4, now=2.0)
    assert db.transition(job.id, "queued", reason="memory", hold="memory pressure", now=3.0).hold == "memory pressure"
    assert db.next_eligible(now=10.0) is None
    assert db.cancel(job.id, now=4.0).hold is None
    with pytest.raises(ValueError):
        db.transition(job.id, "failed", reason="x", hold="no", now=5.0)
    with pytest.raises(InvalidTransition):
        db.set_hold(job.id, "late", now=6.0)
