"""The pure decisions, as tables."""

from __future__ import annotations

import pytest

from mtld.decide.policy import (
    EarlierRun,
    FamilyRun,
    after_exit,
    calm_since,
    family_start_size,
    one_size_down,
    peaks_by_size,
    place_run,
    pressure_hold,
    start_micro_batch,
)

NOW = 1_000_000.0


def decide(code=None, sig=None, failures=0, cancel=False, stop=None, message=None, max_attempts=3, detail=None,
           cannot_run=None, lost=0):
    return after_exit(
        exit_code=code, signal=sig, earlier_failures=failures, max_attempts=max_attempts, backoff_s=60,
        cancel_requested=cancel, stop_reason=stop, message=message, now=NOW, detail=detail, cannot_run=cannot_run,
        lost_in_a_row=lost, max_lost=3, lost_backoff_s=30,
    )


@pytest.mark.parametrize(
    ("kwargs", "outcome", "job_state", "retry_in", "reason_part"),
    [
        ({"code": 0}, "succeeded", "succeeded", None, "finished"),
        ({"code": 0, "cancel": True}, "succeeded", "succeeded", None, "finished"),  # it finished before the cancel landed
        ({"code": 75, "cancel": True}, "cancelled", "cancelled", None, "cancelled"),
        ({"code": 1, "cancel": True}, "cancelled", "cancelled", None, "cancelled"),
        ({"code": 75, "stop": "pause"}, "interrupted", "queued", None, "pause"),
        ({"code": 75, "stop": "shutdown"}, "interrupted", "queued", None, "shutdown"),
        ({"code": 75, "message": "memory pressure critical"}, "interrupted", "queued", None, "memory pressure critical"),
        ({"code": 2, "message": "label 'x' not in the label list"}, "bad_input", "failed", None, "label 'x'"),
        ({"code": 2, "failures": 0, "max_attempts": 9}, "bad_input", "failed", None, "bad input"),
        ({"code": 76}, "out_of_memory", "queued", 60, "micro-batch 2"),
        ({"code": 76, "failures": 1}, "out_of_memory", "queued", 120, "retrying in 120 s"),
        ({"code": 76, "failures": 2}, "out_of_memory", "failed", None, "gave up after 3 attempts"),
        ({"sig": 9}, "killed", "queued", 0, "one micro-batch size down"),
        ({"sig": 9, "failures": 2}, "killed", "failed", None, "gave up"),
        ({"sig": 11}, "crashed", "queued", 60, "signal 11"),
        ({"code": 1}, "crashed", "queued", 60, "status 1"),
        ({"code": 1, "failures": 2}, "crashed", "failed", None, "status 1"),
        ({"code": 1, "max_attempts": 1}, "crashed", "failed", None, "gave up after 1 attempts"),
        ({}, "lost", "queued", 30, "no daemon was watching"),
        # lost runs count, with their own limit (3 here) and backoff (30 s, doubled), and keep the executor's words
        ({"detail": "The actor died because its node has died"}, "lost", "queued", 30, "its node has died; it resumes"),
        ({"detail": "node died", "message": "mine"}, "lost", "queued", 30, "node died"),
        ({"lost": 1}, "lost", "queued", 60, "lost 2 of at most 3 times in a row"),
        ({"lost": 2, "detail": "failed to start within 20 s"}, "lost", "failed", None, "within 20 s; lost 3 times in a row: gave up"),
        ({"lost": 2, "cancel": True}, "cancelled", "cancelled", None, "cancelled"),
        # a run that can never start fails its job at once, whatever its attempts
        ({"cannot_run": "no node has GPU: 1"}, "cannot_run", "failed", None, "no node has GPU: 1"),
        ({"cannot_run": "no node has GPU: 1", "cancel": True}, "cancelled", "cancelled", None, "cancelled"),
        ({"code": 73}, "superseded", "queued", None, "a newer attempt owns the run folder"),
        ({"code": 66, "message": "Read-only file system"}, "bad_input", "failed", None, "not writable where the run started (Read-only"),
        ({"code": 1, "detail": "the Ray job failed: no such interpreter"}, "crashed", "queued", 60, "status 1 (the Ray job failed"),
    ],
)
def test_after_exit(kwargs, outcome, job_state, retry_in, reason_part):
    decision = decide(**kwargs)
    assert (decision.outcome, decision.job_state) == (outcome, job_state)
    assert decision.retry_at == (None if retry_in is None else NOW + retry_in)
    assert reason_part in decision.reason


FIRST = (4, "the family's start size")  # what the family decided for a first attempt


