"""Per-task evaluation metrics, from well-kept libraries (scikit-learn, SciPy, seqeval).

Pure: numpy arrays or tag lists in, a dict of floats out. A metric that is
undefined on the data (Pearson of constant predictions, say) is reported as
None, never NaN and never a crash.

The aggregate score that picks the best model is the mean over the evaluated
tasks of each task's primary metric (PRIMARY); a primary metric that is
undefined counts as 0 there (a constant regressor ranks nothing).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

PRIMARY = {
    "classification": "macro_f1",
    "multilabel": "micro_f1",
    "regression": "spearman",
    "token_classification": "entity_f1",
}


def classification_metrics(pred: np.ndarray, gold: np.ndarray) -> dict[str, float | None]:
    from sklearn.metrics import accuracy_score, f1_score

    return {
        "accuracy": float(accuracy_score(gold, pred)),
        "macro_f1": float(f1_score(gold, pred, average="macro", zero_division=0)),
    }


def multilabel_metrics(pred: np.ndarray, gold: np.ndarray) -> dict[str, float | None]:
    """`pred`, `gold`: (n, labels) 0/1 indicator matrices."""
    from sklearn.metrics import accuracy_score, f1_score

    pred, gold = pred.astype(np.int64), gold.astype(np.int64)
    return {
        "micro_f1": float(f1_score(gold, pred, average="micro", zero_division=0)),
        "macro_f1": float(f1_score(gold, pred, average="macro", zero_division=0)),
        "exact_match": float(accuracy_score(gold, pred)),
    }


def regression_metrics(pred: np.ndarray, gold: np.ndarray) -> dict[str, float | None]:
    from scipy.stats import pearsonr, spearmanr

    pred, gold = np.asarray(pred, dtype=np.float64), np.asarray(gold, dtype=np.float64)
    rmse = float(np.sqrt(np.mean((pred - gold) ** 2)))
    if len(pred) < 2 or np.ptp(pred) == 0 or np.ptp(gold) == 0:
        return {"pearson": None, "spearman": None, "rmse": rmse}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pearson = float(pearsonr(pred, gold)[0])
        spearman = float(spearmanr(pred, gold)[0])
    return {"pearson": _finite(pearson), "spearman": _finite(spearman), "rmse": rmse}


def token_metrics(pred: Sequence[Sequence[str]], gold: Sequence[Sequence[str]]) -> dict[str, float | None]:
    """Entity-level scores (seqeval, CoNLL style) and plain tag accuracy."""
    from seqeval.metrics import f1_score, precision_score, recall_score

    pred, gold = [list(p) for p in pred], [list(g) for g in gold]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # seqeval warns about tags that are not IOB
        scores = {
            "entity_f1": float(f1_score(gold, pred, zero_division=0)),
            "entity_precision": float(precision_score(gold, pred, zero_division=0)),
            "entity_recall": float(recall_score(gold, pred, zero_division=0)),
        }
    tags = sum(len(g) for g in gold)
    scores["tag_accuracy"] = sum(p == g for ps, gs in zip(pred, gold) for p, g in zip(ps, gs)) / max(tags, 1)
    return scores


def task_metrics(kind: str, pred: Any, gold: Any) -> dict[str, float | None]:
    if kind == "classification":
        return classification_metrics(pred, gold)
    if kind == "multilabel":
        return multilabel_metrics(pred, gold)
    if kind == "regression":
        return regression_metrics(pred, gold)
    return token_metrics(pred, gold)


def aggregate_score(metrics: Mapping[str, Mapping[str, float | None]], kinds: Mapping[str, str]) -> float | None:
    """Mean of the tasks' primary metrics; None when no task was evaluated."""
    if not metrics:
        return None
    values = [metrics[name].get(PRIMARY[kinds[name]]) for name in metrics]
    return float(np.mean([v if v is not None else 0.0 for v in values]))


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None
