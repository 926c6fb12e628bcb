"""Disk: free space against what a run needs, the size of folders, and user-only modes.

How much free space a run needs (`space_needed`), in bytes, on its run folder's filesystem:

    checkpoint × (max(keep − on disk, 0) + 1)   the checkpoint about to be written, plus those still
                                                to come until `keep_checkpoints` are on disk (the
                                                oldest goes only once a new one is complete)
  + export × max(2 − exports on disk, 1)        model/ and best/ not yet written (an export is
                                                written whole beside the old one before that goes)
  + margin                                      `disk.margin_mb`

`checkpoint` is the model's and the optimizer's state: the child sums the bytes
of the state dict's tensors before each save. Before a run the daemon takes
the size this job's or its family's last run measured, else 3 × the model
folder's weight files (the weights and AdamW's two moments). `export` is the
weights: the model's state dict in the child, the weight files before a run.

Everything mtld creates is user-only, whatever the umask: folders 0700, files
0600 (`private_dir`, `make_private`, `PRIVATE_FILE`).

Torch-free: the daemon, the CLI and the child use it.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any

PRIVATE_DIR, PRIVATE_FILE = 0o700, 0o600
MB = 1_000_000
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
WEIGHT_SUFFIXES = (".safetensors", ".bin")  # transformers' weight files (a folder may hold both kinds)
HOLD_PREFIX = "disk full"  # a job held for space says so first (mtld.daemon.diskguard releases these)


class DiskFull(Exception):
    """Not enough free space for the rest of a run; `saved` is the checkpoint written first, if one fit."""

    def __init__(self, needed: int, free: int, path: Path | str, *, saved: Path | None = None, detail: str = ""):
        self.needed, self.free, self.path, self.saved, self.detail = needed, free, str(path), saved, detail
        super().__init__(shortfall_text(needed, free, path) + (f" ({detail})" if detail else ""))


def shortfall_text(needed: int, free: int, path: Path | str) -> str:
    """`disk full: 1.2 GB needed on /path, 0.3 GB free` (the hold and the notification say this)."""
    return f"{HOLD_PREFIX}: {size_text(needed)} needed on {path}, {size_text(free)} free"


def full_text(path: Path | str) -> str:
    """`disk full: 0 B free on /folder`, the folder of `path` (the hold's wording), where a write was refused
    for space and no figure of what was needed is known."""
    folder = existing_ancestor(path)
    if not folder.is_dir():
        folder = folder.parent
    try:
        return f"{HOLD_PREFIX}: {size_text(free_bytes(folder))} free on {folder}"
    except OSError:
        return f"{HOLD_PREFIX} on {folder}"


def size_text(n: int | float | None) -> str:
    """1.2 GB, 350 MB, 12 KB (decimal units, as disk makers and `df -H` count)."""
    if n is None:
        return "?"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"


def is_disk_full(exc: BaseException | None) -> bool:
    """ENOSPC or EDQUOT, also as the cause of another error (torch.save raises a RuntimeError from it)."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, DiskFull) or (isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


# ---------------------------------------------------------------- space


def space_needed(*, checkpoint_bytes: int, export_bytes: int, keep: int, checkpoints_on_disk: int,
                 exports_on_disk: int, margin_bytes: int) -> int:
    """Free bytes the rest of a run needs at its peak (the module's docstring says how)."""
    checkpoints = max(keep - checkpoints_on_disk, 0) + 1
    exports = max(2 - exports_on_disk, 1)
    return checkpoint_bytes * checkpoints + export_bytes * exports + margin_bytes


def existing_ancestor(path: Path | str) -> Path:
    """`path`, or its nearest folder that exists (a run folder is made only when its run starts)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def folder_problem(folder: Path | str) -> str | None:
    """Why run folders cannot be made under `folder` (None when they can): the nearest part of the path that
    exists must be a folder on a file system with storage, and a file must really be made there (a probe:
    root passes every permission check, and /proc or a read-only mount refuse only the write itself). A full
    disk is not a reason: a job is held until there is room (mtld.daemon.diskguard)."""
    existing = existing_ancestor(folder)
    cannot = f"cannot make run folders in {folder}"
    if not existing.is_dir():
        return f"{cannot}: {existing} is not a folder"
    try:
        blocks = os.statvfs(existing).f_blocks
    except OSError as e:
        return f"{cannot}: {existing} cannot be examined ({e.strerror or e})"
    if blocks == 0:  # statvfs(3) f_blocks, the size of the file system: none for proc(5) and sysfs(5)
        return f"{cannot}: {existing} is on a file system that stores nothing (such as /proc or /sys)"
    try:
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".mtld-probe-")
    except OSError as e:
        if e.errno in DISK_FULL_ERRNOS:
            return None
        return f"{cannot}: {existing} is not writable ({e.strerror or e})"
    os.close(fd)
    os.unlink(probe)
    return None


def free_bytes(path: Path | str) -> int:
    """Bytes an unprivileged user may still write on `path`'s filesystem (statvfs f_bavail)."""
    st = os.statvfs(existing_ancestor(path))
    return st.f_bavail * st.f_frsize


def weight_files_bytes(model_dir: Path | str) -> int:
    """The bytes of a model folder's weight files (safetensors, else .bin), 0 when it has none."""
    folder = Path(model_dir)
    if not folder.is_dir():
        return 0
    sizes = {suffix: 0 for suffix in WEIGHT_SUFFIXES}
    for entry in folder.iterdir():
        if entry.suffix in sizes and entry.is_file():
            sizes[entry.suffix] += entry.stat().st_size  # follows the hub cache's symlinks to the blobs
    return sizes[".safetensors"] or sizes[".bin"]


def tree_bytes(path: Path | str) -> int:
    """Space a folder takes on disk (allocated blocks; symlinks not followed); 0 when it is gone."""
    total = 0
    for root, dirs, files in os.walk(path):
        for name in files + dirs:
            try:
                st = os.lstat(os.path.join(root, name))
            except FileNotFoundError:
                continue
            total += getattr(st, "st_blocks", 0) * 512 or st.st_size
    return total


# ---------------------------------------------------------------- user-only modes


def private_dir(path: Path | str) -> Path:
    """Make `path` and every missing folder above it user-only (0700), whatever the umask.
    Folders that already exist are left as they are: they are not mtld's to change."""
    target = path = Path(path)
    missing = []
    while not path.exists() and path != path.parent:
        missing.append(path)
        path = path.parent
    for folder in reversed(missing):
        try:
            os.mkdir(folder, PRIVATE_DIR)
        except FileExistsError:  # made by another process meanwhile
            continue
        os.chmod(folder, PRIVATE_DIR)  # mkdir's mode passes through the umask
    return target


def make_private(path: Path | str) -> None:
    """chmod a folder tree (or one file) user-only: folders 0700, files 0600; symlinks are skipped."""
    path = Path(path)
    _chmod(path)
    if path.is_dir() and not path.is_symlink():
        for root, dirs, files in os.walk(path):
            for name in dirs + files:
                _chmod(Path(root) / name)


def _chmod(path: Path) -> None:
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISDIR(mode):
        os.chmod(path, PRIVATE_DIR)
    elif stat.S_ISREG(mode):
        os.chmod(path, PRIVATE_FILE)


def open_private(path: Path | str, flags: int) -> int:
    """os.open with a 0600 file, whatever the umask (a file that exists keeps its mode unless it is ours to fix)."""
    fd = os.open(path, flags | os.O_CREAT, PRIVATE_FILE)
    try:
        os.fchmod(fd, PRIVATE_FILE)
    except OSError:  # not the owner (a shared log): leave its mode alone
        pass
    return fd


def write_atomic(path: Path, content: bytes, mode: int | None = None) -> None:
    """Write to a temporary file in the same folder, fsync, then rename it into place: a reader
    sees the old file or the new one, never half of one. `mode`: else the temporary file's 0600."""
    private_dir(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, data: Any) -> None:
    write_atomic(path, (json.dumps(data, ensure_ascii=False, indent=2, default=str) + "\n").encode("utf-8"))
