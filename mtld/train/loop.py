"""The run: epochs of planned steps, progress events, evaluation, checkpoints.

The position in the batch plan is (epoch, index of the next step in that
epoch's plan); `step` counts optimizer steps overall. A checkpoint is always
taken at a step boundary, so resuming from it replays exactly the steps that
were left. A step skipped for a non-finite loss still moves the position on
(its examples are passed over); `max_nonfinite_steps` of them in a row end
the run as failed, and weights that are not finite are never saved.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from mtld.config.sections import TrainSpec
from mtld.runs.rundir import RunDir, write_json_atomic
from mtld.runs.figures import Figures
from mtld.disk import DiskFull
from mtld.config.durations import checkpoint_interval
from mtld.train.board import NoBoard
from mtld.train.checkpoint import checkpoint_due, save_within_space, state_bytes
from mtld.train.data import TaskData
from mtld.train.device import MemoryMeter, all_finite, empty_cache, is_oom, rng_states, synchronize
from mtld.train.inference import Aborted, infer_split
from mtld.train.metrics import PRIMARY, aggregate_score, task_metrics
from mtld.train.eta import LiveEta, PlanTokens
from mtld.train.plan import Position, Step
from mtld.train.step import StepRunner
from mtld.train.threads import FixedThreads, ThreadGovernor
from mtld.train.timing import StepTimings

RunOutcome = Literal["succeeded", "interrupted", "out_of_memory", "failed"]
EVAL_BATCH_FACTOR = 4  # inference keeps no activations for backward: a few times the micro-batch fits


class NonFiniteWeights(Exception):
    """The model's weights hold NaN or inf: nothing may be saved from it."""


@dataclass
class Progress:
    """Running figures of this attempt (not of earlier attempts of the same run)."""

    samples: int = 0
    tokens: int = 0  # real (non-padding) tokens
    started: float = 0.0
    ended: float | None = None
    excluded: float = 0.0  # seconds spent evaluating, checkpointing and exporting
    window_start: float = 0.0
    window_excluded: float = 0.0
    window_samples: int = 0
    window_tokens: int = 0
    window_steps: int = 0
    window_loss: torch.Tensor | None = None


@dataclass
class EvalState:
    best_score: float | None = None
    best_step: int | None = None
    pending: bool = False  # an evaluation was cut short by a stop: run it first on resume
    history: list[dict[str, Any]] = field(default_factory=list)


