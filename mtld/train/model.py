"""The multi-task model: one shared encoder, one small head per task.

Sequence tasks read the first ([CLS]) token; token classification reads every
token. `loss_sum` returns the SUM of per-unit losses (examples, or labelled
tokens) so the loop can divide by the unit count of the whole optimizer step:
that is what makes the gradient independent of the micro-batch size.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mtld.disk import make_private, private_dir
from mtld.train.data import IGNORE, TaskInfo
from mtld.train.layout import HEADS_FILE, MODEL_FORMAT, TASKS_FILE



def quiet_transformers() -> None:
    """No progress bars or prints: transformers' warnings go to our JSON log instead."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.disable_default_handler()
    hf_logging.enable_propagation()  # to the root logger, which mtld.logs.events routes into run.jsonl
    hf_logging.set_verbosity_warning()


def load_encoder(path: str | Path, *, trust_remote_code: bool, attention_dropout: float | None = None) -> nn.Module:
    """The encoder in float32 master weights whatever the checkpoint's dtype (mixed precision is autocast's
    job). `attention_dropout` (mtld.decide.dropout): the probability its attention layers are built with;
    None keeps the checkpoint's. The config keeps the checkpoint's value, so an export says what the
    checkpoint said (transformers reads it only when it builds the layers)."""
    from transformers import AutoConfig, AutoModel

    options: dict[str, Any] = {"local_files_only": True, "trust_remote_code": trust_remote_code}
    config = AutoConfig.from_pretrained(str(path), **options)
    name = attention_dropout_name(config)
    original = getattr(config, name) if name else None
    if name and attention_dropout is not None:
        setattr(config, name, attention_dropout)
    encoder = AutoModel.from_pretrained(str(path), config=config, dtype=torch.float32, **options)
    if name:
        setattr(encoder.config, name, original)
    return encoder


def attention_dropout_name(config: Any) -> str | None:
    """What the checkpoint's config calls its attention dropout, or None when it has none of the known names."""
    from mtld.decide.dropout import CONFIG_NAMES

    return next((n for n in CONFIG_NAMES if isinstance(getattr(config, n, None), (int, float))), None)


def attention_dropout_in(encoder: nn.Module) -> float | None:
    """The attention dropout the encoder's layers really apply in training: the p of the dropout modules of
    its attention layers (None when they have none, or disagree). What run.started records."""
    found = {m.dropout.p for m in encoder.modules()
             if type(m).__name__.endswith("Attention") and isinstance(getattr(m, "dropout", None), nn.Dropout)}
    return found.pop() if len(found) == 1 else None


def compile_encoder(model: MultiTaskModel) -> None:
    """`compile = true`: compile the encoder in place with TorchDynamo + inductor (nn.Module.compile, so the
    state_dict keys, checkpoints and exports stay as they are), with dynamic shapes: micro-batches come
    in many widths. Where the backend fails (no C++ compiler, an unsupported op, MPS's prototype
    backend) dynamo runs that code eagerly instead of ending the run (torch._dynamo.config.suppress_errors).
    Measured (bench/compile.md): 1.5-1.6x faster per step once warm, but tens of seconds to compile first."""
    import torch._dynamo

    torch._dynamo.config.suppress_errors = True
    model.encoder.compile(dynamic=True)


def load_tokenizer(path: str | Path, *, trust_remote_code: bool) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path), local_files_only=True, trust_remote_code=trust_remote_code)


