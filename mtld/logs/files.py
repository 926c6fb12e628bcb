"""The files of a log: the daemon log's rotation, and reading on from where a read ended.

    mtld.jsonl  mtld.jsonl.1  mtld.jsonl.2 ...   newest first; `rotate` (the daemon only) shifts them

A `Cursor` (inode, offset at a line's end) taken by `snapshot` before a read
says where that read stops; a `Follower` reads on from it, finishing a file
that was rotated away before going on in the new one, so no line is lost or
read twice between `mtld logs` reading a log and following it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple


def rotated_files(path: Path) -> list[Path]:
    """`path`'s rotated files (path.1, path.2, ...), newest first."""
    numbered = [p for p in path.parent.glob(f"{path.name}.*") if p.suffix[1:].isdigit()]
    return sorted(numbered, key=lambda p: int(p.suffix[1:]))


def rotate(path: Path, *, max_bytes: int, keep: int) -> bool:
    """When `path` is larger than `max_bytes`: path → path.1 → path.2 ..., keeping `keep` rotated files.
    Only the daemon calls this (one rotator); appenders follow at their next line. True if it rotated."""
    try:
        if path.stat().st_size <= max_bytes:
            return False
    except FileNotFoundError:
        return False
    for old in reversed(rotated_files(path)):
        number = int(old.suffix[1:])
        if number >= keep:
            old.unlink(missing_ok=True)
        else:
            os.replace(old, path.with_name(f"{path.name}.{number + 1}"))
    os.replace(path, path.with_name(f"{path.name}.1"))
    return True


class Cursor(NamedTuple):
    """Where a read of a log ended: the file (by inode) and an offset at a line's end."""

    inode: int | None
    offset: int


def snapshot(path: Path, block_size: int = 1 << 16) -> Cursor:
    """The end of the last complete line in `path` now: read up to it, then follow from it."""
    try:
        f = path.open("rb")
    except FileNotFoundError:
        return Cursor(None, 0)
    with f:
        end = os.fstat(f.fileno()).st_size
        position = end
        while position > 0:
            step = min(block_size, position)
            f.seek(position - step)
            newline = f.read(step).rfind(b"\n")
            if newline >= 0:
                return Cursor(os.fstat(f.fileno()).st_ino, position - step + newline + 1)
            position -= step
        return Cursor(os.fstat(f.fileno()).st_ino, 0)


class Follower:
    """One followed path: an open file read on from an offset, reopened when the path is rotated."""

    def __init__(self, path: Path, cursor: Cursor | None):
        self.path, self.file, self.pending = path, None, b""
        if cursor is not None and cursor.inode is not None:
            for candidate in [path, *rotated_files(path)]:  # rotated since the snapshot: finish that file first
                self._open(candidate, cursor.offset)
                if self.file is not None and os.fstat(self.file.fileno()).st_ino == cursor.inode:
                    return
                self._close()
        self._open(path, 0 if cursor is not None else None)

    def _open(self, path: Path, offset: int | None) -> None:
        try:
            self.file = path.open("rb")
        except FileNotFoundError:
            self.file = None
            return
        self.file.seek(0, os.SEEK_END) if offset is None else self.file.seek(offset)

    def _close(self) -> None:
        if self.file is not None:
            self.file.close()
        self.file, self.pending = None, b""

    def new_lines(self) -> list[bytes]:
        if self.file is None:
            self._open(self.path, 0)
            if self.file is None:
                return []
        chunk = self.file.read()
        try:
            rotated = os.stat(self.path).st_ino != os.fstat(self.file.fileno()).st_ino
        except FileNotFoundError:
            rotated = False
        if rotated:  # the file we read was renamed away: its last lines are in chunk; go on in the new one
            chunk += self.file.read()
            lines = (self.pending + chunk).split(b"\n")
            self._close()
            self._open(self.path, 0)
            return [line for line in lines if line.strip()]
        *complete, self.pending = (self.pending + chunk).split(b"\n")
        return [line for line in complete if line.strip()]
