"""One optimizer step: micro-batches with gradient accumulation, OOM recovery, the guard.

The loss of every micro-batch is (sum of its per-unit losses) / U × task
weight, where U counts the units (examples, or labelled tokens for token
tasks) of the WHOLE step; the accumulated gradient is then the same whatever
the micro-batch size. The optimizer steps only when the whole effective batch
went through; an allocation failure halves the micro-batch and redoes the step
from its start, from the RNG state the step started with. A step whose loss or
gradient norm is NaN or infinite changes nothing (no optimizer or scheduler
step): it is skipped, like torch.amp.GradScaler skips a step with inf/NaN
gradients, and for the same price, one device sync per step. Under fp16 the
GradScaler itself scales the loss and skips a step whose gradients overflowed
(lowering the scale, as it should: torch/amp/grad_scaler.py); only a
non-finite loss counts as a skipped step there.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from mtld.train.data import TaskData
from mtld.train.device import device_used_bytes, empty_cache, is_oom, malloc_trim, set_rng_states, torch_rng_states
from mtld.train.guard import Guard
from mtld.train.inference import autocast
from mtld.train.model import MultiTaskModel, loss_sum
from mtld.train.plan import Step
from mtld.train.signals import StopFlag

MIN_MICRO_BATCH = 2
Outcome = Literal["done", "stopped", "out_of_memory", "skipped"]
GUARD_REASONS = ("pressure", "budget", "memory_guard")  # scale-downs a guard asked for: free what is cached


@dataclass
class StepResult:
    outcome: Outcome
    loss: torch.Tensor | None = None  # weighted mean loss of the step, still on the device
    padded_tokens: int = 0  # of the micro-batches that made the final, successful pass
    skipped: str | None = None  # why a skipped step changed nothing (its loss or gradient norm was not finite)


class StepRunner:
    def __init__(
        self,
        model: MultiTaskModel,
        tasks: list[TaskData],
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        *,
        device: torch.device,
        micro_batch: int,
        max_grad_norm: float,
        amp: torch.dtype | None,
        stop: StopFlag,
        guard: Guard,
        log: Any,
    ):
        self.model, self.tasks, self.optimizer, self.scheduler = model, tasks, optimizer, scheduler
        self.device, self.micro_batch, self.max_grad_norm, self.amp = device, micro_batch, max_grad_norm, amp
        self.stop, self.guard, self.log = stop, guard, log
        self.scaled_down = False
        self.oom_count = 0
        self.nonfinite_in_a_row = 0
        self.skipped_steps = 0
        self.trim_heap = True  # CPU: malloc_trim after a guard's scale-down (bench.trim measures with it off)
        self.stop_reason: str | None = None  # "signal" or "memory_critical" once stopped
        self.last_oom: str | None = None
        self._params = [p for p in model.parameters() if p.requires_grad]
        # fp16 needs loss scaling (bf16 has fp32's range and does not); its state goes into checkpoints.
        # On MPS only from torch 2.8 (its MPS kernels, pytorch#150255): mtld.decide.precision says fp32 before.
        self.scaler = torch.amp.GradScaler(device.type) if amp == torch.float16 else None

    def run(self, step: Step, number: int, index: torch.Tensor | None = None) -> StepResult:
        """Gradients of the whole step, then clip, optimizer and scheduler step.

        `index`: the step's ids already on the device (see Trainer.device_ids).
        """
        start_rng = torch_rng_states(self.device)
        self.guard.at_step(number)
        retried_at_min = False
        while True:
            result = self.accumulate(step, number, index)
            if result.outcome == "done":
                break
            self.optimizer.zero_grad(set_to_none=True)
            set_rng_states(start_rng)  # the checkpoint or the redo starts from the step's start
            if result.outcome == "stopped":
                return result
            empty_cache(self.device)
            self.oom_count += 1
            if self.micro_batch <= MIN_MICRO_BATCH:
                if retried_at_min:
                    return result
                retried_at_min = True  # once more after freeing everything: fragmentation may have been it
            else:
                self.scale_down("out_of_memory", number, detail=self.last_oom)
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)  # clip the true gradients
        if self.max_grad_norm > 0:
            norm = torch.nn.utils.clip_grad_norm_(self._params, self.max_grad_norm)
        else:
            # new in torch 2.6 (torch/nn/utils/__init__.py, pytorch#139662): the floor in pyproject.toml
            norm = torch.nn.utils.get_total_norm([p.grad for p in self._params if p.grad is not None])
        if why := nonfinite(result.loss, norm if self.scaler is None else None):
            self.optimizer.zero_grad(set_to_none=True)
            if self.scaler is not None:
                self.scaler.update()  # ends the step unscale_ began
            self.nonfinite_in_a_row += 1
            self.skipped_steps += 1
            self.log.warning("step.skipped", step=number, reason=why, in_a_row=self.nonfinite_in_a_row)
            return StepResult("skipped", None, result.padded_tokens, skipped=why)
        self.nonfinite_in_a_row = 0
        if self.scaler is not None:
            self.scaler.step(self.optimizer)  # skipped by the scaler if the gradients overflowed
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return result

    def accumulate(self, step: Step, number: int, index: torch.Tensor | None = None) -> StepResult:
        """Forward and backward over the step's micro-batches; gradients left in the parameters.

        Each micro-batch's loss is its unit-loss sum / U × task weight, U being
        the units of the whole step, so the sum of the gradients is the same
        for any micro-batch size.
        """
        task = self.tasks[step.task]
        kind, split = task.info.type, task.train
        scale = task.info.weight / max(int(split.units[step.ids].sum()), 1)
        total: torch.Tensor | None = None
        padded = 0
        position = 0
        while position < len(step.ids):
            advice = self.guard.advice()
            if self.stop.requested or advice == "interrupt":
                self.stop_reason = "signal" if self.stop.requested else "memory_critical"
                return StepResult("stopped")
            if advice == "scale_down":  # the guard says why: "pressure" or "budget"
                figures = {k: v for k, v in getattr(self.guard, "last_detail", {}).items() if k != "step"}
                self.scale_down(getattr(self.guard, "last_reason", None) or "memory_guard", number, **figures)
            ids = step.ids[position : position + self.micro_batch]
            on_device = index[position : position + self.micro_batch] if index is not None else None
            try:
                loss, width = self._micro_step(step.task, kind, split, ids, on_device, scale)
            except Exception as e:
                if not is_oom(e):
                    raise
                self.last_oom = f"{type(e).__name__}: {str(e)[:300]}"
                return StepResult("out_of_memory")  # leaving the except block frees the step's tensors
            total = loss if total is None else total + loss
            padded += len(ids) * width
            position += len(ids)
        return StepResult("done", total, padded)

    def _micro_step(self, task: int, kind: str, split: Any, ids: np.ndarray, index: torch.Tensor | None,
                    scale: float) -> tuple[torch.Tensor, int]:
        inputs, targets = split.batch(ids, index)
        with autocast(self.device, self.amp):
            logits = self.model(task, inputs)
        loss = loss_sum(kind, logits, targets) * scale
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()
        return loss.detach(), inputs["input_ids"].shape[1]

    def scale_down(self, reason: str, step: int, detail: str | None = None, **figures: Any) -> None:
        """Halve the micro-batch for the rest of the run; the effective batch stays."""
        if self.micro_batch <= MIN_MICRO_BATCH:
            return
        old, new = self.micro_batch, self.micro_batch // 2
        fields = {"detail": detail} if detail else {}
        self.micro_batch = new
        self.scaled_down = True
        if reason in GUARD_REASONS:
            fields.update(self.free_memory())
        self.log.warning("batch.scaled_down", **{"from": old, "to": new}, reason=reason, step=step,
                         **fields, **figures)

    def free_memory(self) -> dict[str, Any]:
        """After a guard's scale-down: hand the allocator's cached blocks back (torch.cuda.empty_cache,
        torch.mps.empty_cache: "releases all unoccupied cached memory"), as the OOM path does; on CPU also
        glibc's malloc_trim(0), without which the resident set does not fall at all (bench/trim.md). Says how
        far the device's figure (CPU: the process's) fell."""
        try:
            before = device_used_bytes(self.device)
            empty_cache(self.device)
            if self.device.type == "cpu" and self.trim_heap:
                malloc_trim()
            after = device_used_bytes(self.device)
        except Exception as e:  # a figure that cannot be read must not cost the run
            return {"freed_error": f"{type(e).__name__}: {e}"[:200]}
        return {"device_bytes_before": before, "device_bytes_after": after, "freed_bytes": before - after}


def nonfinite(loss: torch.Tensor | None, norm: torch.Tensor | None) -> str | None:
    """Why a step must not reach the optimizer (its loss or gradient norm is NaN or infinite), or None.
    One device sync in the common case; the figures are read only when something is wrong."""
    flags = [torch.isfinite(t) for t in (loss, norm) if t is not None]
    if not flags:
        return None
    if bool(flags[0] if len(flags) == 1 else flags[0] & flags[1]):
        return None
    if loss is not None and not bool(torch.isfinite(loss)):
        return f"loss is {float(loss)}"
    return f"gradient norm is {float(norm)}"


def autocast_mismatch(device: torch.device, dtype: torch.dtype) -> str | None:
    """None when one tiny op (a 2x2 matmul) under the autocast the steps use comes out in `dtype`; else what
    came out instead (with the warning torch gave) or what was raised. An older torch can accept the context
    and quietly run in fp32 (2.5 asked for bf16 on MPS warns "Disabling autocast", torch/amp/autocast_mode.py)
    or refuse the device outright (2.4 on MPS: "unsupported autocast device_type")."""
    square = torch.ones(2, 2, device=device)
    try:
        with warnings.catch_warnings(record=True) as caught, torch.no_grad():
            warnings.simplefilter("always")
            with autocast(device, dtype):
                produced = torch.mm(square, square).dtype
    except Exception as e:
        if is_oom(e):
            raise
        return f"{type(e).__name__}: {str(e)[:200]}"
    if produced == dtype:
        return None
    warned = next((str(w.message).splitlines()[0] for w in caught if str(w.message)), None)
    return f"a matmul came out {str(produced).removeprefix('torch.')}" + (f" (torch warned: {warned})" if warned else "")
