"""One attempt of a run: set up from the run directory, train, always leave result.json.

    run dir (job.json + launch.json) → load data, model, plan → resume from the
    newest checkpoint → train → model/, best/, metrics.json, result.json, exit status

Exit statuses (mtld.runs.exitcodes): 0 succeeded, 2 bad input, 75 interrupted
(checkpoint kept), 76 out of memory even at micro-batch 2 (checkpoint kept),
74 disk full (checkpointed if one still fitted; `disk.full` says how much is
needed where), 1 anything unexpected (`run.failed` carries the traceback),
73 superseded: a newer attempt owns the run folder (its generation,
mtld.runs.rundir.Fence), and this one stopped before its next write, writing
nothing more, not even result.json (it says so on stderr only).
After a success the checkpoints go (model/ and best/ stay; the last one too
with `disk.keep_last_checkpoint`).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from mtld.runs import exitcodes
from mtld import MICRO_BATCH_SIZES
from mtld.decide.policy import fit_effective_batch
from mtld.disk import DiskFull, free_bytes, is_disk_full, shortfall_text, space_needed, tree_bytes
from mtld.config.jobspec import JobFileError, JobSpec, check_semantics, spec_to_json
from mtld.logs.events import configure, get_logger
from mtld.runs.rundir import Fence, RunDir, Superseded
from mtld.runs.files import Launch, RunFileError, RunResult
from mtld.train.errors import BadInput
from mtld.train.guard import Guard, NoGuard
from mtld.train.procstats import peak_vm_bytes
from mtld.train.signals import StopFlag

FINISHED_FIELDS = (  # result.json fields repeated in the run.finished event
    "outcome", "exit_code", "step", "total_steps", "duration_s", "peak_memory_bytes",
    "samples_per_s", "tokens_per_s", "micro_batch_end", "best_score",
)


@dataclass
class Summary:
    """What result.json will say; filled in as the attempt gets further."""

    fields: dict[str, Any] = field(default_factory=dict)
    trainer: Any = None
    runner: Any = None
    meter: Any = None
    guard: Any = None  # the memory guard, when this attempt samples memory


def run_attempt(run_dir: Path, *, console: TextIO | None = None, guard: Guard | None = None) -> int:
    """Run one attempt; returns its exit status. See mtld.train.run_attempt."""
    rd = RunDir(run_dir)
    started = time.monotonic()
    launch, launch_error = _read_launch(rd)
    fence = Fence(rd, launch.generation if launch else None)
    try:
        fence.check("anything")  # started late (a cluster's queue): the folder is another attempt's already
    except Superseded as e:
        return _superseded(e)
    ids = (("job_id", launch.job_id), ("run_id", launch.run_id)) if launch else ()
    bind = {k: v for k, v in ids if v is not None}  # a foreground run has none
    configure(rd.log_file, console=console, bind=bind)
    log = get_logger()
    rd.result_file.unlink(missing_ok=True)  # a leftover of an earlier attempt must not pass for ours
    summary = Summary({"job_id": bind.get("job_id"), "run_id": bind.get("run_id")})
    stop = StopFlag()
    stop.install()
    outcome, message = "failed", None
    try:
        if launch is None:
            raise BadInput(launch_error)
        outcome = _train(rd, launch, log, stop, guard or NoGuard(), summary, fence)
        message = summary.trainer.message if summary.trainer else None
    except Superseded as e:  # the `finally` below still stops what this attempt started
        return _superseded(e)
    except BadInput as e:
        outcome, message = "bad_input", str(e)
        log.error("run.failed", outcome=outcome, error=message)
    except Exception as e:
        if is_disk_full(e):
            outcome, message = _disk_full(e, rd, launch, summary, log)
        else:
            outcome, message = _unexpected(e, log)
    finally:
        stop.restore()
        if summary.guard is not None:
            summary.guard.sampler.stop()
    if outcome in ("bad_input", "failed") and console is not sys.stderr:  # else the echo has said it
        sys.stderr.write(f"mtld train: {message}\n")
    summary.fields["disk_bytes"] = tree_bytes(rd.path)  # for `mtld status`: cached with the run's figures
    result = _result(outcome, message, summary, time.monotonic() - started)
    try:
        fence.check("result.json")
    except Superseded as e:
        return _superseded(e)
    try:
        rd.write_result(result)
    except OSError as e:  # a full disk: the exit status still tells the daemon what happened
        log.error("run.result_unwritten", path=str(rd.result_file), error=f"{type(e).__name__}: {e}")
    log.info("run.finished", **result.model_dump(mode="json", include=set(FINISHED_FIELDS)))
    return result.exit_code


def _superseded(error: Superseded) -> int:
    """A newer attempt owns the run folder: say so where the launcher's output goes (not in the folder) and
    exit without writing anything more."""
    sys.stderr.write(f"mtld: {error}\n")
    return exitcodes.SUPERSEDED


def _disk_full(exc: Exception, rd: RunDir, launch: Launch | None, summary: Summary, log: Any) -> tuple[str, str]:
    """A write failed for lack of space, or the free space is short of the rest of the run's need."""
    if not isinstance(exc, DiskFull):  # ENOSPC outside a checkpoint (an export, metrics.json)
        sizes = summary.trainer.saved_bytes if summary.trainer is not None else {}
        need = space_needed(checkpoint_bytes=sizes.get("checkpoint_bytes", 0), export_bytes=sizes.get("export_bytes", 0),
                            keep=1, checkpoints_on_disk=1, exports_on_disk=0,
                            margin_bytes=launch.disk.margin_bytes if launch else 0)
        exc = DiskFull(need, free_bytes(rd.path), rd.path, detail=f"{type(exc).__name__}: {exc}")
    summary.fields["disk_needed_bytes"] = exc.needed
    log.warning("disk.full", needed_bytes=exc.needed, free_bytes=exc.free, path=exc.path,
                checkpoint=str(exc.saved) if exc.saved else None, detail=exc.detail)
    return "disk_full", shortfall_text(exc.needed, exc.free, exc.path)


