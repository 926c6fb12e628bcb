"""Shared fixtures: a tiny BERT built once per session, and small synthetic task data.

The data is generated, not shipped: each task type has a rule the tiny model
can learn in a few epochs (sentiment words decide the label, topic words the
topics, names and cities the entity tags), so tests can check that training
does something, not only that it runs.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import pytest

FILLER = "the a this that movie film day place it was is really quite very here there".split()
POSITIVE, NEGATIVE = ["good", "great", "lovely"], ["bad", "awful", "boring"]
TOPICS = {"sports": ["football", "tennis"], "food": ["bread", "rice"], "tech": ["phone", "laptop"]}
PEOPLE, PLACES = ["alice", "bob", "carol"], ["tokyo", "paris", "東京"]
TASK_LABELS = {
    "classification": ["pos", "neg"],
    "pair": ["yes", "no"],
    "multilabel": list(TOPICS),
    "tokens": ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"],
}


def _words(rng: random.Random, low: int, high: int) -> list[str]:
    return [rng.choice(FILLER) for _ in range(rng.randint(low, high))]


def _insert(rng: random.Random, words: list[str], *extra: str) -> list[str]:
    for word in extra:
        words.insert(rng.randint(0, len(words)), word)
    return words


def make_rows(kind: str, n: int, seed: int = 0, *, long: int = 0) -> list[dict[str, Any]]:
    """`n` rows of a task type; `long` adds that many filler words to each text."""
    rng = random.Random(f"{kind}-{seed}")
    rows = []
    for _ in range(n):
        if kind == "classification":
            label = rng.choice(["pos", "neg"])
            word = rng.choice(POSITIVE if label == "pos" else NEGATIVE)
            rows.append({"text": " ".join(_insert(rng, _words(rng, 2 + long, 12 + long), word)), "label": label})
        elif kind == "pair":
            # the answer is in the second sentence; the first one holds a distractor
            a, b = rng.choice(POSITIVE + NEGATIVE), rng.choice(POSITIVE + NEGATIVE)
            rows.append({"a": " ".join(_insert(rng, _words(rng, 2, 8), a)), "b": " ".join(_insert(rng, _words(rng, 2, 8), b)),
                         "label": "yes" if b in POSITIVE else "no"})
        elif kind == "multilabel":
            topics = rng.sample(list(TOPICS), rng.randint(1, 2))
            words = _insert(rng, _words(rng, 2, 10), *(rng.choice(TOPICS[t]) for t in topics))
            rows.append({"text": " ".join(words), "topics": topics})
        elif kind == "regression":
            a, b = _words(rng, 3, 8), _words(rng, 3, 8)
            k = rng.randint(0, 3)
            b = _insert(rng, b, *(["great"] * k))
            rows.append({"a": " ".join(a), "b": " ".join(b), "score": float(k)})
        elif kind == "tokens":
            words, tags = [], []
            for _ in range(rng.randint(3, 10)):
                roll = rng.random()
                if roll < 0.15:
                    words += [rng.choice(PEOPLE)]
                    tags += ["B-PER"]
                elif roll < 0.25:
                    words += [rng.choice(PLACES)]
                    tags += ["B-LOC"]
                elif roll < 0.3:
                    words += ["new", "york"]
                    tags += ["B-LOC", "I-LOC"]
                else:
                    words += [rng.choice(FILLER)]
                    tags += ["O"]
            rows.append({"tokens": words, "tags": tags})
        else:
            raise ValueError(kind)
    return rows


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def vocabulary_texts() -> list[str]:
    texts = [" ".join(FILLER + POSITIVE + NEGATIVE + PEOPLE + PLACES + ["new", "york"])]
    texts += [" ".join(words) for words in TOPICS.values()]
    for kind in ("classification", "multilabel", "tokens"):
        for row in make_rows(kind, 50, seed=99):
            texts.append(row.get("text") or " ".join(row["tokens"]))
    return texts


def build_model(out: Path, **kwargs: Any) -> Path:
    from mtld.tinymodel import build_tiny_model

    options = {"layers": 2, "hidden": 32, "heads": 2, "vocab_size": 200, "max_position": 128} | kwargs
    return build_tiny_model(out, vocabulary_texts(), **options)


def without_dropout(model: Path, out: Path) -> Path:
    shutil.copytree(model, out)
    config = json.loads((out / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (out / "config.json").write_text(json.dumps(config))
    return out


@pytest.fixture(scope="session")
def one_thread() -> None:
    """Train tests use one intra-op thread: on a busy 2-core box, two OpenMP threads spin
    against other processes and a tiny model's step gets 30-70x slower. (Not autouse:
    torch-free tests must not pay for importing torch.)"""
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory, one_thread: None) -> Path:
    """hidden 32, 2 layers, 2 heads, a 200-piece WordPiece vocabulary."""
    return build_model(tmp_path_factory.mktemp("models") / "tiny-bert")


@pytest.fixture(scope="session")
def tiny_model_no_dropout(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return without_dropout(tiny_model, tmp_path_factory.mktemp("models") / "tiny-bert-no-dropout")


TASK_FIELDS = {
    "classification": {"type": "classification", "text_field": "text", "label_field": "label"},
    "pair": {"type": "classification", "text_field": "a", "text_pair_field": "b", "label_field": "label"},
    "multilabel": {"type": "multilabel", "text_field": "text", "label_field": "topics"},
    "regression": {"type": "regression", "text_field": "a", "text_pair_field": "b", "label_field": "score"},
    "tokens": {"type": "token_classification", "text_field": "tokens", "label_field": "tags"},
}


class Jobs:
    """Writes data files, job specs and run directories under one tmp folder."""

    def __init__(self, base: Path, model: Path):
        self.base, self.model = base, model

    def task(self, kind: str, n: int = 64, *, n_eval: int = 0, seed: int = 0, name: str | None = None,
             labels: bool = True, long: int = 0, **overrides: Any) -> dict[str, Any]:
        name = name or kind
        task = {"name": name, **TASK_FIELDS[kind], "train": str(write_jsonl(self.base / "data" / f"{name}.train.jsonl",
                                                                            make_rows(kind, n, seed, long=long)))}
        if n_eval:
            task["eval"] = str(write_jsonl(self.base / "data" / f"{name}.eval.jsonl", make_rows(kind, n_eval, seed + 1000, long=long)))
        if labels and kind in TASK_LABELS:
            task["labels"] = TASK_LABELS[kind]
        return task | overrides

    def spec(self, tasks: list[dict[str, Any]], *, model: Path | None = None, max_length: int = 64, **train: Any):
        from mtld.jobspec import spec_from_dict

        raw = {"name": "test", "model": str(model or self.model), "max_length": max_length, "tasks": tasks,
               "train": {"epochs": 2, "learning_rate": 1e-3, "effective_batch_size": 8, "checkpoint_every": 1000} | train}
        return spec_from_dict(raw, base_dir=self.base, shown_as="test.toml", check_data=False)

    def run_dir(self, spec: Any, *, micro_batch: int = 2, name: str = "run", **launch: Any) -> Path:
        from mtld.rundir import Launch, RunDir

        rd = RunDir(self.base / name)
        rd.write_job(spec)
        rd.write_launch(Launch(micro_batch=micro_batch, device="cpu", job_id=7, run_id=11, **launch))
        return rd.path


@pytest.fixture
def jobs(tmp_path: Path, tiny_model: Path) -> Jobs:
    return Jobs(tmp_path, tiny_model)


@pytest.fixture(scope="session")
def make_jobs(tiny_model: Path):
    """make_jobs(base, model=None) -> Jobs, for module-scoped fixtures."""
    return lambda base, model=None: Jobs(Path(base), Path(model or tiny_model))


def events(run_dir: Path, name: str | None = None) -> list[dict[str, Any]]:
    lines = (run_dir / "run.jsonl").read_text(encoding="utf-8").splitlines()
    found = [json.loads(line) for line in lines if line.strip()]
    return [e for e in found if name is None or e["event"] == name]


@pytest.fixture
def read_events():
    """read_events(run_dir, name=None) -> the run log's events, oldest first."""
    return events


@pytest.fixture(scope="session")
def data_rows():
    """data_rows(kind, n, seed=0) -> synthetic rows, the same generator as the training data."""
    return make_rows


@pytest.fixture(scope="session")
def model_builder(one_thread: None):
    """model_builder(out_dir, **build_tiny_model options) -> a tiny model on the test vocabulary."""
    return build_model
