"""TensorBoard event files for a run, in its folder's tb/ (`logging.tensorboard`, or the job's `[logging]`).

Written only where the loop already holds the figures on the host: at each `step.progress` (the window's
mean loss, learning rate, samples/s, tokens/s, micro-batch, the run's peak memory) and at each evaluation
(every task's metrics and the aggregate score), never per step, so the step gains no device sync and no
I/O. Each moment is one event holding all its scalars (not an event per value). The writer is
torch.utils.tensorboard's SummaryWriter (the `tensorboard` package: `mtld[tensorboard]`): adding an event
only queues it, and its own thread writes the queue out (every `max_queue` events or `flush_secs`;
torch/utils/tensorboard/writer.py, FileWriter over tensorboard's EventFileWriter). The job's settings go in
once, as hparams. A resumed attempt purges what its predecessor wrote after the checkpoint's
step (SummaryWriter's `purge_step`), so the curves do not double back. One writer per run folder holds
here too: each moment is queued only after the attempt's fence says the folder is still its own
(mtld.runs.rundir.Fence; Superseded ends the attempt as any other write it may no longer make does).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from mtld.config.jobspec import JobSpec

PROGRESS = ("loss", "lr", "samples_per_s", "tokens_per_s", "micro_batch", "eta_s")
MAX_QUEUE = 1000  # events the writer's queue holds before its thread writes them out
FLUSH_S = 30  # and at the latest this often; close() writes the rest


class NoBoard:
    """TensorBoard off: every call does nothing."""

    on = False

    def progress(self, step: int, fields: Mapping[str, Any], peak_bytes: int | None = None) -> None:
        pass

    def eval(self, step: int, record: Mapping[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


class Board(NoBoard):
    on = True

    def __init__(self, folder: Path, *, hparams: dict[str, Any], purge_step: int | None = None,
                 fence: Callable[[str], None] = lambda what: None) -> None:
        from tensorboard.compat.proto.summary_pb2 import Summary
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams as hparams_summaries

        self.summary = Summary
        self.fence = fence
        self.writer = SummaryWriter(log_dir=str(folder), purge_step=purge_step, max_queue=MAX_QUEUE,
                                    flush_secs=FLUSH_S)
        for summary in hparams_summaries(hparams, {"eval/score": 0.0}):  # the metric's name; its values: eval()
            self.writer.file_writer.add_summary(summary)

    def scalars(self, step: int, values: Mapping[str, Any]) -> None:
        """One event holding every scalar of a moment (a progress event, an evaluation): one record to queue
        and write, where add_scalar would make one event per value."""
        kept = [self.summary.Value(tag=tag, simple_value=float(v)) for tag, v in values.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if kept:
            self.fence(f"tb/ (step {step})")
            self.writer.file_writer.add_summary(self.summary(value=kept), step)

    def progress(self, step: int, fields: Mapping[str, Any], peak_bytes: int | None = None) -> None:
        self.scalars(step, {**{f"train/{name}": fields.get(name) for name in PROGRESS}, "memory/peak_bytes": peak_bytes})

    def eval(self, step: int, record: Mapping[str, Any]) -> None:
        self.scalars(step, {"eval/score": record.get("score"),
                            **{f"eval/{task}/{metric}": value for task, metrics in (record.get("tasks") or {}).items()
                               for metric, value in metrics.items()}})

    def close(self) -> None:
        self.writer.close()


def wanted(spec: JobSpec, setting: bool) -> bool:
    """The job's own [logging] tensorboard, else the setting (launch.json's `tensorboard`)."""
    return spec.logging.tensorboard if spec.logging.tensorboard is not None else setting


def hparams_of(spec: JobSpec, micro_batch: int) -> dict[str, Any]:
    """The job's settings as TensorBoard's hparams take them (numbers, text, booleans)."""
    train = spec.train.model_dump(mode="json")
    out: dict[str, Any] = {"model": spec.model.rstrip("/").rsplit("/", 1)[-1], "max_length": spec.max_length,
                           "tasks": ",".join(f"{t.name}:{t.type}" for t in spec.tasks), "micro_batch_start": micro_batch}
    out.update({k: v for k, v in train.items() if isinstance(v, (int, float, str, bool))})
    return out


def open_board(folder: Path, spec: JobSpec, *, setting: bool, micro_batch: int, resumed_from: int | None,
               log: Any, fence: Callable[[str], None] = lambda what: None) -> NoBoard:
    """The run's board: a Board writing to `folder` when TensorBoard is wanted and installed, else NoBoard.
    `fence`: the attempt's Fence.check, asked before each moment is queued."""
    if not wanted(spec, setting):
        return NoBoard()
    try:
        fence("tb/")
        return Board(folder, hparams=hparams_of(spec, micro_batch), purge_step=resumed_from, fence=fence)
    except ImportError as e:  # torch.utils.tensorboard needs the tensorboard package: the run goes on without it
        log.warning("tensorboard.unavailable", error=str(e), advice="pip install 'mtld[tensorboard]'")
        return NoBoard()
