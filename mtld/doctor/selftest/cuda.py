"""CUDA checks (any OS with an NVIDIA GPU): an out-of-memory under set_per_process_memory_fraction
is recognised and survived at half the micro-batch, mem_get_info agrees with mtld's budget, and a
short mixed-precision run of the tiny model gives finite losses. Torch is behind a seam
(ctx.shared["cuda"]) so tests use a fake."""

from __future__ import annotations

import math
from typing import Any

from mtld.doctor.selftest import common
from mtld.doctor.selftest.base import Context, Skipped, Spec, require


class TorchCuda:
    """The torch.cuda calls the checks make (PyTorch docs, torch.cuda)."""

    def __init__(self) -> None:
        import torch

        self.torch = torch
        self.model: Any = None

    def available(self) -> bool:
        return self.torch.cuda.is_available()

    def total(self) -> int:
        return int(self.torch.cuda.get_device_properties(0).total_memory)

    def mem_get_info(self) -> tuple[int, int]:
        free, total = self.torch.cuda.mem_get_info()  # cudaMemGetInfo: the whole device, other processes too
        return int(free), int(total)

    def set_fraction(self, fraction: float) -> None:
        self.torch.cuda.set_per_process_memory_fraction(fraction)  # caps this process's caching allocator

    def empty_cache(self) -> None:
        self.torch.cuda.synchronize()
        self.torch.cuda.empty_cache()

    def reserved(self) -> int:
        return int(self.torch.cuda.memory_reserved())

    def step_peak(self, batch: int) -> int:
        """One forward/backward whose activations grow with `batch`; the bytes it needed above what was held."""
        torch = self.torch
        if self.model is None:
            self.model = torch.nn.Sequential(torch.nn.Linear(1024, 4096), torch.nn.GELU(),
                                             torch.nn.Linear(4096, 1024)).to("cuda")
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        x = torch.randn(batch, 512, 1024, device="cuda")
        self.model(x).square().mean().backward()
        self.model.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        return int(torch.cuda.max_memory_allocated() - before)


def _cuda(ctx: Context) -> Any:
    if "cuda" not in ctx.shared:
        try:
            ctx.shared["cuda"] = TorchCuda()
        except ImportError as e:
            raise Skipped(f"torch cannot be imported: {e}") from None
    cuda = ctx.shared["cuda"]
    if not cuda.available():
        raise Skipped("no CUDA device")
    return cuda


def check_oom_recovery(ctx: Context) -> dict[str, Any]:
    """With the allocator capped between what micro-batch 4 and 8 need, 8 fails with an error mtld's
    is_oom recognises, and the same step succeeds at 4 (what the loop does: mtld/train/step.py)."""
    from mtld.train.device import is_oom

    cuda = _cuda(ctx)
    cuda.step_peak(4)  # warm-up: weights, gradients and cuBLAS workspaces are held from here on
    cuda.empty_cache()
    need4 = cuda.step_peak(4)
    cuda.empty_cache()
    total = cuda.total()
    cap = cuda.reserved() + int(need4 * 1.5)  # room for 4, not for 8 (activations grow with the batch)
    cuda.set_fraction(cap / total)
    tried: list[tuple[int, str]] = []
    try:
        for batch in (8, 4, 2):
            try:
                cuda.step_peak(batch)
                tried.append((batch, "ok"))
                break
            except Exception as e:  # torch.OutOfMemoryError, or a RuntimeError from an older torch
                tried.append((batch, f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"))
                require(is_oom(e), f"micro-batch {batch} failed with an error mtld does not take for an "
                        f"out-of-memory: {tried[-1][1]}", tried=tried)
                cuda.empty_cache()
    finally:
        cuda.set_fraction(1.0)
        cuda.empty_cache()
    figures = {"cap_bytes": cap, "need_b4_bytes": need4, "tried": tried}
    require(tried[0][1] != "ok", "micro-batch 8 fitted under the cap: the fraction is not enforced", **figures)
    require(tried[-1] == (4, "ok"), "the step did not succeed at half the micro-batch", **figures)
    return figures


def check_mem_get_info(ctx: Context) -> dict[str, Any]:
    """cudaMemGetInfo's total is the device's, and mtld's budget fits in what is free now."""
    from mtld.memory.guard import budget_bytes
    from mtld.config.settings import MemorySettings

    cuda = _cuda(ctx)
    free, total = cuda.mem_get_info()
    fraction = ctx.shared.get("budget_fraction", MemorySettings().budget_fraction)
    budget = budget_bytes(device_type="cuda", device_total=cuda.total(), cgroup_limit=None, fraction=fraction)
    figures = {"free_bytes": free, "total_bytes": total, "device_total_bytes": cuda.total(), "budget_bytes": budget,
               "budget_fraction": fraction, "used_by_others_bytes": max(total - free - cuda.reserved(), 0)}
    require(total == cuda.total(), "mem_get_info and the device properties disagree on the total", **figures)
    require(budget <= free + cuda.reserved(), f"the budget ({budget >> 20} MiB) is more than is free now "
            f"({free >> 20} MiB): other processes use the GPU", **figures)
    return figures


def finite_losses(progress: list[dict[str, Any]]) -> tuple[int, list[Any]]:
    """(how many step.progress losses, the ones that are not finite)."""
    losses = [e.get("loss") for e in progress]
    return len(losses), [x for x in losses if not isinstance(x, (int, float)) or not math.isfinite(x)]


def check_mixed_precision(ctx: Context) -> dict[str, Any]:
    """20 steps of the tiny model with mixed_precision = "auto" (a job's default) in a real child: finite losses."""
    _cuda(ctx)
    spec = common.job_spec(ctx, mixed_precision="auto")
    path = common.run_dir(ctx, spec, 8, "amp", device="cuda", progress_every_s=0.0)
    code, err = common.finish_child(common.start_child(ctx, path))
    started = common.events(path, "run.started")
    count, bad = finite_losses(common.events(path, "step.progress"))
    figures = {"exit_code": code, "dtype": started[-1].get("mixed_precision") if started else None,
               "losses": count, "not_finite": bad[:5]}
    require(code == 0, f"the mixed-precision run exited {code}: {err.strip()[-300:]}", **figures)
    require(count > 0 and not bad, "the mixed-precision run logged losses that are not finite", **figures)
    return figures


CHECKS = [
    Spec("cuda.oom_recovery", "cuda", "a CUDA out-of-memory would end the run instead of halving the micro-batch "
         "and redoing the step.", check_oom_recovery),
    Spec("cuda.mem_get_info", "cuda", "mtld's memory budget would not match the GPU: runs out of memory, or "
         "never use what is there.", check_mem_get_info),
    Spec("cuda.mixed_precision", "cuda", "mixed_precision = \"auto\" would produce NaN losses and a useless model.",
         check_mixed_precision),
]