def _read_launch(rd: RunDir) -> tuple[Launch | None, str]:
    try:
        return rd.read_launch(), ""
    except FileNotFoundError:
        return None, f"{rd.launch_file} is missing"
    except RunFileError as e:
        return None, str(e)
    except OSError as e:
        return None, f"cannot read {rd.launch_file}: {e}"


def _unexpected(exc: Exception, log: Any) -> tuple[str, str]:
    message = f"{type(exc).__name__}: {exc}"
    if _is_oom(exc):  # outside a step (loading, optimizer state, evaluation): retry later, maybe smaller
        log.error("run.failed", outcome="out_of_memory", error=message)
        return "out_of_memory", message
    log.error("run.failed", outcome="failed", error=message, exc_info=exc)
    return "failed", message


def _is_oom(exc: Exception) -> bool:
    if "torch" not in sys.modules:  # failed before torch was loaded: not torch's allocator then
        return isinstance(exc, MemoryError)
    from mtld.train.device import is_oom

    return is_oom(exc)


def _result(outcome: str, message: str | None, summary: Summary, duration: float) -> RunResult:
    fields: dict[str, Any] = {"peak_vm_bytes": peak_vm_bytes(), "duration_s": round(duration, 3), **summary.fields}
    if summary.runner is not None:
        r = summary.runner
        fields.update(micro_batch_end=r.micro_batch, scaled_down=r.scaled_down, oom_count=r.oom_count,
                      skipped_steps=r.skipped_steps)
        if outcome == "interrupted":
            fields["stop_reason"] = r.stop_reason
    if summary.trainer is not None:
        t = summary.trainer
        fields.update(step=t.position.step, best_score=t.evals.best_score, best_step=t.evals.best_step, **t.finish_figures())
        latest = t.run_dir.latest_checkpoint()
        fields["checkpoint"] = str(latest) if latest else None
    if summary.meter is not None:
        fields["peak_memory_bytes"] = summary.meter.peak_bytes()
    return RunResult(outcome=outcome, exit_code=exitcodes.CODE[outcome], message=message, **fields)


# ---------------------------------------------------------------- set-up


