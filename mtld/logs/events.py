"""Structured logs: JSON lines written with structlog, and fast readers for them.

Every line is one JSON object whose first keys are `ts` (ISO 8601, UTC),
`level`, `event`, then `job_id` / `run_id` when known, then the event's own
fields. Each line, whatever its length, reaches the file in one `write(2)` of
the whole line on an `O_APPEND` descriptor (looping only when the kernel takes
part of it), so a line is never torn, even when a CLI command appends a
`job.submitted` line while the daemon writes its own. A line that cannot be
written whole (a full disk) is taken back and dropped: every line parses.

The daemon log rotates by size (`rotate`, called by the daemon only:
mtld.jsonl → mtld.jsonl.1 → ...); every appender moves to the new file at its
next line, and the readers read across the rotated files.

Readers never load a whole file: `last_event` and `tail_events` read backwards
in blocks and `read_events` can stop at a time bound, so `mtld status` and
`mtld logs` stay fast on gigabyte logs. `snapshot` marks where a read ends and
`follow_files` goes on from there, so no line falls between the two.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

import structlog
from structlog.tracebacks import ExceptionDictTransformer

from mtld.disk import open_private, private_dir
from mtld.logs.files import Cursor, Follower, rotated_files, snapshot

FIRST_KEYS = ("ts", "level", "event", "job_id", "run_id")
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


class AppendWriter:
    """A structlog logger that appends each rendered line whole, to the file now at `path`.

    One write(2) of the whole line; a short write (the disk filled up mid-line)
    is continued, and a line that still cannot be finished is truncated off
    again and dropped (counted in `dropped`), so no half line stays behind.
    Logging never raises: a full disk must not stop a run or the daemon.
    """

    def __init__(self, path: Path):
        self.path = path
        private_dir(path.parent)
        self.fd = open_private(path, os.O_WRONLY | os.O_APPEND)
        self.inode = os.fstat(self.fd).st_ino
        self.dropped = 0

    def msg(self, message: str) -> None:
        data = (message + "\n").encode("utf-8")
        if self.fd < 0:  # closed (configure moved the log elsewhere): a logger bound before still writes its line
            try:
                fd = open_private(self.path, os.O_WRONLY | os.O_APPEND)
            except OSError:
                self.dropped += 1
                return
            try:
                self._write(fd, data)
            finally:
                os.close(fd)
            return
        self._follow_rotation()
        self._write(self.fd, data)

    def close(self) -> None:
        """Give the descriptor back; a later line opens the file for itself (never a reused descriptor)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def _write(self, fd: int, data: bytes) -> None:
        written = 0
        try:
            while written < len(data):
                written += os.write(fd, data[written:])
        except OSError:
            self.dropped += 1
            if written:
                self._take_back(fd, written)

    def _take_back(self, fd: int, written: int) -> None:
        """Truncate the part of a line that made it (it is the file's end: O_APPEND, one writer at a time)."""
        try:
            os.ftruncate(fd, os.fstat(fd).st_size - written)
        except OSError:
            pass

    def _follow_rotation(self) -> None:
        """The daemon renamed the file away (rotate): append to the new one from now on."""
        try:
            if os.stat(self.path).st_ino == self.inode:
                return
        except FileNotFoundError:  # renamed away, the next file not made yet: make it
            pass
        except OSError:
            return
        try:
            fd = open_private(self.path, os.O_WRONLY | os.O_APPEND)
        except OSError:
            return
        os.close(self.fd)
        self.fd, self.inode = fd, os.fstat(fd).st_ino

    log = debug = info = warning = warn = error = critical = exception = msg


_writer: AppendWriter | None = None  # the file configure() sends lines to now


class NullWriter:
    def msg(self, message: str) -> None:
        pass

    log = debug = info = warning = warn = error = critical = exception = msg


