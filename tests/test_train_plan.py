"""The batch plan and the learning-rate schedule: pure functions, no torch."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from mtld.train.plan import (
    BUCKET_STEPS,
    bucketed_steps,
    epoch_plan,
    micro_batches,
    pad_to_multiple,
    padded_tokens,
    steps_per_epoch,
    task_probabilities,
)


def lengths_of(*sizes: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(5, 120, size=n) for n in sizes]


def as_tuples(plan):
    return [(s.task, tuple(s.ids.tolist())) for s in plan]


@pytest.mark.parametrize("strategy", ["proportional", "temperature", "uniform"])
def test_plan_is_a_function_of_seed_and_epoch(strategy):
    lengths = lengths_of(100, 37, 250)
    plan = lambda seed, epoch: as_tuples(epoch_plan(lengths, batch_size=8, seed=seed, epoch=epoch, strategy=strategy))  # noqa: E731
    assert plan(1, 0) == plan(1, 0)
    assert plan(1, 0) != plan(2, 0)
    assert plan(1, 0) != plan(1, 1)


def test_proportional_sees_every_example_exactly_once_per_epoch():
    lengths = lengths_of(100, 37, 250)
    plan = epoch_plan(lengths, batch_size=8, seed=3, epoch=2, strategy="proportional")
    assert len(plan) == steps_per_epoch([100, 37, 250], 8) == 13 + 5 + 32
    for task, n in enumerate((100, 37, 250)):
        ids = np.concatenate([s.ids for s in plan if s.task == task])
        assert sorted(ids.tolist()) == list(range(n))
        sizes = [len(s.ids) for s in plan if s.task == task]
        assert sorted(sizes)[1:] == [8] * (len(sizes) - 1)  # only one short step per task


def test_tasks_are_interleaved_not_run_one_after_another():
    plan = epoch_plan(lengths_of(80, 80), batch_size=8, seed=0, epoch=0)
    first_half = [s.task for s in plan[: len(plan) // 2]]
    assert 0 in first_half and 1 in first_half


@pytest.mark.parametrize("strategy", ["temperature", "uniform"])
def test_sampled_strategies_keep_the_epoch_length_and_recycle_small_tasks(strategy):
    lengths = lengths_of(400, 16)
    plan = epoch_plan(lengths, batch_size=8, seed=5, epoch=0, strategy=strategy, temperature=2.0)
    assert len(plan) == steps_per_epoch([400, 16], 8)
    small = [s.ids for s in plan if s.task == 1]
    assert len(small) > 2  # more steps than the 2 the task has: it went round again
    first_round = np.concatenate(small[:2])
    assert sorted(first_round.tolist()) == list(range(16))  # each round sees every example once


@pytest.mark.parametrize(
    ("strategy", "expected_share_of_big"),
    [("proportional", 8000 / 8800), ("temperature", 8000**0.5 / (8000**0.5 + 800**0.5)), ("uniform", 0.5)],
)
def test_task_frequencies_follow_the_strategy(strategy, expected_share_of_big):
    plan = epoch_plan(lengths_of(8000, 800), batch_size=8, seed=11, epoch=0, strategy=strategy, temperature=2.0)
    share = Counter(s.task for s in plan)[0] / len(plan)
    assert share == pytest.approx(expected_share_of_big, abs=1 / len(plan))


def test_share_out_splits_exactly():
    from mtld.train.plan import share_out

    assert share_out(np.array([0.5, 0.25, 0.25]), 8) == [4, 2, 2]
    assert share_out(np.array([1 / 3] * 3), 10) in ([4, 3, 3], [3, 4, 3], [3, 3, 4])
    assert sum(share_out(np.array([0.7, 0.2, 0.1]), 7)) == 7


def test_task_probabilities():
    assert task_probabilities([100, 100, 200], "proportional").tolist() == [0.25, 0.25, 0.5]
    assert task_probabilities([1, 100], "uniform").tolist() == [0.5, 0.5]
    p = task_probabilities([100, 400], "temperature", temperature=2.0)
    assert p.tolist() == pytest.approx([10 / 30, 20 / 30])


def test_length_bucketing_cuts_padding():
    rng = np.random.default_rng(0)
    lengths = rng.integers(4, 200, size=4000)
    bucketed = sum(padded_tokens(ids, lengths, 8) for ids in bucketed_steps(lengths, 8, np.random.default_rng(1)))
    perm = np.random.default_rng(1).permutation(len(lengths))
    random_steps = [perm[i : i + 8] for i in range(0, len(perm), 8)]
    unbucketed = sum(padded_tokens(ids, lengths, 8) for ids in random_steps)
    assert bucketed < 0.7 * unbucketed
    assert bucketed >= lengths.sum()


def test_bucketing_keeps_steps_sorted_inside_and_random_across():
    lengths = np.random.default_rng(0).integers(4, 200, size=BUCKET_STEPS * 8 * 3)
    steps = bucketed_steps(lengths, 8, np.random.default_rng(2))
    assert all(np.all(np.diff(lengths[s]) >= 0) for s in steps)
    maxima = [lengths[s].max() for s in steps]
    assert maxima != sorted(maxima)


def test_padding_and_micro_batches():
    assert [pad_to_multiple(n) for n in (1, 8, 9, 16, 17)] == [8, 8, 16, 16, 24]
    ids = np.arange(7)
    assert [m.tolist() for m in micro_batches(ids, 2)] == [[0, 1], [2, 3], [4, 5], [6]]
    lengths = np.array([3, 3, 9, 9, 17, 17, 30])
    assert padded_tokens(ids, lengths, 2) == 2 * 8 + 2 * 16 + 2 * 24 + 1 * 32
    assert padded_tokens(ids, lengths, 8) == 7 * 32


def test_the_position_moves_step_by_step_and_into_the_next_epoch():
    from mtld.train.plan import Position

    at = Position()
    ends = [at.advance(3) for _ in range(4)]
    assert ends == [False, False, True, False] and at == Position(epoch=1, index=1, step=4)
