"""Task data: rows read through mtld.config.taskrows, label maps, tokenized once per run.

Every split becomes a few padded tensors that live on the device for the whole
run (a few MB even for tens of thousands of examples); a micro-batch is an
index into them sliced to its own longest example, rounded up to a multiple of
8. No tokenizing, collating or host-to-device copy of text happens per step.

Token classification: words are tokenized with `is_split_into_words`; the
first sub-token of each word carries the word's tag, the other sub-tokens and
special tokens get -100 (ignored by the loss). Words cut off by truncation
keep their gold tags for evaluation and are predicted as "O".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mtld.config.jobspec import JobSpec, TaskSpec
from mtld.config.taskrows import MAX_LINE_CHARS, DataError, Example, label_names, parse_example, read_rows, unseen_label
from mtld.train.plan import pad_to_multiple

IGNORE = -100
OUTSIDE = "O"


@dataclass(frozen=True)
class TaskInfo:
    """What a trained head needs to be used again: saved in the model folder as tasks.json."""

    name: str
    type: str
    labels: list[str]
    text_field: str
    text_pair_field: str | None
    label_field: str
    weight: float = 1.0

    @property
    def out_dim(self) -> int:
        return 1 if self.type == "regression" else len(self.labels)

    @property
    def is_token_task(self) -> bool:
        return self.type == "token_classification"

    @classmethod
    def from_spec(cls, task: TaskSpec, labels: list[str]) -> TaskInfo:
        return cls(task.name, task.type, labels, task.text_field, task.text_pair_field, task.label_field, task.weight)


@dataclass
class Encoded:
    """Token ids of a list of inputs, before padding."""

    input_ids: list[list[int]]
    token_type_ids: list[list[int]] | None
    word_starts: list[np.ndarray] | None = None  # token tasks: first sub-token of each word, -1 if cut off


@dataclass
class Split:
    """One data file of one task, tokenized and padded, ready to be indexed by example ids."""

    input_ids: torch.Tensor  # (n, L) long
    attention_mask: torch.Tensor  # (n, L) long
    token_type_ids: torch.Tensor | None
    lengths: np.ndarray  # (n,) real tokens per example
    targets: torch.Tensor | None  # (n,) long | (n, C) float | (n,) float | (n, L) long
    units: np.ndarray  # (n,) loss units: 1 per example, or labelled tokens for token tasks
    word_starts: list[np.ndarray] | None = None
    gold_tags: list[list[str]] | None = None  # token tasks: every word's tag, truncated ones too
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def __len__(self) -> int:
        return len(self.lengths)

    def to(self, device: torch.device) -> Split:
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device)

        self.input_ids, self.attention_mask = move(self.input_ids), move(self.attention_mask)
        self.token_type_ids, self.targets = move(self.token_type_ids), move(self.targets)
        self.device = device
        return self

    def batch(self, ids: np.ndarray, index: torch.Tensor | None = None) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        """Encoder inputs and targets of the examples `ids` (`index`: the same ids, on the device),
        padded to a multiple of 8. The width comes from host-side lengths: no device sync."""
        width = pad_to_multiple(int(self.lengths[ids].max()))
        if index is None:
            index = torch.from_numpy(np.ascontiguousarray(ids, dtype=np.int64)).to(self.device)
        inputs = {"input_ids": self.input_ids[index, :width], "attention_mask": self.attention_mask[index, :width]}
        if self.token_type_ids is not None:
            inputs["token_type_ids"] = self.token_type_ids[index, :width]
        targets = None
        if self.targets is not None:
            targets = self.targets[index, :width] if self.word_starts is not None else self.targets[index]
        return inputs, targets


@dataclass
class TaskData:
    info: TaskInfo
    train: Split
    eval: Split | None


# ---------------------------------------------------------------- reading


def read_examples(task: TaskSpec, path: Path, labels: Sequence[str] | None, *, max_line_chars: int = MAX_LINE_CHARS,
                  learned_from: Path | None = None) -> list[Example]:
    """Every row of the file, checked (a line longer than `max_line_chars` is refused); with `labels`, every
    label must be in it: the job's label list, or the labels of the training data (`learned_from`)."""
    known = set(labels) if labels is not None else None
    examples = []
    for line, row in read_rows(path, max_line_chars):
        example = parse_example(task.fields, row, path, line)
        if known is not None:
            unknown = [n for n in label_names(example, task.type) if n not in known]
            if unknown:
                if learned_from is not None:
                    raise DataError(path, unseen_label(unknown[0], learned_from), line)
                raise DataError(path, f"label {unknown[0]!r} is not in the label list of task {task.name!r}", line)
        examples.append(example)
    if not examples:
        raise DataError(path, "has no rows")
    return examples


def label_list(task: TaskSpec, examples: Sequence[Example]) -> list[str]:
    """The job's label list, or (when it has none) every label the data uses, sorted."""
    if task.type == "regression":
        return []
    if task.labels is not None:
        return list(task.labels)
    return sorted({name for ex in examples for name in label_names(ex, task.type)})


def load_task(task: TaskSpec, tokenizer: Any, max_length: int, max_line_chars: int = MAX_LINE_CHARS) -> TaskData:
    """A task's files, checked as at submit: without a label list, the classes are the training data's, and
    an eval label outside them is refused (it would be a class no example teaches)."""
    train = read_examples(task, task.train, task.labels, max_line_chars=max_line_chars)
    labels = label_list(task, train)
    evaluation = None
    if task.eval:
        learned = None if task.labels is not None or task.type == "regression" else task.train
        evaluation = read_examples(task, task.eval, labels if task.type != "regression" else None,
                                   max_line_chars=max_line_chars, learned_from=learned)
    info = TaskInfo.from_spec(task, labels)
    return TaskData(
        info,
        make_split(info, train, tokenizer, max_length),
        make_split(info, evaluation, tokenizer, max_length) if evaluation else None,
    )