@pytest.mark.parametrize(
    ("pinned", "earlier", "expected", "reason_part"),
    [
        (None, [], 4, "the family's start size"),
        (None, [EarlierRun(None, 8, None)], 4, "the family's start size"),  # the last run never ended: a first attempt
        (8, [], 8, "pinned"),
        (2, [EarlierRun("killed", 8, None)], 2, "pinned"),
        (None, [EarlierRun("killed", 8, None)], 4, "killed at 8: one size down"),
        (None, [EarlierRun("killed", 4, None)], 2, "killed at 4: one size down"),
        (None, [EarlierRun("killed", 2, None)], 2, "killed at 2: one size down"),
        (None, [EarlierRun("killed", 8, 4)], 2, "killed at 4: one size down"),  # it had already scaled down to 4 in the run
        (None, [EarlierRun("interrupted", 8, 4)], 4, "ended at (interrupted)"),
        (None, [EarlierRun("interrupted", 8, None)], 8, "ended at (interrupted)"),
        (None, [EarlierRun("lost", 2, 2)], 2, "ended at (lost)"),
        (None, [EarlierRun("out_of_memory", 2, 2)], 2, "ran out of memory at 2: one size down"),  # 2 is the floor
        (None, [EarlierRun("out_of_memory", 8, None)], 4, "ran out of memory at 8: one size down"),  # a GPU failure
        (None, [EarlierRun("stalled", 8, None)], 4, "stalled at 8: one size down"),
        (None, [EarlierRun("killed", 8, None), EarlierRun("interrupted", 4, None)], 4, "ended at (interrupted)"),  # the last one counts
        # a memory-pressure interrupt: one size smaller than where it was stopped
        (None, [EarlierRun("interrupted", 8, None, pressure=True)], 4, "interrupted by memory pressure at 8: one size down"),
        (None, [EarlierRun("interrupted", 8, 4, pressure=True)], 2, "interrupted by memory pressure at 4: one size down"),
        (None, [EarlierRun("interrupted", 2, 2, pressure=True)], 2, "interrupted by memory pressure at 2: one size down"),
        (4, [EarlierRun("interrupted", 4, None, pressure=True)], 4, "pinned"),
    ],
)
def test_start_micro_batch(pinned, earlier, expected, reason_part):
    size, reason = start_micro_batch(pinned, FIRST, earlier)
    assert size == expected
    assert reason_part in reason


def test_one_size_down():
    assert [one_size_down(s) for s in (8, 4, 2)] == [4, 2, 2]


def fam(outcome="succeeded", start=4, end=None, scaled=False, ooms=0, peak=100, budget=1000):
    return FamilyRun(outcome, start, end, scaled, ooms, peak, budget)


@pytest.mark.parametrize(
    ("history", "expected", "reason_part"),
    [
        ([], 4, "configured start size"),
        ([fam(peak=100)], 8, "one size up"),
        ([fam(start=2, peak=100)], 4, "one size up"),
        ([fam(start=8, peak=100)], 8, "stay"),  # already the largest
        ([fam(peak=600)], 4, "stay"),  # at the headroom line: not under it
        ([fam(peak=599)], 8, "one size up"),
        ([fam(start=8, end=4, scaled=True, peak=100)], 4, "scaled down to 4"),
        ([fam(start=8, end=4, ooms=1, peak=100)], 4, "scaled down"),
        ([fam(outcome="killed", start=8)], 4, "killed at 8"),
        ([fam(outcome="out_of_memory", start=4, end=2)], 2, "even at 2"),
        ([fam(outcome="interrupted", start=8, end=4)], 4, "no headroom figure"),
        ([fam(peak=None)], 4, "no headroom figure"),
        ([fam(budget=None)], 4, "no headroom figure"),
        ([fam(start=8, end=2, scaled=True), fam(start=2, peak=100)], 4, "one size up"),  # only the last run counts
    ],
)
def test_family_start_size(history, expected, reason_part):
    size, reason = family_start_size(history, 4, 0.6)
    assert size == expected and reason_part in reason


