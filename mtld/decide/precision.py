"""Mixed precision: which one a job trains in on a device. The one place that decides it.

The run child (its autocast dtype), the family key (mtld.decide.family), `mtld estimate`,
`mtld status` and `mtld doctor` all call `resolve_precision`, so what they show
is what the child does. Light to import: no torch (the daemon never imports it);
the facts about the machine are read from the OS (`machine_facts`) and passed in,
so the rule itself is a pure function tested with fakes.

What "auto" picks, and why (the figures are in the README, "Mixed precision"):
- CPU: bf16 where the CPU has bfloat16 instructions (AVX512-BF16 or AMX-BF16):
  on such a CPU bf16 autocast trained a MiniLM-L6 encoder ~1.7x faster with the
  same final score. Without them PyTorch emulates bf16 and it does not pay: fp32.
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

import functools
import platform
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

PrecisionSetting = Literal["auto", "bf16", "fp16", "off"]
Precision = Literal["bf16", "fp16", "off"]
SETTINGS: tuple[str, ...] = ("auto", "bf16", "fp16", "off")
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flag names (Linux arch/x86 cpufeatures)
MPS_BF16_MACOS = (14, 0)
CUDA_BF16_CAPABILITY = (8, 0)


@dataclass(frozen=True)
class MachineFacts:
    """What the precision rule needs to know about the machine; None where unknown."""

    cpu_bf16: bool = False  # the CPU has bfloat16 instructions (AVX512-BF16 or AMX-BF16)
    macos: tuple[int, int] | None = None  # (major, minor) on macOS
    cuda_capability: tuple[int, int] | None = None  # of the first CUDA device


def legacy_setting(value: object) -> object:
    """Job files from before the four settings said true or false: true is "auto" (mixed precision
    where it pays on the device), false is "off". Anything else passes on to be checked."""
    if value is True:
        return "auto"
    if value is False:
        return "off"
    return value


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
        raise ValueError(f"unknown mixed_precision {setting!r}: use one of {', '.join(SETTINGS)}")
    if has_bf16:
        return "bf16", f"auto: bf16 on {device}"
    return "off", f"auto: {lacks}: fp32"


def precision_for(setting: str, device: str) -> tuple[Precision, str]:
    """resolve_precision with this machine's facts."""
    return resolve_precision(setting, device, machine_facts(device))


def machine_facts(device: str) -> MachineFacts:
    """This machine's facts for `device`, read without torch (and once per process)."""
    return MachineFacts(cpu_bf16=device == "cpu" and _cpu_bf16(), macos=_macos_version(),
                        cuda_capability=_cuda_capability() if device == "cuda" else None)


@functools.cache
def _cpu_bf16() -> bool:
    """Linux: the CPU flags the kernel reports (the same test as torch.cpu._is_avx512_bf16_supported
    and _is_amx_tile_supported, which ask cpuinfo). Elsewhere (macOS: Apple's CPUs) no: fp32."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = line.split(":", 1)[1].split()
            return any(f in flags for f in CPU_BF16_FLAGS)
    return False


@functools.cache
def _macos_version() -> tuple[int, int] | None:
    if sys.platform != "darwin":
        return None
    release = platform.mac_ver()[0]  # "14.4.1"
    try:
        parts = [int(x) for x in release.split(".")[:2]] + [0]
        return parts[0], parts[1]
    except ValueError:
        return None


@functools.cache
def _cuda_capability() -> tuple[int, int] | None:
    """The first card's compute capability from nvidia-smi (`--query-gpu=compute_cap`), or None."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        out = subprocess.run([smi, "--query-gpu=compute_cap", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=10, check=True).stdout.split()
        major, minor = out[0].split(".")
        return int(major), int(minor)
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None