class MultiTaskModel(nn.Module):
    def __init__(self, encoder: nn.Module, tasks: Sequence[TaskInfo]):
        super().__init__()
        self.encoder = encoder
        # BERT's pooler is not used: take it out of the forward pass (and of the
        # optimizer and checkpoints), but keep it aside so exported encoders stay
        # complete and load without warnings.
        self._aside = {"pooler": getattr(encoder, "pooler", None)}
        if self._aside["pooler"] is not None:
            encoder.pooler = None
        config = encoder.config
        hidden = config.hidden_size
        dropout = getattr(config, "classifier_dropout", None)
        if dropout is None:
            dropout = getattr(config, "hidden_dropout_prob", 0.1)
        std = getattr(config, "initializer_range", 0.02)
        self.heads = nn.ModuleList(_head(hidden, t.out_dim, dropout, std) for t in tasks)
        self.kinds = [t.type for t in tasks]
        # Segment ids go in only where the encoder has segments (BERT: yes; RoBERTa, DistilBERT: no),
        # whatever the tokenizer's model_input_names say (BertJapaneseTokenizer's omit them).
        accepts = "token_type_ids" in inspect.signature(encoder.forward).parameters
        self.token_types = accepts and getattr(config, "type_vocab_size", 0) > 1

    def forward(self, task: int, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        if not self.token_types:
            inputs = {k: v for k, v in inputs.items() if k != "token_type_ids"}
        hidden = self.encoder(**inputs).last_hidden_state
        if self.kinds[task] != "token_classification":
            hidden = hidden[:, 0]
        return self.heads[task](hidden)

    @contextlib.contextmanager
    def complete_encoder(self) -> Iterator[nn.Module]:
        """The encoder with its pooler back in place, for save_pretrained."""
        pooler = self._aside["pooler"]
        if pooler is not None:
            self.encoder.pooler = pooler.to(next(self.encoder.parameters()).device)
        try:
            yield self.encoder
        finally:
            if pooler is not None:
                self.encoder.pooler = None


def _head(hidden: int, out_dim: int, dropout: float, std: float) -> nn.Module:
    linear = nn.Linear(hidden, out_dim)
    nn.init.normal_(linear.weight, std=std)
    nn.init.zeros_(linear.bias)
    return nn.Sequential(nn.Dropout(dropout), linear)


def loss_sum(kind: str, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Sum over units of the per-unit loss (float32 even under autocast)."""
    logits = logits.float()
    if kind == "classification":
        return F.cross_entropy(logits, targets, reduction="sum")
    if kind == "multilabel":  # per example: mean BCE over the labels
        return F.binary_cross_entropy_with_logits(logits, targets, reduction="sum") / logits.shape[-1]
    if kind == "regression":
        return F.mse_loss(logits.squeeze(-1), targets, reduction="sum")
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE, reduction="sum")


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices only: not on biases or LayerNorm weights."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


# ---------------------------------------------------------------- the model folder


def save_model(model: MultiTaskModel, tokenizer: Any, tasks: Sequence[TaskInfo], out_dir: Path, *, max_length: int, extra: dict[str, Any]) -> None:
    """Write encoder, tokenizer, heads and label maps to a temporary folder, then rename it into place.

    `out_dir` is never half-written: it is either the previous complete export or the new one.
    """
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    private_dir(tmp)
    try:
        with model.complete_encoder() as encoder:
            encoder.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        torch.save({k: v.detach().cpu() for k, v in model.heads.state_dict().items()}, tmp / HEADS_FILE)
        description = {"format": MODEL_FORMAT, "max_length": max_length, "tasks": [asdict(t) for t in tasks], **extra}
        (tmp / TASKS_FILE).write_text(json.dumps(description, ensure_ascii=False, indent=2, default=str), encoding="utf-8")
        make_private(tmp)  # transformers writes its files with the umask's mode
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # a full disk: leave the earlier export, not a half-written one
        raise
    replace_dir(tmp, out_dir)


def replace_dir(new: Path, target: Path) -> None:
    """Swap a complete folder into place (a folder cannot be os.replace'd onto a full one)."""
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.replace(target, old)
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)


def load_model(model_dir: Path, device: torch.device) -> tuple[MultiTaskModel, Any, list[TaskInfo], int]:
    """A saved model folder back as (model in eval mode, tokenizer, tasks, max_length)."""
    description = json.loads((model_dir / TASKS_FILE).read_text(encoding="utf-8"))
    tasks = [TaskInfo(**t) for t in description["tasks"]]
    trust_remote_code = bool(description.get("trust_remote_code", False))  # as the job file said
    model = MultiTaskModel(load_encoder(model_dir, trust_remote_code=trust_remote_code), tasks)
    model.heads.load_state_dict(torch.load(model_dir / HEADS_FILE, map_location="cpu", weights_only=True))
    tokenizer = load_tokenizer(model_dir, trust_remote_code=trust_remote_code)
    return model.to(device).eval(), tokenizer, tasks, int(description["max_length"])
