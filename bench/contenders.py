"""The contenders: mtld's Trainer, a bare PyTorch loop and the transformers Trainer.

Every contender gets freshly built parts (same seed, same model weights, same
tokenized data, same optimizer: fused AdamW where the device has it) and runs
`steps` optimizer steps of an effective batch of `spec.train.effective_batch_size`
in micro-batches of `micro_batch`. Each returns a `Timing`: training seconds
(set-up, evaluation and export left out), examples and real tokens seen.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mtld.config.jobspec import JobSpec
from mtld.runs.rundir import RunDir
from mtld.train.data import IGNORE, Split
from mtld.train.device import MemoryMeter, synchronize
from mtld.train.guard import Guard, NoGuard
from mtld.train.loop import Trainer
from mtld.train.model import loss_sum
from mtld.train.plan import Step, pad_to_multiple
from mtld.train.setup import Parts, build
from mtld.train.signals import StopFlag

DEVICE = torch.device("cpu")


@dataclass
class Timing:
    seconds: float  # wall clock
    samples: int
    tokens: int  # real (non-padding) tokens
    cpu_seconds: float = 0.0  # CPU time of this process (all its threads) over the same span

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.seconds

    @property
    def samples_per_cpu_s(self) -> float:
        """Unlike wall time, not inflated when other processes take the cores (with one torch thread)."""
        return self.samples / self.cpu_seconds

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds


class _NullLog:
    def __getattr__(self, name: str) -> Any:
        return lambda *a, **k: None


def make_parts(spec: JobSpec, micro_batch: int, guard: Guard | None = None) -> Parts:
    return build(spec, DEVICE, micro_batch, stop=StopFlag(), guard=guard or NoGuard(), log=_NullLog())


def first_steps(parts: Parts, steps: int) -> list[Step]:
    """The first `steps` steps of the run's plan (epochs chained)."""
    flat = [s for plan in parts.plans for s in plan]
    if len(flat) < steps:
        raise ValueError(f"the job has {len(flat)} steps, fewer than {steps}")
    return flat[:steps]


def real_tokens(parts: Parts, steps: list[Step], lengths: list[np.ndarray] | None = None) -> int:
    lengths = lengths or [t.train.lengths for t in parts.tasks]
    return int(sum(lengths[s.task][s.ids].sum() for s in steps))


def pad_fixed(parts: Parts, width: int) -> list[np.ndarray]:
    """Make every micro-batch `width` tokens wide: the splits padded to `width` and their
    lengths set to it (the loop reads widths from the lengths). Returns the real lengths."""
    real = []
    for task in parts.tasks:
        split: Split = task.train
        real.append(split.lengths.copy())
        extra = width - split.input_ids.shape[1]
        if extra > 0:
            pad = torch.nn.functional.pad
            split.input_ids = pad(split.input_ids, (0, extra), value=0)
            split.attention_mask = pad(split.attention_mask, (0, extra), value=0)
            if split.token_type_ids is not None:
                split.token_type_ids = pad(split.token_type_ids, (0, extra), value=0)
            if split.word_starts is not None:
                split.targets = pad(split.targets, (0, extra), value=IGNORE)
        split.lengths = np.full_like(split.lengths, width)
    return real


# ---------------------------------------------------------------- mtld


class _LoopOnly(Trainer):
    """mtld's Trainer with evaluation, checkpoints and export switched off: the loop itself
    (step runner, device ids, accounting, progress events) is untouched."""

    def evaluate_or_end(self) -> None:
        return None

    def checkpoint(self) -> None:
        return None


def run_mtld(spec: JobSpec, parts: Parts, steps: int, real_lengths: list[np.ndarray] | None = None) -> Timing:
    plan = first_steps(parts, steps)
    with tempfile.TemporaryDirectory(prefix="mtld-bench-") as tmp:
        trainer = _LoopOnly(
            runner=parts.runner, tasks=parts.tasks, plans=[plan], spec=spec.train, run_dir=RunDir(Path(tmp)),
            device=DEVICE, log=_NullLog(), export=lambda _: None, checkpoint_extra=dict, progress_every_s=5.0,
            meter=MemoryMeter(DEVICE),
        )
        cpu = time.process_time()
        outcome = trainer.run()
        cpu = time.process_time() - cpu
    if outcome != "succeeded":
        raise RuntimeError(f"mtld run ended {outcome}: {trainer.message}")
    p = trainer.progress
    return Timing(p.ended - p.started - p.excluded, p.samples, real_tokens(parts, plan, real_lengths), cpu)


# ---------------------------------------------------------------- bare loop


