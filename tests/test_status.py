"""`mtld status` reads only the tails of logs, so gigabyte logs stay fast."""

from __future__ import annotations

import json
import time

from mtld.logs import read_events, tail_events
from mtld.status import run_progress


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
    from mtld.logs import parse_ts

    assert [e["i"] for e in read_events(log, since=parse_ts(since), match={"job_id": 2})] == [50, 53, 56, 59]
    assert run_progress(tmp_path / "missing") is None