@pytest.mark.parametrize(
    ("size", "pressure", "available", "peaks", "pinned", "expected", "deferred", "reason_part"),
    [  # reason_part "": nothing changed, so nothing to say
        (8, "normal", 10_000, {}, False, 8, None, ""),
        (8, "critical", 10_000, {}, False, None, "memory_critical", "memory pressure is critical"),
        (8, "critical", 10_000, {}, True, None, "memory_critical", "memory pressure is critical"),
        (8, "warn", 10_000, {}, False, 4, None, "memory pressure is warn: 8 → 4"),
        (8, "warn", 10_000, {}, True, 8, None, ""),  # pinned: never changed
        (2, "warn", 10_000, {}, False, 2, None, ""),  # already the smallest
        (8, "normal", 500, {8: 900, 4: 600, 2: 300}, False, 2, None,
         "8 peaked at 900 bytes > 500 available: 4; 4 peaked at 600 bytes > 500 available: 2"),
        (8, "normal", 500, {8: 900}, False, 4, None, "8 peaked at 900 bytes > 500 available: 4"),  # no figure for 4: it is tried
        (8, "normal", 200, {8: 900, 4: 600, 2: 300}, False, None, "does_not_fit",
         "micro-batch 2 peaked at 300 bytes; only 200 are available now"),
        (4, "normal", 500, {4: 600}, True, None, "does_not_fit", "micro-batch 4 peaked at 600 bytes; only 500"),
        (8, "warn", 500, {4: 600, 2: 300}, False, 2, None,
         "memory pressure is warn: 8 → 4; 4 peaked at 600 bytes > 500 available: 2"),
        (8, "normal", None, {8: 900}, False, 8, None, ""),  # nothing known about what is free
    ],
)
def test_place_run(size, pressure, available, peaks, pinned, expected, deferred, reason_part):
    placement = place_run(size, pressure=pressure, available_bytes=available, peaks=peaks, pinned=pinned)
    assert (placement.micro_batch, placement.deferred) == (expected, deferred)
    if reason_part:
        assert reason_part in placement.reason
    else:
        assert placement.reason == ""


@pytest.mark.parametrize(
    ("pressure", "calm_for", "needed", "expected", "deferred", "reason_part"),
    [
        ("normal", None, 0.0, 8, None, ""),  # no interrupt before: no wait
        ("normal", 0.0, 60.0, None, "memory_settling", "stay normal for 60 s (normal for 0 s now)"),
        ("normal", 59.5, 60.0, None, "memory_settling", "(normal for 60 s now)"),
        ("normal", 60.0, 60.0, 8, None, ""),
        ("warn", None, 60.0, None, "memory_settling", "normal for 0 s now"),
        ("critical", None, 60.0, None, "memory_critical", "critical"),  # critical is said first
        ("pinned", 120.0, 60.0, 8, None, ""),
    ],
)
def test_place_run_waits_for_calm_after_a_pressure_interrupt(pressure, calm_for, needed, expected, deferred,
                                                             reason_part):
    pinned = pressure == "pinned"
    placement = place_run(8, pressure="normal" if pinned else pressure, available_bytes=None, peaks={},
                          pinned=pinned, calm_for_s=calm_for, calm_needed_s=needed)
    assert (placement.micro_batch, placement.deferred) == (expected, deferred)
    assert reason_part in placement.reason


@pytest.mark.parametrize(("previous", "pressure", "expected"), [
    (None, "normal", 50.0), (10.0, "normal", 10.0), (10.0, "warn", None), (10.0, "critical", None),
    (None, "warn", None), (10.0, None, 10.0), (None, None, None),  # unreadable: as it was
])
def test_calm_since(previous, pressure, expected):
    assert calm_since(previous, pressure, 50.0) == expected


HOUR = 3600.0


@pytest.mark.parametrize(("times", "expected"), [
    ([NOW], None),
    ([NOW - 600, NOW], None),
    ([NOW - 2400, NOW - 1200, NOW], "memory pressure: 3 interrupts in 40 min — `mtld retry 7` to release"),
    ([NOW - HOUR, NOW - 60, NOW], "memory pressure: 3 interrupts in 60 min — `mtld retry 7` to release"),
    ([NOW - HOUR - 1, NOW - 60, NOW], None),  # the first is outside the window
    ([NOW - 30, NOW], None),
    ([NOW - 120, NOW - 60, NOW - 30, NOW], "memory pressure: 4 interrupts in 2 min — `mtld retry 7` to release"),
    ([NOW - 50, NOW - 20, NOW], "memory pressure: 3 interrupts in 1 min — `mtld retry 7` to release"),
])
def test_pressure_hold(times, expected):
    assert pressure_hold(times, now=NOW, limit=3, window_s=HOUR, job_id=7) == expected


def test_pressure_hold_follows_the_limit_and_window():
    times = [NOW - 1800, NOW]
    assert pressure_hold(times, now=NOW, limit=2, window_s=HOUR, job_id=1) is not None
    assert pressure_hold(times, now=NOW, limit=2, window_s=1000, job_id=1) is None
    assert pressure_hold([NOW], now=NOW, limit=1, window_s=1, job_id=1).startswith("memory pressure: 1 interrupts")


def test_a_crash_says_what_the_run_said():
    decision = decide(code=1, message="3 optimizer steps in a row had a non-finite loss")
    assert decision.outcome == "crashed"
    assert "exited with status 1 (3 optimizer steps in a row had a non-finite loss)" in decision.reason


def test_peaks_by_size_keeps_the_highest_at_the_size_a_run_ended():
    history = [fam(start=8, end=4, peak=700), fam(start=4, peak=650), fam(start=8, peak=900), fam(start=2, peak=None)]
    assert peaks_by_size(history) == {4: 700, 8: 900}
