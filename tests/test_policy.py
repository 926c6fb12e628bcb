"""The pure decisions, as tables."""

from __future__ import annotations

import pytest

from mtld.policy import EarlierRun, after_exit, one_size_down, start_micro_batch

NOW = 1_000_000.0


def decide(code=None, sig=None, failures=0, cancel=False, stop=None, message=None, max_attempts=3):
    return after_exit(
        exit_code=code, signal=sig, earlier_failures=failures, max_attempts=max_attempts, backoff_s=60,
        cancel_requested=cancel, stop_reason=stop, message=message, now=NOW,
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
        ({}, "lost", "queued", None, "no daemon was watching"),
    ],
)
def test_after_exit(kwargs, outcome, job_state, retry_in, reason_part):
    decision = decide(**kwargs)
    assert (decision.outcome, decision.job_state) == (outcome, job_state)
    assert decision.retry_at == (None if retry_in is None else NOW + retry_in)
    assert reason_part in decision.reason


@pytest.mark.parametrize(
    ("pinned", "earlier", "expected"),
    [
        (None, [], 4),
        (8, [], 8),
        (2, [EarlierRun("killed", 8, None)], 2),
        (None, [EarlierRun("killed", 8, None)], 4),
        (None, [EarlierRun("killed", 4, None)], 2),
        (None, [EarlierRun("killed", 2, None)], 2),
        (None, [EarlierRun("killed", 8, 4)], 2),  # it had already scaled down to 4 in the run
        (None, [EarlierRun("interrupted", 8, 4)], 4),
        (None, [EarlierRun("interrupted", 8, None)], 8),
        (None, [EarlierRun("lost", 2, 2)], 2),
        (None, [EarlierRun("out_of_memory", 2, 2)], 2),
        (None, [EarlierRun("killed", 8, None), EarlierRun("interrupted", 4, None)], 4),
    ],
)
def test_start_micro_batch(pinned, earlier, expected):
    size, reason = start_micro_batch(pinned, 4, earlier)
    assert size == expected and reason


def test_one_size_down():
    assert [one_size_down(s) for s in (8, 4, 2)] == [4, 2, 2]
