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
  And the torch the run trains with must have it: autocast knows MPS from torch 2.5
  (ATen/autocast_mode.h, is_autocast_available gains kMPS; 2.4 refuses the device), in fp16 only:
  2.5.0's torch/amp/autocast_mode.py warns "Disabling autocast" for bf16 on MPS and trains in fp32;
  2.6.0 adds bfloat16 there (from macOS 14; pytorch#139390). Older torch: fp32.
- fp16 on MPS needs torch 2.8: its loss scaler got MPS kernels in 2.8 (the 2.8.0 release notes, MPS:
  "Grad Scaler implementation", pytorch#150255: ATen/ops/_amp_foreach_non_finite_check_and_unscale_
  mps_dispatch.h); before, torch/amp/grad_scaler.py's unscale_ casts the scale to float64, which MPS
  refuses (pytorch#142397). Older torch: fp32, asked for or not.
The torch version (`torch_version`) is read from the package metadata, never by importing torch.
Autocast itself: the torch.amp docs (docs/source/amp.rst): bfloat16 needs only
torch.autocast; float16 needs torch.amp.GradScaler as well (mtld.train.step has one).
The run child checks the rule's answer with one tiny op under the autocast it will use
(mtld.train.setup), and trains in fp32 if autocast does not produce the dtype claimed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

Precision = Literal["bf16", "fp16", "off"]
TorchVersion = tuple[int, int, int, int]  # (major, minor, micro, 1 for a release, 0 for a dev/alpha/beta/rc build)
MPS_BF16_MACOS = (14, 0)
MPS_BF16_TORCH = (2, 6)  # bf16 autocast on MPS
MPS_FP16_TORCH = (2, 8)  # torch.amp.GradScaler on MPS
CUDA_BF16_CAPABILITY = (8, 0)
_VERSION = re.compile(r"(\d+)\.(\d+)(?:\.(\d+))?[.-]?(.*)")
_PRE_RELEASE = re.compile(r"(?:(?:a|alpha|b|beta|c|rc|pre|preview)\d*)?(?:[.]?dev\d*)?")
_POST_RELEASE = re.compile(r"post\d*")


def torch_version(text: str) -> TorchVersion | None:
    """A torch version string ("2.13.0+cpu", "2.8.0.dev20250501", "2.7.0rc3") as a tuple that compares
    like the releases (PEP 440: a pre-release comes before its release); None when it is not one."""
    match = _VERSION.fullmatch(text.strip().split("+", 1)[0])  # "+cpu", "+cu126": a local build label
    if match is None:
        return None
    major, minor, micro, rest = match.groups()
    if not rest or _POST_RELEASE.fullmatch(rest):
        final = 1
    elif _PRE_RELEASE.fullmatch(rest):
        final = 0
    else:
        return None
    return int(major), int(minor), int(micro or 0), final


def version_text(version: TorchVersion | None) -> str:
    if version is None:
        return "unknown"
    major, minor, micro, final = version
    return f"{major}.{minor}.{micro}" + ("" if final else " (a pre-release)")


def _has_torch(version: TorchVersion | None, minimum: tuple[int, int]) -> bool:
    """The release `minimum` or later (a pre-release of it is not yet it)."""
    return version is not None and version >= (*minimum, 0, 1)


@dataclass(frozen=True)
class MachineFacts:
    """What the precision rule needs to know about the machine; None where unknown."""

    cpu_bf16: bool = False  # the CPU has bfloat16 instructions (AVX512-BF16 or AMX-BF16)
    macos: tuple[int, int] | None = None  # (major, minor) on macOS
    cuda_capability: tuple[int, int] | None = None  # of the first CUDA device
    torch: TorchVersion | None = None  # the installed torch (torch_version); None: not installed or unreadable


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
        has_bf16, lacks = _mps_bf16(facts)
    else:
        raise ValueError(f"unknown device {device!r}")
    if setting == "fp16":
        if device == "mps" and not _has_torch(facts.torch, MPS_FP16_TORCH):
            return "off", (f"mixed_precision = fp16, but fp16 on MPS needs torch {_minor(MPS_FP16_TORCH)} for its "
                           f"loss scaler (this is {version_text(facts.torch)}): fp32")
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


def _mps_bf16(facts: MachineFacts) -> tuple[bool, str]:
    """bf16 on MPS: macOS 14 (MPSGraph's bfloat16) and torch 2.6 (bf16 autocast on MPS); else why not."""
    if facts.macos is None or facts.macos < MPS_BF16_MACOS:
        shown = "unknown" if facts.macos is None else _minor(facts.macos)
        return False, f"bf16 on MPS needs macOS {MPS_BF16_MACOS[0]} (this is {shown})"
    if not _has_torch(facts.torch, MPS_BF16_TORCH):
        return False, f"bf16 on MPS needs torch {_minor(MPS_BF16_TORCH)} (this is {version_text(facts.torch)})"
    return True, ""


def _minor(version: tuple[int, int]) -> str:
    return f"{version[0]}.{version[1]}"
