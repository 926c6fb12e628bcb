"""Running a trained model over a split: shared by evaluation and `mtld predict`."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from mtld.train.data import OUTSIDE, Split, TaskInfo
from mtld.train.device import empty_cache, is_oom
from mtld.train.model import MultiTaskModel


class Aborted(Exception):
    """A stop was requested between two inference batches."""


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager[Any]:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def infer_split(
    model: MultiTaskModel,
    task: int,
    info: TaskInfo,
    split: Split,
    *,
    batch_size: int,
    amp: torch.dtype | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Any:
    """Predictions for every example of `split`, in its order.

    classification: label indices (n,); multilabel: 0/1 matrix (n, labels);
    regression: floats (n,); token classification: a list of tags per example,
    one per word. Batches go shortest first; an allocation failure halves the
    batch and retries it.
    """
    order = np.argsort(split.lengths, kind="stable")
    outputs: list[np.ndarray] = []
    start = 0
    was_training = model.training
    model.eval()
    try:
        while start < len(order):
            if should_stop is not None and should_stop():
                raise Aborted
            ids = order[start : start + batch_size]
            try:
                outputs.append(_infer_batch(model, task, info, split, ids, amp))
            except Exception as e:
                if not is_oom(e) or batch_size == 1:
                    raise
                failed = True
            else:
                failed = False
                start += len(ids)
            if failed:  # outside the except block, so the failed batch's tensors are gone
                empty_cache(split.device)
                batch_size //= 2
    finally:
        model.train(was_training)
    values = np.concatenate(outputs) if outputs else np.empty(0)
    ordered = np.empty_like(values)
    ordered[order] = values
    if info.is_token_task:
        return word_tags(ordered, split, info)
    return ordered


def _infer_batch(model: MultiTaskModel, task: int, info: TaskInfo, split: Split, ids: np.ndarray, amp: torch.dtype | None) -> np.ndarray:
    inputs, _ = split.batch(ids)
    with torch.inference_mode(), autocast(split.device, amp):
        logits = model(task, inputs).float()
    if info.type == "classification":
        return logits.argmax(-1).cpu().numpy()
    if info.type == "multilabel":
        return (logits > 0).to(torch.int64).cpu().numpy()  # sigmoid(x) > 0.5
    if info.type == "regression":
        return logits.squeeze(-1).cpu().numpy()
    # token tasks: keep each example's tag index at its words' first sub-tokens
    best = logits.argmax(-1).cpu().numpy()
    rows = np.empty(len(ids), dtype=object)
    for row, i in enumerate(ids):
        starts = split.word_starts[i]
        rows[row] = np.where(starts >= 0, best[row, np.maximum(starts, 0)], -1)
    return rows


def word_tags(per_example: np.ndarray, split: Split, info: TaskInfo) -> list[list[str]]:
    """Tag names per word; words cut off by truncation are OUTSIDE."""
    return [[info.labels[t] if t >= 0 else OUTSIDE for t in tags] for tags in per_example]
