"""Mixed precision: which one a job trains in on a device. The one place that decides it.

The run child (its autocast dtype), the family key (mtld.decide.family), `mtld estimate`,
`mtld status` and `mtld doctor` all call `resolve_precision`, so what they show
is what the child does. Light to import: no torch (the daemon never imports it);
the facts about the machine are read from the OS (`machine_facts`) and passed in,
so the rule itself is a pure function tested with fakes (the reading: mtld.platform.machine).

What "auto" picks, and why (the figures: docs/benchmarks.md, "Mixed precision"):
- CPU: bf16 where the CPU has bfloat16 instructions (AVX512-BF16 or AMX-BF16):
  on such a CPU bf16 autocast trained a MiniLM-L6 encoder 1.38-1.46x faster with
  the same final score (no seed more than 0.01 below fp32). Without them PyTorch emulates bf16 and it does not pay: fp32.
- CUDA: bf16 from compute capability 8.0 (Ampere) on, the rule of
  torch.cuda.is_bf16_supported (torch/cuda/__init__.py); older cards fp32
  ("fp16" with its loss scaler can be asked for explicitly).
- MPS: bf16 from macOS 14; MPSGraph has no bfloat16 before it (PyTorch
  aten/src/ATen/native/mps/MPSGraphSonomaOps.h; Apple:
  MPSDeviceSupportsBFloat16Arithmetic, macOS 14.0+). Older macOS: fp32.
Autocast itself: the torch.amp docs (docs/source/amp.rst): bfloat16 needs only
torch.autocast; float16 needs torch.amp.GradScaler as well (mtld.train.step has one).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Precision = Literal["bf16", "fp16", "off"]
MPS_BF16_MACOS = (14, 0)
CUDA_BF16_CAPABILITY = (8, 0)


@dataclass(frozen=True)
class MachineFacts:
    """What the precision rule needs to know about the machine; None where unknown."""

    cpu_bf16: bool = False  # the CPU has bfloat16 instructions (AVX512-BF16 or AMX-BF16)
    macos: tuple[int, int] | None = None  # (major, minor) on macOS
    cuda_capability: tuple[int, int] | None = None  # of the first CUDA device


def resolve_precision(setting: str, device: str, facts: MachineFacts) -> tuple[Precision, str]:
    """(precision, why) a job with `setting` trains in on `device` ("cpu", "cuda" or "mps")."""
    if setting == "off":
        return "off", "mixed_precision = off"
    if device == "cpu":
        has_bf16, lacks = facts.cpu_bf16, "this CPU has no AVX512-BF16 or AMX-BF16"
    elif device == "cuda":
        cap = facts.cuda_capability
        has_bf16 = cap is None or cap >= CUDA_BF16_CAPABILITY  # unknown: today's cards have it
        lacks = f"compute capability {cap} is below {CUDA_BF16_CAPABILITY}"
    elif device == "mps":
        has_bf16 = facts.macos is not None and facts.macos >= MPS_BF16_MACOS
        lacks = f"bf16 on MPS needs macOS {MPS_BF16_MACOS[0]} (this is {facts.macos})"
    else:
        raise ValueError(f"unknown device {device!r}")
    if setting == "fp16":
        return "fp16", "mixed_precision = fp16"
    if setting == "bf16":
        if has_bf16 or device == "cpu":  # the CPU runs bf16 without the instructions, only slowly
            return "bf16", "mixed_precision = bf16"
        return "off", f"mixed_precision = bf16, but {lacks}: fp32"
    if setting != "auto":
        raise ValueError(f"unknown mixed_precision {setting!r}: use auto, bf16, fp16 or off")
    if has_bf16:
        return "bf16", f"auto: bf16 on {device}"
    return "off", f"auto: {lacks}: fp32"