def _train(rd: RunDir, launch: Launch, log: Any, stop: StopFlag, guard: Guard, summary: Summary, fence: Fence) -> str:
    import torch

    from mtld.train import device as dev
    from mtld.train.board import open_board
    from mtld.train.loop import Trainer
    from mtld.train.model import quiet_transformers, save_model
    from mtld.train.setup import build
    from mtld.train.threads import thread_policy

    spec = _read_job(rd)
    micro_batch = _micro_batch(rd, launch.micro_batch, spec.train.effective_batch_size)
    malloc_tuned = dev.tune_malloc()  # before the model and data are loaded: every allocation after it
    quiet_transformers()
    device = dev.pick_device(launch.device)
    dev.prepare(device, launch.memory_fraction)
    summary.meter = dev.MemoryMeter(device)
    if isinstance(guard, NoGuard) and launch.memory is not None:
        guard = summary.guard = _memory_guard(launch, device, log)
        summary.fields["budget_bytes"] = guard.budget_bytes
    summary.fields.update(device=device.type, micro_batch_start=micro_batch, micro_batch_end=micro_batch)
    parts = build(spec, device, micro_batch, stop=stop, guard=guard, log=log)
    summary.runner = parts.runner
    summary.fields["precision"] = parts.precision  # the family the run's figures belong to

    def export(out_dir: Path) -> None:
        fence.check(f"{out_dir.name}/")
        extra = {"job": json.loads(spec_to_json(spec)), "trust_remote_code": spec.trust_remote_code,
                 "step": trainer.position.step}
        save_model(parts.model, parts.tokenizer, [t.info for t in parts.tasks], out_dir, max_length=spec.max_length, extra=extra)

    summary.fields["total_steps"] = sum(len(p) for p in parts.plans)
    state = _resume(rd, parts.runner, parts.fingerprint, log)
    board = open_board(rd.path / "tb", spec, setting=launch.tensorboard, micro_batch=micro_batch,
                       resumed_from=int(state["step"]) if state is not None else None, log=log, fence=fence.check)
    trainer = Trainer(
        runner=parts.runner, tasks=parts.tasks, plans=parts.plans, spec=spec.train, run_dir=rd, device=device, log=log,
        export=export, checkpoint_extra=lambda: {"fingerprint": parts.fingerprint, "micro_batch_start": micro_batch},
        progress_every_s=launch.progress_every_s, meter=summary.meter,
        threads=thread_policy(launch.threads, device.type, log=log, every_s=launch.threads_every_s),
        history=launch.history, max_nonfinite_steps=launch.max_nonfinite_steps, disk_margin_bytes=launch.disk.margin_bytes,
        keep_last_checkpoint=launch.disk.keep_last_checkpoint, resume=state, board=board, fence=fence.check,
    )
    resumed = int(state["step"]) if state is not None else None
    compiled, compile_reason = _compile_if_decided(spec, device.type, parts.model, trainer, launch)
    summary.fields["compiled"] = compiled
    summary.trainer = trainer
    summary.fields["resumed_from_step"] = resumed
    train = spec.train
    log.info(
        "run.started", device=device.type, micro_batch=micro_batch,
        accumulation=-(-train.effective_batch_size // micro_batch), effective_batch=train.effective_batch_size,
        total_steps=trainer.total_steps, steps_per_epoch=len(parts.plans[0]), epochs=train.epochs, resumed_from_step=resumed,
        optimizer=parts.optimizer_kind, mixed_precision=parts.precision,  # as the child's autocast check found it
        mixed_precision_reason=parts.precision_reason, torch=torch.__version__, compile=compiled,
        compile_reason=compile_reason,
        attention_dropout=parts.attention_dropout, attention_dropout_reason=parts.attention_dropout_reason,
        malloc_tuned=malloc_tuned,
        threads=torch.get_num_threads(), planned_padded_tokens=trainer.eta.planned_padded_tokens(micro_batch),
        peak_vm_bytes=peak_vm_bytes(),  # address space after set-up (Linux): what RLIMIT_AS sees
        tasks=[{"name": t.info.name, "type": t.info.type, "train": len(t.train), "eval": len(t.eval) if t.eval else 0}
               for t in parts.tasks],
    )
    try:
        outcome = trainer.run()
    finally:
        board.close()  # what the writer's thread still holds
    if outcome == "succeeded":
        fence.check("the pruning of its checkpoints")
        _prune_after_success(rd, launch.disk.keep_last_checkpoint, log)
    return outcome


def _compile_if_decided(spec: JobSpec, device_type: str, model: Any, trainer: Any, launch: Launch) -> tuple[bool, str]:
    """train.compile, decided on the plan left to this attempt and the family's history (mtld.decide.compile);
    the encoder compiled in place when it says so (lazily: the work happens at the first step). The live
    ETA's prior is then taken from the runs that compiled as this one does."""
    from mtld.decide.compile import compile_for_plan
    from mtld.decide.runtime import run_record
    from mtld.train.eta import attempt_prior
    from mtld.train.model import compile_encoder

    records = [r for r in map(run_record, launch.history) if r is not None]
    compiled, reason = compile_for_plan(spec.train.compile, device_type=device_type, plan=trainer.eta.plan_left,
                                        records=records, micro_batch=trainer.runner.micro_batch)
    if compiled:
        compile_encoder(model)
    if trainer.eta.plan_left is not None:
        trainer.eta.prior = attempt_prior(trainer.eta.plan_left, micro_batch=trainer.runner.micro_batch,
                                          history=launch.history, compiled=compiled)
    return compiled, reason


def _prune_after_success(rd: RunDir, keep_last: bool, log: Any) -> None:
    """model/ and best/ are what a finished run is for; its checkpoints only resume it."""
    from mtld.train.checkpoint import prune

    if not rd.checkpoints.is_dir():
        return
    before = rd.checkpoint_files()
    prune(rd.checkpoints, 1 if keep_last else 0)
    if not keep_last:
        try:
            rd.checkpoints.rmdir()
        except OSError:  # something else is in there: not ours to remove
            pass
    log.info("checkpoint.pruned", removed=len(before) - len(rd.checkpoint_files()),
             kept=[str(p) for p in rd.checkpoint_files()])


def _memory_guard(launch: Launch, device: Any, log: Any) -> Any:
    """Sample memory pressure about once a second in a thread; the step loop asks the guard."""
    from mtld.memory import MemoryGuard, Sampler, budget_bytes, hysteresis, make_probe
    from mtld.train import device as dev

    settings = launch.memory
    probe = make_probe(settings)
    sampler = Sampler.from_settings(probe, settings, read_device=dev.memory_reader(device), log=log).start()
    reading = sampler.latest.reading if sampler.latest else None
    cgroup = reading.detail.get("cgroup_limit_bytes") if reading else None
    budget = budget_bytes(device_type=device.type, device_total=dev.total_memory_bytes(device),
                          cgroup_limit=cgroup, fraction=settings.budget_fraction)
    log.info("memory.guard", probe=type(probe).__name__, budget_bytes=budget, device=device.type,
             sample_every_s=settings.sample_every_s, decides=getattr(probe, "decides", None),
             dwell_s=settings.dwell_s, quiet_s=settings.quiet_s)
    return MemoryGuard(sampler, budget, hysteresis(settings))


def _read_job(rd: RunDir) -> JobSpec:
    try:
        spec = rd.read_job()
    except FileNotFoundError:
        raise BadInput(f"{rd.job_file} is missing") from None
    except ValueError as e:  # pydantic's ValidationError is a ValueError
        raise BadInput(f"{rd.job_file} is not a valid job: {e}") from None
    problems = check_semantics(spec, "job.json")
    if problems:
        raise BadInput(str(JobFileError(problems)))
    return spec


def _micro_batch(rd: RunDir, size: int, effective: int) -> int:
    """The size launch.json says, as given: the launcher decided it (mtld.decide.policy.fit_effective_batch
    keeps it within one optimizer step); any other size is not this child's to correct."""
    if size not in MICRO_BATCH_SIZES:
        raise BadInput(f"{rd.launch_file}: micro_batch - {size} is not one of {', '.join(map(str, MICRO_BATCH_SIZES))}")
    if (fitted := fit_effective_batch(size, effective)) != size:
        raise BadInput(f"{rd.launch_file}: micro_batch - {size} is larger than the job's effective batch {effective} "
                       f"(the launcher's size for it: {fitted})")
    return size


def _resume(rd: RunDir, runner: Any, fingerprint: str, log: Any) -> dict[str, Any] | None:
    """Load the newest readable checkpoint into the model, optimizer, scheduler and RNG; its state (the
    trainer takes the position and evaluations from it), or None to start from the beginning."""
    from mtld.train.checkpoint import Refused, load_checkpoint, quarantine
    from mtld.train.device import set_rng_states

    for path in reversed(rd.checkpoint_files()):
        try:
            state = load_checkpoint(path)
        except Refused as e:  # not ours: it may have been planted; never unpickled in full
            log.warning("checkpoint.refused", path=str(path), reason=str(e))
            quarantine(path, "refused", log)  # set aside: it must never count among the newest again
            continue
        except Exception as e:  # damaged (it should not be: writes are atomic); try the one before
            log.warning("checkpoint.unreadable", path=str(path), error=f"{type(e).__name__}: {e}")
            quarantine(path, "unreadable", log)
            continue
        if state.get("fingerprint") != fingerprint:
            raise BadInput(
                f"the checkpoints in {rd.checkpoints} were made by a different job (its data or settings changed): "
                "remove that folder to start over"
            )
        runner.model.load_state_dict(state["model"])
        runner.optimizer.load_state_dict(state["optimizer"])
        runner.scheduler.load_state_dict(state["scheduler"])
        if runner.scaler is not None and state.get("scaler"):
            runner.scaler.load_state_dict(state["scaler"])
        set_rng_states(state["rng"])
        log.info("checkpoint.loaded", path=str(path), step=state["step"], micro_batch=state["micro_batch"])
        return state
    return None
