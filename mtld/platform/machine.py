"""What this machine is, read from the OS without torch: the device "auto" will pick, and the facts the
mixed-precision rule (mtld.decide.precision, pure) needs. Read once per process."""

from __future__ import annotations

import functools
import importlib.metadata
import platform
import shutil
import subprocess
import sys
from pathlib import Path

from mtld.decide.precision import MachineFacts, Precision, TorchVersion, resolve_precision, torch_version

CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flag names (Linux arch/x86 cpufeatures)


def guess_device(setting: str) -> str:
    """The device `train.device` will pick ("auto": MPS, then CUDA, then CPU), guessed without importing torch."""
    if setting != "auto":
        return setting
    if sys.platform == "darwin" and platform.machine() == "arm64":
        return "mps"
    if Path("/proc/driver/nvidia/version").exists() or shutil.which("nvidia-smi"):
        return "cuda"
    return "cpu"


def precision_for(setting: str, device: str) -> tuple[Precision, str]:
    """resolve_precision with this machine's facts."""
    return resolve_precision(setting, device, machine_facts(device))


def machine_facts(device: str) -> MachineFacts:
    """This machine's facts for `device`, read without torch (and once per process)."""
    return MachineFacts(cpu_bf16=device == "cpu" and _cpu_bf16(), macos=_macos_version(),
                        cuda_capability=_cuda_capability() if device == "cuda" else None, torch=_torch_version())


@functools.cache
def _torch_version() -> TorchVersion | None:
    """The installed torch's version from its package metadata: the daemon never imports torch, and the child
    (which has) reads the same distribution. None when torch is not installed or its version is unreadable."""
    try:
        text = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return None
    return torch_version(text) if isinstance(text, str) else None  # metadata without a Version: None


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
