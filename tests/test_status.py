"""`mtld status` reads only the tails of logs, so gigabyte logs stay fast."""

from __future__ import annotations

import json
import os
import time
from datetime import datetime
from types import SimpleNamespace

import pytest

from mtld.logs.events import parse_ts, read_events, tail_events
from mtld.queue.status import run_progress


def test_progress_comes_from_the_tail_of_a_huge_log(tmp_path):
    log = tmp_path / "run.jsonl"
    with log.open("wb") as f:
        f.write(b'{"event": "run.started", "ts": "2026-11-27T01:00:00Z"}\n')
        f.seek(64 << 30)  # 64 GiB of hole: reading it all would take minutes
        f.write(b'\n{"ts": "2026-11-27T02:00:00Z", "event": "memory.sample", "pressure": "warn"}\n')
        f.write(b'{"ts": "2026-11-27T02:00:01Z", "event": "step.progress", "step": 7, "total": 9, "micro_batch": 4}\n')
        f.write(b'{"ts": "2026-11-27T02:00:02Z", "event": "eval", "step": 7}\n')
    started = time.monotonic()
    progress = run_progress(tmp_path)
    assert time.monotonic() - started < 2
    assert (progress["step"], progress["total"], progress["micro_batch"], progress["memory_level"]) == (7, 9, 4, "warn")


def test_tail_and_time_bounded_reads(tmp_path):
    log = tmp_path / "mtld.jsonl"
    lines = [{"ts": f"2026-11-27T01:00:{i:02d}Z", "event": "e", "job_id": i % 3, "i": i} for i in range(60)]
    log.write_text("".join(json.dumps(e) + "\n" for e in lines) + '{"ts": "2026-11-27T01:01:00Z", "ev')  # torn last line
    assert [e["i"] for e in tail_events(log, 3, match={"job_id": 1})] == [52, 55, 58]
    since = lines[50]["ts"]
    from mtld.logs.events import parse_ts

    assert [e["i"] for e in read_events(log, since=parse_ts(since), match={"job_id": 2})] == [50, 53, 56, 59]
    assert run_progress(tmp_path / "missing") is None


# ---------------------------------------------------------------- the queue's expected start and finish

FIGURES = {  # one earlier run of the family at micro-batch 4: 0.1 s per example, 0.5 s per evaluation, 4 s start-up
    "timing": {"4": {"steps": 10, "padded_tokens": 1000, "seconds": 2.0, "tokens_squared": 1.2e5,
                     "tokens_seconds": 220.0, "eval": {"count": 2, "seconds": 1.0, "tokens": 50}}},
    "samples": 100, "train_seconds": 10.0, "duration_s": 15.0, "micro_batch_end": 4,
}


@pytest.fixture
def queue(jobs, tmp_path, monkeypatch):
    from mtld.decide.family import family
    from mtld.config.jobspec import spec_to_json
    from mtld.config.settings import Settings
    from mtld.store import Store

    for name in [n for n in os.environ if n.startswith("MTLD_")]:
        monkeypatch.delenv(name)
    settings = Settings(home=tmp_path / "home", train={"device": "cpu"})
    store = Store(settings.db_path)
    spec = jobs.spec([jobs.task("classification", 40, n_eval=10)], epochs=2)  # 80 examples, 2 evaluations: 13 s
    t0 = datetime(2026, 11, 27, 21, 0).astimezone()

    def submit(name, minutes=0.0, spec=spec, **kw):
        return store.submit(name=name, spec_json=spec_to_json(spec), job_file="/jobs/j.toml",
                            run_root=str(settings.local_runs_dir), now=t0.timestamp() + minutes * 60, **kw)

    done = submit("history", -60)
    run = store.start_run(done.id, micro_batch=4, family=family(spec, "cpu", "off"), now=t0.timestamp() - 3000)
    store.finish_run(run.id, outcome="succeeded", micro_batch_end=4, figures=FIGURES, now=t0.timestamp() - 2985)
    store.transition(done.id, "succeeded", reason="done", now=t0.timestamp() - 2985)
    return SimpleNamespace(settings=settings, store=store, spec=spec, t0=t0, submit=submit)


