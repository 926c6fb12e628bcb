"""The torch edges: device choice, OOM classification, memory readings, RNG state."""

from __future__ import annotations

import ctypes
import gc
import random
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import psutil
import torch

from mtld.train.errors import BadInput
from mtld.train.procstats import peak_rss_bytes

# Lower-cased fragments of the messages allocators raise. MPS raises a plain
# RuntimeError ("MPS backend out of memory ..."), CUDA/HIP "... out of memory",
# the CPU allocator "DefaultCPUAllocator: can't allocate memory", and MPS also
# "Invalid buffer size: 12.00 GB" for a single buffer that is too large.
OOM_FRAGMENTS = ("out of memory", "defaultcpuallocator: can't allocate memory", "invalid buffer size")


def is_oom(exc: BaseException) -> bool:
    """True when `exc` says an allocation failed (by type, then by message)."""
    # torch.OutOfMemoryError: public since torch 2.4 (torch/csrc/Exceptions.cpp, pytorch#121702; in 2.4.0's
    # torch/_C/__init__.pyi), so older than the floor in pyproject.toml
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    if isinstance(exc, RuntimeError):
        message = str(exc).lower()
        return any(fragment in message for fragment in OOM_FRAGMENTS)
    return False


def pick_device(requested: str) -> torch.device:
    """auto → MPS, then CUDA, then CPU. A named device that is not there is bad input."""
    mps = torch.backends.mps.is_available()
    cuda = torch.cuda.is_available()
    if requested == "auto":
        return torch.device("mps" if mps else "cuda" if cuda else "cpu")
    if requested not in ("cpu", "cuda", "mps"):
        raise BadInput(f"unknown device {requested!r}: use auto, cpu, cuda or mps")
    if (requested == "mps" and not mps) or (requested == "cuda" and not cuda):
        raise BadInput(f"device {requested!r} is not available on this machine")
    return torch.device(requested)


def prepare(device: torch.device, memory_fraction: float) -> None:
    """Per-device set-up: the MPS memory cap, TF32 matrix products on CUDA."""
    if device.type == "mps" and 0 < memory_fraction:
        # an allocation fails (catchably) before the machine starts swapping
        torch.mps.set_per_process_memory_fraction(memory_fraction)
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32 on Ampere and later: fine for fine-tuning


def all_finite(tensors: Any) -> bool:
    """True when no tensor holds NaN or inf (one device sync for all of them)."""
    flags = [torch.isfinite(t).all() for t in tensors]
    return not flags or bool(torch.stack(flags).all())