def run_bare(spec: JobSpec, parts: Parts, steps: int, micro_batch: int,
             real_lengths: list[np.ndarray] | None = None, amp: torch.dtype | None = None) -> Timing:
    """What a user would write: index the padded tensors, slice to the longest example of the
    micro-batch, forward (under autocast to `amp` if given), loss, backward; clip, step, zero.
    No guard, no accounting."""
    plan = first_steps(parts, steps)
    model, optimizer, scheduler = parts.model, parts.optimizer, parts.scheduler
    clip = spec.train.max_grad_norm
    started, cpu = time.perf_counter(), time.process_time()
    for step in plan:
        task = parts.tasks[step.task]
        split = task.train
        scale = task.info.weight / max(int(split.units[step.ids].sum()), 1)
        for i in range(0, len(step.ids), micro_batch):
            ids = step.ids[i : i + micro_batch]
            width = pad_to_multiple(int(split.lengths[ids].max()))
            index = torch.from_numpy(ids.astype(np.int64))
            inputs = {"input_ids": split.input_ids[index, :width], "attention_mask": split.attention_mask[index, :width]}
            if split.token_type_ids is not None:
                inputs["token_type_ids"] = split.token_type_ids[index, :width]
            targets = split.targets[index, :width] if split.word_starts is not None else split.targets[index]
            with torch.autocast("cpu", dtype=amp, enabled=amp is not None):
                logits = model(step.task, inputs)
            loss = loss_sum(task.info.type, logits, targets) * scale
            loss.backward()
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    synchronize(DEVICE)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    return Timing(seconds, sum(len(s.ids) for s in plan), real_tokens(parts, plan, real_lengths), cpu)


# ---------------------------------------------------------------- transformers Trainer


class _HFModel(torch.nn.Module):
    """The same multi-task model, task 0 only, in the shape the Trainer expects (mean loss)."""

    def __init__(self, parts: Parts):
        super().__init__()
        self.inner = parts.model
        self.kind = parts.tasks[0].info.type

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None,
                labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            inputs["token_type_ids"] = token_type_ids
        logits = self.inner(0, inputs)
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = loss_sum(self.kind, logits, labels) / len(labels)
        return out


def hf_rows(split: Split) -> list[dict[str, Any]]:
    """The split's examples unpadded, as the Trainer's data collator wants them."""
    rows = []
    for i, n in enumerate(split.lengths):
        n = int(n)
        row = {"input_ids": split.input_ids[i, :n].tolist(), "labels": split.targets[i].item()}
        if split.token_type_ids is not None:
            row["token_type_ids"] = split.token_type_ids[i, :n].tolist()
        rows.append(row)
    return rows


def run_hf(spec: JobSpec, parts: Parts, steps: int, micro_batch: int, *, fixed_width: int | None,
           group_by_length: bool, bf16: bool = False) -> Timing:
    """The transformers Trainer on task 0 of `parts` (single-task), timed from on_train_begin to
    on_train_end. `fixed_width`: pad every batch to it; None: pad each batch to its longest
    (multiple of 8), as mtld does. `bf16`: its own `bf16=True` (autocast through accelerate)."""
    from transformers import DataCollatorWithPadding, PrinterCallback, TrainerCallback, TrainingArguments
    from transformers import Trainer as HFTrainer

    split = parts.tasks[0].train
    if split.word_starts is not None:
        raise ValueError("the Trainer comparison takes a sequence-level task")
    rows = hf_rows(split)
    batch = spec.train.effective_batch_size
    if fixed_width:
        collator = DataCollatorWithPadding(parts.tokenizer, padding="max_length", max_length=fixed_width)
    else:
        collator = DataCollatorWithPadding(parts.tokenizer, padding="longest", pad_to_multiple_of=8)
    marks: dict[str, float] = {}

    class Clock(TrainerCallback):
        def on_train_begin(self, *a: Any, **k: Any) -> None:
            marks["begin"], marks["cpu_begin"] = time.perf_counter(), time.process_time()

        def on_train_end(self, *a: Any, **k: Any) -> None:
            synchronize(DEVICE)
            marks["end"], marks["cpu_end"] = time.perf_counter(), time.process_time()

    train = spec.train
    with tempfile.TemporaryDirectory(prefix="mtld-bench-hf-") as tmp:
        args = TrainingArguments(
            output_dir=tmp, per_device_train_batch_size=micro_batch, gradient_accumulation_steps=max(batch // micro_batch, 1),
            max_steps=steps, learning_rate=train.learning_rate, weight_decay=train.weight_decay,
            warmup_steps=int(train.warmup_ratio * steps), lr_scheduler_type="linear", max_grad_norm=train.max_grad_norm,
            optim="adamw_torch_fused", seed=train.seed, train_sampling_strategy="group_by_length" if group_by_length else "random",
            logging_strategy="no", save_strategy="no", eval_strategy="no", report_to="none", use_cpu=True,
            dataloader_num_workers=0, disable_tqdm=True, remove_unused_columns=False, bf16=bf16,
        )
        trainer = HFTrainer(model=_HFModel(parts), args=args, train_dataset=rows, data_collator=collator,
                            callbacks=[Clock()])
        trainer.remove_callback(PrinterCallback)  # it prints the final metrics dict
        trainer.train()
    samples = steps * batch
    mean_length = float(split.lengths.mean())  # the Trainer's order is its own: expected real tokens
    return Timing(marks["end"] - marks["begin"], samples, int(round(samples * mean_length)),
                  marks["cpu_end"] - marks["cpu_begin"])