def configure(
    path: Path | None,
    *,
    level: str = "info",
    console: TextIO | None = None,
    bind: Mapping[str, Any] | None = None,
) -> None:
    """Send structlog (and the stdlib loggers of transformers, apscheduler, ...) to `path`.

    `console`, when given, also gets a short human-readable line per event.
    `bind` adds fields to every line from every thread (contextvars would not
    cross into the memory sampler thread).
    """
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        _timestamp,
        structlog.processors.ExceptionRenderer(ExceptionDictTransformer(show_locals=False)),
    ]
    if bind:
        processors.append(_DefaultFields(dict(bind)))
    if console is not None:
        processors.append(_ConsoleEcho(console))
    processors += [_first_keys_first, structlog.processors.JSONRenderer(serializer=_dumps)]
    global _writer
    writer: AppendWriter | NullWriter
    if path is None:
        writer = NullWriter()
    elif _writer is not None and _writer.path == path:
        writer = _writer  # configured again for the same file (a command, then the daemon it starts): one descriptor
    else:
        writer = AppendWriter(path)
    if _writer is not None and writer is not _writer:
        _writer.close()  # one open log per process, however often a process (a test, `mtld train`) configures
    _writer = writer if isinstance(writer, AppendWriter) else None
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level]),
        logger_factory=lambda *args: writer,
        cache_logger_on_first_use=False,
    )
    _route_stdlib_logging(LEVELS[level])


def get_logger(**fields: Any) -> structlog.typing.FilteringBoundLogger:
    return structlog.get_logger().bind(**fields)


def _dumps(obj: Any, **kwargs: Any) -> str:
    kwargs.setdefault("default", str)
    return json.dumps(obj, ensure_ascii=False, **kwargs)