def empty_cache(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


class MemoryMeter:
    """Peak memory of the run: the device allocator's, or the process's on CPU.

    CUDA keeps its own high-water mark; MPS only reports the current figures,
    so they are sampled at progress and evaluation points: the same figure the
    guard compares with the budget (the larger of phys_footprint and the
    driver's allocation), so the family's headroom rule reads what the guard does.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.peak_sampled = 0
        self._read = memory_reader(device) if device.type == "mps" else None
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)

    def sample(self) -> None:
        if self._read is not None:
            self.peak_sampled = max(self.peak_sampled, self._read()["used_bytes"] or 0)

    def peak_bytes(self) -> int:
        if self.device.type == "cuda":
            return int(torch.cuda.max_memory_reserved(self.device))
        if self.device.type == "mps":
            self.sample()
            return self.peak_sampled
        return peak_rss_bytes()


def total_memory_bytes(device: torch.device) -> int:
    """What the device can use: MPS's recommended maximum, the CUDA card's memory, or RAM."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    if device.type == "mps":
        return int(torch.mps.recommended_max_memory())
    return int(psutil.virtual_memory().total)


def memory_reader(device: torch.device) -> Callable[[], dict[str, int | None]]:
    """For the memory sampler thread: what the run uses now, and what the device has.

    `used_bytes` is what the guard compares with the budget (mtld.memory.used_bytes): CUDA the
    memory the caching allocator holds; MPS the larger of the process's phys_footprint and the Metal
    driver's allocation; CPU the process's footprint (macOS phys_footprint, else the resident set).
    `footprint_bytes` and `device_bytes` are the two figures behind it. All are cheap reads without
    a device sync.
    """
    from mtld.memory import used_bytes

    total = total_memory_bytes(device)
    footprint = _footprint_reader()
    device_bytes = device_reader(device)

    def read() -> dict[str, int | None]:
        own = footprint()
        allocated = device_bytes() if device_bytes is not None else None
        return {"used_bytes": used_bytes(device.type, footprint=own, device=allocated), "total_bytes": total,
                "footprint_bytes": own, "device_bytes": allocated}

    return read


def _footprint_reader() -> Callable[[], int]:
    if sys.platform == "darwin":  # the kernel's ledger, not the resident set (mtld.memory.macos.phys_footprint)
        from mtld.memory import phys_footprint

        return phys_footprint
    process = psutil.Process()
    return lambda: int(process.memory_info().rss)


def device_reader(device: torch.device) -> Callable[[], int] | None:
    """The device allocator's own figure: CUDA's reserve, MPS's driver allocation (cached buffers included,
    torch.mps.driver_allocated_memory); None on CPU."""
    if device.type == "cuda":
        return lambda: int(torch.cuda.memory_reserved(device))
    if device.type == "mps":
        return lambda: int(torch.mps.driver_allocated_memory())
    return None


def device_used_bytes(device: torch.device) -> int:
    """The figure a scale-down should make fall: the device allocator's, or the process's on CPU."""
    reader = device_reader(device) or _footprint_reader()
    return reader()


def rng_states(device: torch.device) -> dict[str, Any]:
    """Every random stream a step may touch (dropout draws from the device's), as plain data and
    tensors (a checkpoint loads with weights_only=True): NumPy's key array becomes a list of ints."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"python": random.getstate(), "numpy": [name, keys.tolist(), pos, has_gauss, cached],
            **torch_rng_states(device)}


def torch_rng_states(device: torch.device) -> dict[str, Any]:
    """Only the streams a step draws from (dropout): cheap enough to take before every step.

    Python's and NumPy's generators are not used inside a step (the batch plan
    has its own), so the checkpoint takes them, and they need no per-step copy.
    """
    states: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state_all()
    elif device.type == "mps":
        states["mps"] = torch.mps.get_rng_state()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore what rng_states or torch_rng_states took."""
    if "python" in states:
        version, internal, gauss = states["python"]
        random.setstate((version, tuple(internal), gauss))
        name, keys, pos, has_gauss, cached = states["numpy"]
        np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(states["cpu"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    if "mps" in states and torch.backends.mps.is_available():
        torch.mps.set_rng_state(states["mps"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # seeds CUDA and MPS too


AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}


def amp_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a precision that mtld.decide.precision.resolve_precision chose (None: fp32)."""
    return AMP_DTYPES[precision]


def malloc_trim() -> bool | None:
    """glibc's malloc_trim(0): hand the heap's free pages back to the OS (True if any were). None where the C
    library has no malloc_trim (macOS, musl)."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return bool(trim(0))


# glibc's mallopt(3) parameters (malloc.h): M_TRIM_THRESHOLD -1, M_MMAP_THRESHOLD -3.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD_BYTES = 64 << 20
TRIM_THRESHOLD_BYTES = 256 << 20


def tune_malloc() -> bool | None:
    """Keep a training step's buffers in the heap, where the next step reuses them, instead of fresh pages.

    PyTorch's CPU allocator is the C library's malloc (c10/core/impl/alloc_cpu.cpp: posix_memalign). glibc
    serves an allocation of at least M_MMAP_THRESHOLD with its own mmap and unmaps it on free; the threshold
    starts at 128 KiB and only rises as such blocks are freed (mallopt(3), "M_MMAP_THRESHOLD": the dynamic
    threshold). How high it has risen depends on the process's history, so the same step of the same model
    took every activation and gradient (a word-embedding gradient alone is 47 MB on a BERT vocabulary) from
    freshly zeroed pages in one process and from the heap in another: measured on all-MiniLM-L6-v2 in bf16,
    the run child had twice the bare loop's page faults (0.95M against 0.46M in 16 steps) and twice its
    system time, and ran 7 % slower per step. With the thresholds fixed here the child took 0.24M faults
    and ran as fast as the bare loop (docs/benchmarks.md, "Where the step went"). 64 MiB is below the
    ceiling mallopt accepts on 64-bit glibc (HEAP_MAX_SIZE / 2); the trim threshold keeps up to 256 MiB of
    free heap at its top before giving it back (a guard's scale-down still hands everything back with
    malloc_trim). Fixing either one turns the dynamic threshold off, so both are set. True when set; None
    where the C library has no mallopt (macOS's libmalloc, musl: nothing measured there)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