class Trainer:
    """One attempt's loop over the batch plan, from the start or a checkpoint's state (`resume`). It feeds
    `eta` (mtld.train.eta.LiveEta) and logs what that answers; the torch model is `runner.model`."""

    def __init__(
        self,
        *,
        runner: StepRunner,
        tasks: list[TaskData],
        plans: list[list[Step]],
        spec: TrainSpec,
        run_dir: RunDir,
        device: torch.device,
        log: Any,
        export: Callable[[Path], None],
        checkpoint_extra: Callable[[], dict[str, Any]],
        progress_every_s: float,
        meter: MemoryMeter,
        timings: StepTimings | None = None,
        clock: Callable[[], float] = time.perf_counter,
        threads: ThreadGovernor | FixedThreads | None = None,
        history: Sequence[Figures] = (),
        max_nonfinite_steps: int = 10,
        disk_margin_bytes: int = 0,
        keep_last_checkpoint: bool = False,
        resume: dict[str, Any] | None = None,
        board: NoBoard | None = None,
        fence: Callable[[str], None] = lambda what: None,
    ):
        self.runner, self.tasks, self.plans, self.spec = runner, tasks, plans, spec
        self.run_dir, self.device, self.log, self.export = run_dir, device, log, export
        self.checkpoint_extra, self.progress_every_s, self.meter, self.clock = checkpoint_extra, progress_every_s, meter, clock
        self.position = Position()
        self.evals = EvalState()
        self.progress = Progress()
        self.timings = timings or StepTimings()  # the seam for per-step (padded tokens, seconds) records
        self.threads = threads or FixedThreads()
        self.board = board or NoBoard()  # TensorBoard (mtld.train.board): fed at progress and evaluation only
        self.max_nonfinite_steps = max_nonfinite_steps
        self.total_steps = sum(len(p) for p in plans)
        self.last_checkpoint_step = -1
        self.last_checkpoint_at = 0.0  # clock() of this attempt's start or its last checkpoint
        self.every_steps, self.every_s = checkpoint_interval(spec.checkpoint_every)
        self.disk_margin_bytes = disk_margin_bytes
        self.keep_last_checkpoint = keep_last_checkpoint  # else the last step's goes straight to model/ (see run())
        self.fence = fence  # before each write to the run folder: raises Superseded when a newer attempt owns it
        self.saved_bytes: dict[str, int] = {}  # checkpoint_bytes, export_bytes: what mtld.disk's need is made of
        self.message: str | None = None
        self._epoch_ids: tuple[int, torch.Tensor, np.ndarray] | None = None
        if resume is not None:
            self.restore(resume)
        evals = [t.eval.lengths if t.eval is not None else None for t in tasks]
        tokens = PlanTokens(plans, [t.train.lengths for t in tasks], evals)
        # history (Launch.history): the family's earlier runs and probes, the ETA's prior
        self.eta = LiveEta.for_attempt(tokens, spec, start=replace(self.position), micro_batch=runner.micro_batch,
                                       history=history)

    # ------------------------------------------------------------ the run

    def run(self) -> RunOutcome:
        self.log_estimate()
        self.progress.started = self.progress.window_start = self.last_checkpoint_at = self.clock()
        try:
            return self._run()
        except NonFiniteWeights as e:
            return self.failed(str(e))
        finally:
            synchronize(self.device)  # so the throughput figures count work still queued on a GPU
            self.progress.ended = self.clock()

    def _run(self) -> RunOutcome:
        if self.evals.pending and (ended := self.evaluate_or_end()):
            return ended
        last_eval_step = self.evals.history[-1]["step"] if self.evals.history else -1
        while self.position.epoch < len(self.plans):
            plan = self.plans[self.position.epoch]
            step = plan[self.position.index]
            started = self.clock()
            result = self.runner.run(step, self.position.step, self.device_ids(self.position.epoch, self.position.index))
            if result.outcome == "stopped":
                return self.stopped()
            if result.outcome == "out_of_memory":
                return self.out_of_memory(
                    f"out of memory at micro-batch {self.runner.micro_batch} on step {self.position.step}, twice: {self.runner.last_oom}"
                )
            if result.outcome == "skipped" and self.runner.nonfinite_in_a_row >= self.max_nonfinite_steps:
                latest = self.run_dir.latest_checkpoint()
                return self.failed(
                    f"{self.runner.nonfinite_in_a_row} optimizer steps in a row had a non-finite loss or gradient "
                    f"norm (the last, step {self.position.step}: {result.skipped}); none reached the weights, and "
                    f"the checkpoints ({latest.name if latest else 'none yet'}) and best/ are from before: lower "
                    "the learning rate or check the data")
            finished = self.clock()
            self.account(step, result.loss, result.padded_tokens, finished - started)
            epoch_end = self.position.advance(len(plan))
            self.maybe_progress(finished)
            self.threads.check(finished)
            number = self.position.step
            if (self.spec.eval_every and number % self.spec.eval_every == 0) or (epoch_end and not self.spec.eval_every):
                last_eval_step = number
                if ended := self.evaluate_or_end():
                    return ended
            due = epoch_end or checkpoint_due(self.every_steps, self.every_s, step=number,
                                              seconds_since=finished - self.last_checkpoint_at)
            # The last step goes straight to the export: a successful run removes its checkpoints, so one saved
            # here would be deleted a second later (2.6 s of 44 for the real encoder's one-epoch run). A crash
            # during the export loses no more than anywhere else: the last checkpoint is at most one
            # `checkpoint_every` (or one epoch) old.
            final = number == self.total_steps and not self.keep_last_checkpoint
            if due and not final and not self.runner.nonfinite_in_a_row:
                self.checkpoint()
        if last_eval_step != self.position.step and (ended := self.evaluate_or_end()):
            return ended
        started = self.clock()
        self.check_weights("the final model")
        self.export(self.run_dir.model_dir)
        self.exclude(self.clock() - started)
        self.timings.record_save(self.clock() - started)
        return "succeeded"

    def log_estimate(self) -> None:
        """run.estimate, when the family has history: this attempt's expected duration from its start step."""
        prior = self.eta.prior
        if prior is None:
            return
        predicted = prior.get("predicted_s")
        self.log.info("run.estimate", predicted_s=round(predicted, 1) if predicted else None,
                      basis=prior.get("basis", "unknown"), micro_batch=self.runner.micro_batch,
                      from_step=self.eta.start_step)

    def device_ids(self, epoch: int, index: int) -> torch.Tensor:
        """The step's example ids as a view into the epoch's ids, copied to the device once per
        epoch: a small host-to-device copy per micro-batch would sync CUDA every time."""
        if self._epoch_ids is None or self._epoch_ids[0] != epoch:
            plan = self.plans[epoch]
            flat = np.concatenate([s.ids for s in plan]).astype(np.int64)
            offsets = np.concatenate([[0], np.cumsum([len(s.ids) for s in plan])])
            self._epoch_ids = (epoch, torch.from_numpy(flat).to(self.device), offsets)
        _, flat, offsets = self._epoch_ids
        return flat[offsets[index] : offsets[index + 1]]

    def stopped(self) -> RunOutcome:
        path = self.checkpoint()
        reason = self.runner.stop_reason or "signal"
        stop = self.runner.stop
        self.message = f"stopped at step {self.position.step} of {self.total_steps} ({stop.name or reason})"
        self.log.info("run.interrupted", step=self.position.step, reason=reason, signal=stop.name, checkpoint=str(path) if path else None)
        return "interrupted"

    def failed(self, message: str) -> RunOutcome:
        """End the run without saving anything more (the model may be the problem)."""
        self.message = message
        self.log.error("run.failed", outcome="failed", error=message)
        return "failed"

    def out_of_memory(self, message: str) -> RunOutcome:
        empty_cache(self.device)
        self.checkpoint()
        self.message = message
        return "out_of_memory"

    # ------------------------------------------------------------ figures

    def account(self, step: Step, loss: torch.Tensor | None, padded: int, seconds: float) -> None:
        split = self.tasks[step.task].train
        real = int(split.lengths[step.ids].sum())
        p = self.progress
        p.samples += len(step.ids)
        p.tokens += real
        p.window_samples += len(step.ids)
        p.window_tokens += real
        p.window_steps += 1
        if loss is not None:
            p.window_loss = loss if p.window_loss is None else p.window_loss + loss
        self.timings.record(self.runner.micro_batch, padded, seconds)

    def maybe_progress(self, now: float) -> None:
        p = self.progress
        if now - p.window_start < self.progress_every_s or not p.window_steps:
            return
        loss = (p.window_loss / p.window_steps).item() if p.window_loss is not None else None  # the only sync
        elapsed = max(self.clock() - p.window_start - p.window_excluded, 1e-9)
        self.meter.sample()
        fields = dict(
            step=self.position.step,
            total=self.total_steps,
            epoch=self.position.epoch,
            loss=round(loss, 6) if loss is not None else None,
            samples_per_s=round(p.window_samples / elapsed, 2),
            tokens_per_s=round(p.window_tokens / elapsed, 1),
            micro_batch=self.runner.micro_batch,
            lr=self.runner.optimizer.param_groups[0]["lr"],
            eta_s=self.eta.eta_s(self.position, self.runner.micro_batch, self.timings),
        )
        self.log.info("step.progress", **fields)
        self.board.progress(self.position.step, fields, self.meter.peak_bytes() if self.board.on else None)
        p.window_start, p.window_excluded, p.window_samples, p.window_tokens, p.window_steps = self.clock(), 0.0, 0, 0, 0
        p.window_loss = None

    def exclude(self, seconds: float) -> None:
        """Time that is not training (evaluation, checkpoints, exports) stays out of the rates."""
        self.progress.excluded += seconds
        self.progress.window_excluded += seconds

    # ------------------------------------------------------------ evaluation

    def evaluate_or_end(self) -> RunOutcome | None:
        """Evaluate; returns an outcome when the run must end here instead."""
        try:
            if self.evaluate():
                return None
        except Exception as e:
            if not is_oom(e):
                raise
            message = f"out of memory in evaluation even one example at a time: {type(e).__name__}: {str(e)[:300]}"
        else:
            return self.stopped()
        return self.out_of_memory(message)

    def evaluate(self) -> bool:
        """Score every task that has eval data; export best/ on a new best. False if a stop cut it short."""
        if not any(t.eval is not None for t in self.tasks):
            self.evals.pending = False
            return True
        started = self.clock()
        self.log.info("eval.started", step=self.position.step)  # the daemon's watchdog allows an evaluation's time
        metrics: dict[str, dict[str, Any]] = {}
        batch_size = EVAL_BATCH_FACTOR * self.runner.micro_batch
        try:
            for i, task in enumerate(self.tasks):
                if task.eval is None:
                    continue
                pred = infer_split(
                    self.runner.model, i, task.info, task.eval, batch_size=batch_size,
                    amp=self.runner.amp, should_stop=lambda: self.runner.stop.requested,
                )
                gold = task.eval.gold_tags if task.info.is_token_task else task.eval.targets.cpu().numpy()
                metrics[task.info.name] = task_metrics(task.info.type, pred, gold)
        except Aborted:
            self.evals.pending = True
            self.runner.stop_reason = self.runner.stop_reason or "signal"
            return False
        self.evals.pending = False
        score = aggregate_score(metrics, {t.info.name: t.info.type for t in self.tasks})
        improved = (score is not None and math.isfinite(score)
                    and (self.evals.best_score is None or score > self.evals.best_score))
        if improved:
            self.check_weights("best/")
            self.evals.best_score, self.evals.best_step = score, self.position.step
            self.export(self.run_dir.best_dir)
        epochs_done = self.position.step / len(self.plans[0])
        record = {"step": self.position.step, "epoch": round(epochs_done, 3), "score": score, "best": improved, "tasks": metrics}
        self.evals.history.append(record)
        self.fence("metrics.json")
        write_json_atomic(self.run_dir.metrics_file, self.metrics_document())
        self.meter.sample()
        duration = self.clock() - started
        self.exclude(duration)
        self.timings.record_eval(self.runner.micro_batch, self.eta.tokens.eval_tokens, duration)
        self.log.info("eval", **record, duration_s=round(duration, 3))
        self.board.eval(self.position.step, record)
        return True

    def metrics_document(self) -> dict[str, Any]:
        return {
            "primary": "mean over tasks of macro_f1 (classification), micro_f1 (multilabel), spearman (regression), entity_f1 (tokens)",
            "primary_metrics": {t.info.name: PRIMARY[t.info.type] for t in self.tasks if t.eval is not None},
            "best_score": self.evals.best_score,
            "best_step": self.evals.best_step,
            "evals": self.evals.history,
        }

    # ------------------------------------------------------------ checkpoints

    def checkpoint(self) -> Path | None:
        """Save at the current step boundary (nothing to save before the first step)."""
        if self.position.step == 0 and not self.evals.history:
            return None
        if self.position.step == self.last_checkpoint_step:
            return self.run_dir.latest_checkpoint()
        started = self.clock()
        self.check_weights("a checkpoint")
        self.fence(f"the checkpoint of step {self.position.step}")
        state = {
            "step": self.position.step,
            "epoch": self.position.epoch,
            "index": self.position.index,
            "total_steps": self.total_steps,
            "micro_batch": self.runner.micro_batch,
            "model": self.runner.model.state_dict(),
            "optimizer": self.runner.optimizer.state_dict(),
            "scheduler": self.runner.scheduler.state_dict(),
            "scaler": self.runner.scaler.state_dict() if self.runner.scaler is not None else None,  # fp16 only
            "rng": rng_states(self.device),
            "best_score": self.evals.best_score,
            "best_step": self.evals.best_step,
            "eval_pending": self.evals.pending,
            "evals": self.evals.history,
            **self.checkpoint_extra(),
        }
        self.saved_bytes = {"checkpoint_bytes": state_bytes(state), "export_bytes": state_bytes(state["model"])}
        exports = sum(d.is_dir() for d in (self.run_dir.model_dir, self.run_dir.best_dir))
        try:
            path = save_within_space(self.run_dir.checkpoints, self.position.step, state, keep=self.spec.keep_checkpoints,
                                     export_bytes=self.saved_bytes["export_bytes"], exports_on_disk=exports,
                                     margin_bytes=self.disk_margin_bytes, log=self.log,
                                     commit=lambda: self.fence(f"the checkpoint of step {self.position.step}"))
        except DiskFull as e:  # the run stops; with this checkpoint when it still fitted
            if e.saved is not None:
                self.saved(e.saved, started)
            raise
        return self.saved(path, started)

    def saved(self, path: Path, started: float) -> Path:
        self.last_checkpoint_step = self.position.step
        self.last_checkpoint_at = self.clock()
        duration = self.clock() - started
        self.exclude(duration)
        self.timings.record_save(duration)
        self.log.info("checkpoint.saved", step=self.position.step, path=str(path), bytes=path.stat().st_size,
                      seconds=round(duration, 3))
        return path

    def check_weights(self, what: str) -> None:
        """Raise NonFiniteWeights before `what` is written from a model holding NaN or inf (one device sync)."""
        if not all_finite(self.runner.model.parameters()):
            latest = self.run_dir.latest_checkpoint()
            raise NonFiniteWeights(f"the model's weights are not finite at step {self.position.step}: {what} was not "
                                   f"written (the last checkpoint: {latest.name if latest else 'none'})")

    def restore(self, state: dict[str, Any]) -> None:
        self.position = Position(state["epoch"], state["index"], state["step"])
        self.evals = EvalState(state["best_score"], state["best_step"], state["eval_pending"], list(state["evals"]))
        self.last_checkpoint_step = state["step"]

    def finish_figures(self) -> dict[str, Any]:
        """Throughput of this attempt: examples and real tokens per second of training."""
        p = self.progress
        ended = p.ended if p.ended is not None else self.clock()
        seconds = max(ended - p.started - p.excluded, 1e-9) if p.started else 0.0
        return {
            "samples_per_s": round(p.samples / seconds, 3) if p.samples else None,
            "tokens_per_s": round(p.tokens / seconds, 1) if p.samples else None,
            "train_seconds": round(seconds, 3),
            "samples": p.samples,
            "timing": self.timings.as_dict(),
            **self.saved_bytes,
        }
