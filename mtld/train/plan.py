"""The batch plan: which task and which examples every optimizer step of an epoch sees.

Pure numpy, no torch: the plan of epoch `e` is a function of the tasks' token
lengths, the effective batch size, the seed and `e`, nothing else. That is what
makes a resumed run take exactly the steps the interrupted one would have taken,
and what lets the run time be predicted before the run starts.

Per task: shuffle, then bucket by length (sort within chunks of
`BUCKET_STEPS` effective batches, cut into steps, shuffle the steps), so a step
of short sentences is not padded to the longest sentence of the data set.
Then the tasks are interleaved by the sampling strategy:

- proportional: every task's steps shuffled together; each example is seen
  exactly once per epoch.
- temperature: task i gets a share p_i ∝ n_i^(1/T) (n_i = examples) of the
  epoch's steps, in random order; a task that runs out of steps starts a fresh
  shuffled round (recycles).
- uniform: every task an equal share (the limit T → ∞), recycling likewise.

An epoch always has sum_i ceil(n_i / batch) steps, whatever the strategy, so the
number of optimizer steps of a run is known up front.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

Strategy = Literal["proportional", "temperature", "uniform"]
BUCKET_STEPS = 50  # effective batches per length-sorting chunk: enough to bucket, still random
PAD_MULTIPLE = 8

_TASK_STREAM, _ORDER_STREAM = 0, 1  # independent RNG streams of one (seed, epoch)


@dataclass(frozen=True, slots=True)
class Step:
    """One optimizer step: a task index and the example ids of its effective batch."""

    task: int
    ids: np.ndarray


@dataclass
class Position:
    """Where a run is in its batch plan: the epoch, the index of the next step in that epoch's plan, and
    the optimizer steps taken overall (the trainer moves it on; checkpoints keep it)."""

    epoch: int = 0
    index: int = 0
    step: int = 0

    def advance(self, plan_length: int) -> bool:
        """Move past the step just taken in an epoch of `plan_length` steps; True when that ended the epoch."""
        self.step += 1
        self.index += 1
        if self.index < plan_length:
            return False
        self.epoch += 1
        self.index = 0
        return True


def steps_per_epoch(sizes: Sequence[int], batch_size: int) -> int:
    return sum(-(-n // batch_size) for n in sizes)


def epoch_plan(
    lengths: Sequence[np.ndarray],
    *,
    batch_size: int,
    seed: int,
    epoch: int,
    strategy: Strategy = "proportional",
    temperature: float = 2.0,
) -> list[Step]:
    """The steps of one epoch. `lengths[i]` holds the token length of each example of task i."""
    sizes = [len(x) for x in lengths]
    total = steps_per_epoch(sizes, batch_size)
    rounds = [_task_rounds(np.asarray(x), batch_size, seed, epoch, i) for i, x in enumerate(lengths)]
    if strategy == "proportional":
        counts = [-(-n // batch_size) for n in sizes]
    else:
        counts = share_out(task_probabilities(sizes, strategy, temperature), total)
    order = np.repeat(np.arange(len(sizes)), counts)
    np.random.default_rng([seed, epoch, _ORDER_STREAM]).shuffle(order)
    return [Step(int(task), next(rounds[task])) for task in order]


def share_out(p: np.ndarray, total: int) -> list[int]:
    """Steps per task: `total` split by `p` with the largest-remainder rule.

    Exact shares per epoch (not a random draw per step), so every epoch has
    the same task mix and the same expected run time; the order is random.
    """
    exact = p * total
    counts = np.floor(exact).astype(np.int64)
    remainders = np.argsort(-(exact - counts), kind="stable")
    counts[remainders[: total - counts.sum()]] += 1
    return [int(c) for c in counts]


def task_probabilities(sizes: Sequence[int], strategy: Strategy, temperature: float = 2.0) -> np.ndarray:
    """Probability of each task per step: ∝ n_i (proportional), n_i^(1/T), or equal."""
    n = np.asarray(sizes, dtype=np.float64)
    if strategy == "uniform":
        weights = np.ones_like(n)
    elif strategy == "temperature":
        weights = n ** (1.0 / temperature)
    else:
        weights = n
    probabilities: np.ndarray = weights / weights.sum()
    return probabilities


def _task_rounds(lengths: np.ndarray, batch_size: int, seed: int, epoch: int, task: int) -> Iterator[np.ndarray]:
    """The task's steps, round after round (a round sees every example once)."""
    round_ = 0
    while True:
        rng = np.random.default_rng([seed, epoch, _TASK_STREAM, task, round_])
        yield from bucketed_steps(lengths, batch_size, rng)
        round_ += 1


def bucketed_steps(lengths: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffle, sort by length within chunks, cut into steps, shuffle the steps.

    Inside a step the ids stay sorted by length, so its micro-batches are
    homogeneous too. Only the very last step of a round may be short.
    """
    perm = rng.permutation(len(lengths))
    chunk = BUCKET_STEPS * batch_size
    steps: list[np.ndarray] = []
    for start in range(0, len(perm), chunk):
        part = perm[start : start + chunk]
        part = part[np.argsort(lengths[part], kind="stable")]
        steps.extend(part[i : i + batch_size] for i in range(0, len(part), batch_size))
    return [steps[i] for i in rng.permutation(len(steps))]


def pad_to_multiple(n: int, multiple: int = PAD_MULTIPLE) -> int:
    return -(-n // multiple) * multiple


def micro_batches(ids: np.ndarray, micro_batch: int) -> list[np.ndarray]:
    return [ids[i : i + micro_batch] for i in range(0, len(ids), micro_batch)]


def padded_tokens(ids: np.ndarray, lengths: np.ndarray, micro_batch: int) -> int:
    """Tokens the step pushes through the encoder at this micro-batch size, padding included."""
    return sum(len(m) * pad_to_multiple(int(lengths[m].max())) for m in micro_batches(ids, micro_batch))