def _first_keys_first(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    ordered = {k: event.pop(k) for k in FIRST_KEYS if k in event}
    ordered.update(event)
    return ordered


class _DefaultFields:
    def __init__(self, fields: dict[str, Any]):
        self.fields = fields

    def __call__(self, _: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
        for key, value in self.fields.items():
            event.setdefault(key, value)
        return event


class _ConsoleEcho:
    """Print `HH:MM:SS event key=value ...` for a person watching the terminal."""

    def __init__(self, stream: TextIO):
        self.stream = stream

    def __call__(self, _: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
        self.stream.write(format_event(event) + "\n")
        self.stream.flush()
        return event


def format_event(event: Mapping[str, Any]) -> str:
    """One readable line for an event (used by the console echo and `mtld logs`)."""
    ts = str(event.get("ts", ""))
    clock = ts[11:19] if len(ts) >= 19 else ts
    level = event.get("level", "info")
    mark = "" if level in ("info", "debug") else f"{level.upper()} "
    fields = " ".join(
        f"{k}={_short(v)}" for k, v in event.items() if k not in ("ts", "level", "event", "exception") and v is not None
    )
    line = f"{clock} {mark}{event.get('event', '?')} {fields}".rstrip()
    exc = event.get("exception")
    if isinstance(exc, list) and exc:
        last = exc[-1]
        line += f"\n    {last.get('exc_type')}: {last.get('exc_value')}"
    return line


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (dict, list)):
        return _dumps(value, separators=(",", ":"))
    return str(value)


class _ToStructlog(logging.Handler):
    """Carry stdlib log records (transformers, apscheduler, ...) into structlog."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            log = structlog.get_logger().bind(logger=record.name)
            method = getattr(log, record.levelname.lower(), log.info)
            method("library.log", message=record.getMessage(), exc_info=record.exc_info or False)
        except Exception:  # logging must never take the process down
            self.handleError(record)


def _route_stdlib_logging(level: int) -> None:
    root = logging.getLogger()
    root.handlers[:] = [_ToStructlog()]
    root.setLevel(max(level, logging.WARNING))
    logging.getLogger("apscheduler").setLevel(max(level, logging.WARNING))


# ---------------------------------------------------------------- reading


def parse_ts(ts: str) -> float:
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def utc_stamp(at: datetime) -> str:
    """A log line's `ts`: ISO 8601 in UTC, always with six fractional digits, so that the text sorts as the
    time does (`datetime.isoformat`, and so structlog's TimeStamper, drops them on a whole second)."""
    return at.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _timestamp(logger: Any, method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    event_dict["ts"] = utc_stamp(datetime.now(timezone.utc))
    return event_dict


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat().replace("+00:00", "Z")


def _parse(line: bytes) -> dict[str, Any] | None:
    try:
        event = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None  # a line still being written, or damage: skip it
    return event if isinstance(event, dict) else None


def _all_lines_reversed(path: Path, end: Cursor | None) -> Iterator[bytes]:
    """Lines of `path` and then of its rotated files, from the last to the first; with `end`, only
    what was there at that snapshot (the file it names, up to its offset, and the older ones)."""
    files = [path, *rotated_files(path)]
    if end is not None:
        inodes = [_inode(f) for f in files]
        if end.inode in inodes:  # also when the file was rotated since the snapshot
            files = files[inodes.index(end.inode):]
        elif end.inode is None:  # there was no file yet: everything in it is the follower's
            files = files[1:]
    for i, file in enumerate(files):
        yield from reversed_lines(file, end=end if i == 0 else None)


def _inode(path: Path) -> int | None:
    try:
        return path.stat().st_ino
    except FileNotFoundError:
        return None


def reversed_lines(path: Path, block_size: int = 1 << 16, *, end: Cursor | None = None) -> Iterator[bytes]:
    """Lines of a file from the last to the first, reading blocks from the end (or from `end`)."""
    try:
        f = path.open("rb")
    except FileNotFoundError:
        return
    with f:
        f.seek(0, os.SEEK_END)
        position = f.tell()
        if end is not None and end.inode == os.fstat(f.fileno()).st_ino:
            position = min(position, end.offset)
        tail = b""
        while position > 0:
            step = min(block_size, position)
            position -= step
            f.seek(position)
            lines = (f.read(step) + tail).split(b"\n")
            tail = lines.pop(0)
            for line in reversed(lines):
                if line.strip():
                    yield line
        if tail.strip():
            yield tail


def tail_events(path: Path, limit: int, *, match: Mapping[str, Any] | None = None,
                end: Cursor | None = None) -> list[dict[str, Any]]:
    """The last `limit` events (oldest first) whose fields equal `match`, across rotated files."""
    found: list[dict[str, Any]] = []
    for line in _all_lines_reversed(path, end):
        event = _parse(line)
        if event is not None and _matches(event, match):
            found.append(event)
            if len(found) >= limit:
                break
    found.reverse()
    return found


def last_event(path: Path, names: set[str], *, match: Mapping[str, Any] | None = None, scan_limit: int = 5000) -> dict[str, Any] | None:
    """The most recent event named in `names`, looking at most `scan_limit` lines back."""
    for i, line in enumerate(reversed_lines(path)):
        if i >= scan_limit:
            return None
        event = _parse(line)
        if event is not None and event.get("event") in names and _matches(event, match):
            return event
    return None


def read_events(path: Path, *, match: Mapping[str, Any] | None = None, since: float | None = None,
                end: Cursor | None = None) -> list[dict[str, Any]]:
    """Events in file order, newer than `since` (epoch), read from the end (or `end`) backwards,
    on into the rotated files. Logs are appended in time order, so the scan stops at the first older line.
    """
    found: list[dict[str, Any]] = []
    for line in _all_lines_reversed(path, end):
        event = _parse(line)
        if event is None:
            continue
        if since is not None and "ts" in event and parse_ts(event["ts"]) < since:
            break
        if _matches(event, match):
            found.append(event)
    found.reverse()
    return found


def follow_files(
    paths: list[Path], *, poll_s: float = 0.5, stop: Callable[[], bool] | None = None,
    start: Mapping[Path, Cursor] | None = None,
) -> Iterator[tuple[Path, dict[str, Any]]]:
    """Yield (path, event) for lines appended to any of `paths` (`tail -f`): from `start[path]`
    (a `snapshot` taken before reading the file) when given, else from now on.

    Files that do not exist yet are picked up when they appear. A file rotated
    away (the daemon log) is read to its end, then the new one from its start.
    `stop()` is asked whenever nothing new has arrived; it ends the loop after a last read.
    """
    followers = [Follower(p, start.get(p) if start is not None else snapshot(p)) for p in paths]
    while True:
        got_any = False
        for follower in followers:
            for line in follower.new_lines():
                got_any = True
                event = _parse(line)
                if event is not None:
                    yield follower.path, event
        if not got_any:
            if stop is not None and stop():
                return
            time.sleep(poll_s)


def _matches(event: Mapping[str, Any], match: Mapping[str, Any] | None) -> bool:
    return not match or all(event.get(k) == v for k, v in match.items())