def starts(forecast, job):
    f = forecast[job.id]
    return tuple(None if f[k] is None else round(parse_ts(f[k]) - T0, 1) for k in ("expected_start", "expected_finish"))


T0 = datetime(2026, 11, 27, 21, 0).astimezone().timestamp()


def test_the_queue_is_replayed_in_the_daemons_order(queue):
    from mtld.queue.status import forecast

    first = queue.submit("first", 1)
    urgent = queue.submit("urgent", 2, priority=5)  # jumps the queue
    later = queue.submit("later", 0, not_before=T0 + 3600)  # not due for an hour: the others go first
    last = queue.submit("last", 3)
    queued = [urgent, first, later, last]  # the daemon's order: priority, then submission
    f = forecast(queue.settings, queue.store, queued, [100.0], queue.t0)
    assert starts(f, urgent) == (100.0, 113.0)
    assert starts(f, first) == (113.0, 126.0)
    assert starts(f, last) == (126.0, 139.0)
    assert starts(f, later) == (3600.0, 3613.0)
    assert f[urgent.id]["expected_s"] == 13.0

    queue.store.set_flag("paused", "1")
    paused = forecast(queue.settings, queue.store, queued, [100.0], queue.t0)
    assert all(v["expected_start"] is None and v["expected_finish"] is None for v in paused.values())


def test_an_unknown_duration_makes_the_rest_unknown(queue, jobs, tmp_path):
    from mtld.queue.status import forecast
    from mtld.train.tinymodel import build_tiny_model

    other_model = build_tiny_model(tmp_path / "other-model", ["a few words", "more words"], layers=1, hidden=32,
                                   heads=2, vocab_size=100)
    new_family = queue.submit("new", 1, spec=jobs.spec(queue.spec.model_dump()["tasks"], model=other_model))
    after = queue.submit("after", 2)
    f = forecast(queue.settings, queue.store, [new_family, after], [], queue.t0)
    assert starts(f, new_family) == (0.0, None) and f[new_family.id]["expected_s"] is None
    assert starts(f, after) == (None, None) and f[after.id]["expected_s"] == 13.0
    assert forecast(queue.settings, queue.store, [after], [None], queue.t0)[after.id]["expected_start"] is None


def test_a_window_delays_and_pauses_the_queue(queue):
    from mtld.queue.status import forecast

    settings = queue.settings.model_copy(update={"schedule": queue.settings.schedule.model_copy(
        update={"windows": ["22:00-23:00"]})})
    job = queue.submit("night", 1)
    f = forecast(settings, queue.store, [job], [], queue.t0)
    assert starts(f, job) == (3600.0, 3613.0)  # waits for the window to open at 22:00


def test_at_80_columns_an_id_is_never_cut_and_a_long_reason_wraps():
    """Issue 25, item 11: a held job's long reason squeezed the ID column to "…" — the ID `mtld retry` needs."""
    import io

    from rich.console import Console

    from mtld.cli.render import jobs_table

    views = [{"id": 123456, "name": "a-rather-long-job-name-for-sentiment", "priority": 5, "batch_size": "auto",
              "expected_start": None, "expected_finish": None, "last_error": "out of memory even at micro-batch 2",
              "hold": "memory pressure: 3 interrupts in 20 min — `mtld retry 123456` to release"}]
    out = io.StringIO()
    Console(file=out, width=80).print(jobs_table(views, ("id", "name", "priority", "batch_size", "expected_start",
                                                         "expected_finish", "hold", "last_error")))
    lines = out.getvalue().splitlines()
    assert all(len(line) <= 80 for line in lines)
    assert any(line.startswith("123456 ") for line in lines)  # whole, at the start of its row
    text = "".join(lines)
    assert "…" not in text and "release" in text and "micro-batc" in text  # wrapped, not cut
