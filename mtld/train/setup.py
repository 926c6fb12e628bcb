"""Building a run's parts from a job spec: tokenizer, data, model, plan, optimizer, step runner.

Loading is where bad input shows: every failure to read the data, the
tokenizer or the model becomes BadInput with a message naming what and where.
Data is read before the model is loaded, so a bad row is reported without
waiting for a large model.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from mtld.config.jobspec import JobSpec
from mtld.decide.dropout import resolve_attention_dropout
from mtld.decide.precision import Precision
from mtld.platform.machine import precision_for
from mtld.config.taskrows import DataError
from mtld.train.data import TaskData, load_tasks
from mtld.train.device import amp_dtype, is_oom, seed_everything
from mtld.train.errors import BadInput, missing_package_message
from mtld.train.guard import Guard
from mtld.train.model import MultiTaskModel, attention_dropout_in, load_encoder, load_tokenizer
from mtld.train.optim import make_optimizer, make_scheduler
from mtld.train.plan import Step, epoch_plan
from mtld.train.signals import StopFlag
from mtld.train.step import StepRunner, autocast_mismatch


@dataclass
class Parts:
    tokenizer: Any
    tasks: list[TaskData]
    model: MultiTaskModel
    plans: list[list[Step]]
    optimizer: torch.optim.Optimizer
    optimizer_kind: str
    scheduler: Any
    runner: StepRunner
    fingerprint: str
    precision: Precision = "off"
    precision_reason: str = ""
    attention_dropout: float | None = None  # what the attention layers apply in training (None: none found)
    attention_dropout_reason: str = ""

    @property
    def amp(self) -> torch.dtype | None:
        """The autocast dtype the precision means (None: fp32)."""
        return amp_dtype(self.precision)


def build(spec: JobSpec, device: torch.device, micro_batch: int, *, stop: StopFlag, guard: Guard, log: Any) -> Parts:
    seed_everything(spec.train.seed)  # the heads' initial weights
    tokenizer = _load(lambda: load_tokenizer(spec.tokenizer or spec.model, trust_remote_code=spec.trust_remote_code),
                      "the tokenizer", spec.tokenizer or spec.model)
    try:
        tasks = load_tasks(spec, tokenizer)
    except DataError as e:
        raise BadInput(str(e)) from None
    except OSError as e:  # a data file gone or unreadable since the job was submitted
        raise BadInput(f"cannot read {e.filename}: {e.strerror}") from None
    dropout, dropout_reason = resolve_attention_dropout(spec.train.attention_dropout, device.type)
    encoder = _load(lambda: load_encoder(spec.model, trust_remote_code=spec.trust_remote_code, attention_dropout=dropout),
                    "the model", spec.model)
    model = MultiTaskModel(encoder, [t.info for t in tasks]).to(device).train()
    # torch.compile is decided once the plan left to the attempt is known (mtld.train.attempt: compile_decision)

    train = spec.train
    lengths = [t.train.lengths for t in tasks]
    plans = [
        epoch_plan(lengths, batch_size=train.effective_batch_size, seed=train.seed, epoch=e,
                   strategy=train.sampling, temperature=train.temperature)
        for e in range(train.epochs)
    ]
    optimizer, optimizer_kind = make_optimizer(model, train)
    scheduler = make_scheduler(optimizer, train, sum(len(p) for p in plans))
    fingerprint = job_fingerprint(spec, tasks)
    for task in tasks:
        task.train.to(device)
        if task.eval is not None:
            task.eval.to(device)
    precision, precision_reason = checked_precision(device, *precision_for(train.mixed_precision, device.type))
    amp = amp_dtype(precision)
    runner = StepRunner(model, tasks, optimizer, scheduler, device=device, micro_batch=micro_batch,
                        max_grad_norm=train.max_grad_norm, amp=amp, stop=stop, guard=guard, log=log)
    return Parts(tokenizer, tasks, model, plans, optimizer, optimizer_kind, scheduler, runner, fingerprint,
                 precision, precision_reason, attention_dropout_in(encoder), dropout_reason)


def checked_precision(device: torch.device, precision: Precision, reason: str) -> tuple[Precision, str]:
    """What the run really trains in: the rule's answer (mtld.decide.precision) if autocast on this device and
    this torch produces its dtype, else fp32, with what was found (so no record says bf16 of a fp32 run)."""
    dtype = amp_dtype(precision)
    if dtype is None:
        return precision, reason
    found = autocast_mismatch(device, dtype)
    if found is None:
        return precision, reason
    return "off", f"{reason}, but autocast to {precision} on {device.type} with torch {torch.__version__} failed: {found}: fp32"


def _load(load: Callable[[], Any], what: str, where: str) -> Any:
    """Turn any failure to load a model or tokenizer folder into a message for a person."""
    try:
        return load()
    except ImportError as e:
        raise BadInput(missing_package_message(e, f"{what} in {where}")) from None
    except Exception as e:
        if is_oom(e):
            raise
        raise BadInput(f"cannot load {what} from {where}: {type(e).__name__}: {e}") from None


def job_fingerprint(spec: JobSpec, tasks: list[TaskData]) -> str:
    """What must not change between attempts for a resume to be exact: settings and tokenized data."""
    train = spec.train.model_dump(mode="json", exclude={"batch_size", "eval_every", "checkpoint_every", "keep_checkpoints"})
    # As job files said it before "auto"/"bf16"/"fp16"/"off" and `compile`: checkpoints written then still resume.
    train["mixed_precision"] = {"off": False, "auto": True}.get(train["mixed_precision"], train["mixed_precision"])
    if train["compile"] is not True:  # false, and "auto" (a decision per attempt, not a setting of the run)
        del train["compile"]
    if train["attention_dropout"] == "auto":  # as before the setting: the default changes no fingerprint
        del train["attention_dropout"]
    about = {"model": spec.model, "max_length": spec.max_length, "train": train,
             "tasks": [{"name": t.info.name, "type": t.info.type, "labels": t.info.labels, "weight": t.info.weight} for t in tasks]}
    digest = hashlib.sha256(json.dumps(about, sort_keys=True).encode())
    for t in tasks:
        digest.update(t.train.input_ids.cpu().numpy().tobytes())
        digest.update(t.train.targets.cpu().numpy().tobytes())
    return digest.hexdigest()