def load_tasks(spec: JobSpec, tokenizer: Any) -> list[TaskData]:
    return [load_task(task, tokenizer, spec.max_length, spec.max_line_chars) for task in spec.tasks]


# ---------------------------------------------------------------- tokenizing


def encode_texts(tokenizer: Any, texts: Sequence[str], pairs: Sequence[str] | None, max_length: int) -> Encoded:
    """Single sentences or sentence pairs; a long pair is cut from the longer side first."""
    enc = tokenizer(
        list(texts), list(pairs) if pairs is not None else None, truncation="longest_first", max_length=max_length,
        padding=False, return_attention_mask=False, return_token_type_ids=True,
    )
    return Encoded(enc["input_ids"], enc.get("token_type_ids"))


def encode_words(tokenizer: Any, words: Sequence[Sequence[str]], max_length: int) -> Encoded:
    """Pre-split words; remembers where each word's first sub-token landed."""
    if not getattr(tokenizer, "is_fast", False):
        return _encode_words_slow(tokenizer, words, max_length)
    enc = tokenizer(
        [list(w) for w in words], is_split_into_words=True, truncation=True, max_length=max_length,
        padding=False, return_attention_mask=False, return_token_type_ids=True,
    )
    starts = []
    for i, sentence in enumerate(words):
        first = np.full(len(sentence), -1, dtype=np.int64)
        previous = None
        for position, word in enumerate(enc.word_ids(i)):
            if word is not None and word != previous:
                first[word] = position
            previous = word
        starts.append(first)
    return Encoded(enc["input_ids"], enc.get("token_type_ids"), starts)


def _encode_words_slow(tokenizer: Any, words: Sequence[Sequence[str]], max_length: int) -> Encoded:
    """Python tokenizers (e.g. Japanese MeCab BERTs) have no word_ids(): tokenize word by word."""
    room = max_length - tokenizer.num_special_tokens_to_add(pair=False)
    offset = 1 if tokenizer.cls_token_id is not None else 0
    ids_out, types_out, starts = [], [], []
    for sentence in words:
        pieces: list[int] = []
        first = np.full(len(sentence), -1, dtype=np.int64)
        for w, word in enumerate(sentence):
            sub = tokenizer.convert_tokens_to_ids(tokenizer.tokenize(word))
            if sub and len(pieces) < room:
                first[w] = len(pieces) + offset
            pieces.extend(sub)
        ids = tokenizer.build_inputs_with_special_tokens(pieces[:room])
        ids_out.append(ids)
        types_out.append([0] * len(ids))
        starts.append(first)
    return Encoded(ids_out, types_out, starts)


def encode_inputs(info: TaskInfo, tokenizer: Any, texts: Sequence[Any], pairs: Sequence[str] | None, max_length: int) -> Encoded:
    if info.is_token_task:
        return encode_words(tokenizer, texts, max_length)
    return encode_texts(tokenizer, texts, pairs, max_length)


def make_split(info: TaskInfo, examples: Sequence[Example], tokenizer: Any, max_length: int) -> Split:
    texts = [ex.text for ex in examples]
    pairs = [ex.pair for ex in examples] if info.text_pair_field else None
    encoded = encode_inputs(info, tokenizer, texts, pairs, max_length)
    split = pad_split(encoded, tokenizer.pad_token_id or 0)
    index = {name: i for i, name in enumerate(info.labels)}
    n, width = split.input_ids.shape
    if info.type == "classification":
        split.targets = torch.tensor([index[ex.label] for ex in examples], dtype=torch.long)
    elif info.type == "multilabel":
        split.targets = torch.zeros(n, len(info.labels), dtype=torch.float32)
        for i, ex in enumerate(examples):
            split.targets[i, [index[name] for name in ex.label]] = 1.0
    elif info.type == "regression":
        split.targets = torch.tensor([float(ex.label) for ex in examples], dtype=torch.float32)
    else:
        targets = np.full((n, width), IGNORE, dtype=np.int64)
        for i, (ex, starts) in enumerate(zip(examples, encoded.word_starts)):
            kept = starts >= 0
            targets[i, starts[kept]] = [index[tag] for tag, k in zip(ex.label, kept) if k]
        split.targets = torch.from_numpy(targets)
        split.units = (targets != IGNORE).sum(axis=1)
        split.gold_tags = [list(ex.label) for ex in examples]
    return split


def pad_split(encoded: Encoded, pad_id: int) -> Split:
    lengths = np.array([len(ids) for ids in encoded.input_ids], dtype=np.int64)
    n, width = len(lengths), pad_to_multiple(int(lengths.max()))
    input_ids = np.full((n, width), pad_id, dtype=np.int64)
    mask = np.zeros((n, width), dtype=np.int64)
    types = np.zeros((n, width), dtype=np.int64) if encoded.token_type_ids is not None else None
    for i, ids in enumerate(encoded.input_ids):
        input_ids[i, : len(ids)] = ids
        mask[i, : len(ids)] = 1
        if types is not None:
            types[i, : len(ids)] = encoded.token_type_ids[i]
    return Split(
        input_ids=torch.from_numpy(input_ids),
        attention_mask=torch.from_numpy(mask),
        token_type_ids=torch.from_numpy(types) if types is not None else None,
        lengths=lengths,
        targets=None,
        units=np.ones(n, dtype=np.int64),
        word_starts=encoded.word_starts,
    )
