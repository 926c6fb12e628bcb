"""Reading task data: JSONL and CSV rows turned into checked examples.

One place for the data format, shared by the submit-time validator and the
training child, so the two can never disagree about what a valid row is.
"""

from __future__ import annotations

import codecs
import csv
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TextIO

TaskType = Literal["classification", "multilabel", "regression", "token_classification"]
DATA_SUFFIXES = (".jsonl", ".csv")
# The longest line a data file may have, in characters (the job file's `max_line_chars`). A line is read whole
# before it is parsed, and one 10 MB line took a run's peak memory from 0.54 GB to 2.0 GB; a whole example at
# max_length 8192 is some tens of thousands of characters.
MAX_LINE_CHARS = 1_000_000
LIMIT_KEY = "the job file's max_line_chars"


class DataError(ValueError):
    """A problem with one data file, pointing at the line when there is one."""

    def __init__(self, path: Path, message: str, line: int | None = None):
        self.path, self.line, self.message = path, line, message
        where = f"{path.name} line {line}" if line else path.name
        super().__init__(f"{where}: {message}")


@dataclass(frozen=True, slots=True)
class Example:
    """One labelled example. Token tasks carry words and one tag per word."""

    text: str | list[str]
    pair: str | None
    label: str | list[str] | float


@dataclass(frozen=True, slots=True)
class Fields:
    """Which fields of a row hold what, for one task."""

    type: TaskType
    text: str
    label: str
    pair: str | None = None


def check_utf8(path: Path, chunk_size: int = 1 << 20) -> None:
    """Raise DataError unless the whole file is valid UTF-8 (streamed, cheap)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    line = 1
    with path.open("rb") as f:
        while chunk := f.read(chunk_size):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as e:
                raise DataError(path, "not valid UTF-8", line + chunk[: e.start].count(b"\n")) from None
            line += chunk.count(b"\n")
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise DataError(path, "not valid UTF-8 (truncated character at the end)", line) from None


def read_rows(path: Path, max_line_chars: int = MAX_LINE_CHARS) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, row) from a .jsonl or .csv file. A line longer than `max_line_chars` is refused
    with its number before it is read whole (and so is a CSV field longer than that)."""
    suffix = path.suffix.lower()
    if suffix not in DATA_SUFFIXES:
        raise DataError(path, f"unsupported format {suffix or '(no suffix)'!r}: use .jsonl or .csv")
    try:
        # utf-8-sig: spreadsheets save CSV with a byte-order mark; it is not part of the first field's name.
        with path.open(encoding="utf-8-sig", newline="" if suffix == ".csv" else None) as f:
            lines = _bounded_lines(f, path, max_line_chars)
            if suffix == ".csv":
                yield from _csv_rows(lines, path, max_line_chars)
                return
            for number, text in enumerate(lines, start=1):
                if not text.strip():
                    continue
                yield number, _json_row(text, path, number)
    except UnicodeDecodeError:
        raise DataError(path, "not valid UTF-8") from None


def _bounded_lines(f: TextIO, path: Path, limit: int) -> Iterator[str]:
    """The file's lines, each read with at most `limit` characters (plus its line ending) held at a time."""
    number = 0
    while line := f.readline(limit + 2):  # room for "\r\n" after a line of exactly `limit` characters
        number += 1
        if len(line.rstrip("\r\n")) > limit:
            raise DataError(path, f"longer than {limit:,} characters ({LIMIT_KEY})", number)
        yield line


def _csv_rows(lines: Iterator[str], path: Path, limit: int) -> Iterator[tuple[int, dict[str, Any]]]:
    # csv's own limit on a field (131,072 characters unless raised: Python's Modules/_csv.c) is the line limit
    # here, so that a field a line may hold is read; a quoted field across lines is held to it as well.
    csv.field_size_limit(limit)
    reader = csv.DictReader(lines)
    try:
        for row in reader:
            yield reader.line_num, row
    except csv.Error as e:  # the row that failed begins after the last one read (a quoted field spans lines)
        too_long = "field larger than field limit" in str(e)
        message = f"a field longer than {limit:,} characters ({LIMIT_KEY})" if too_long else f"not valid CSV ({e})"
        raise DataError(path, message, reader.line_num + 1) from None


def _json_row(text: str, path: Path, number: int) -> dict[str, Any]:
    try:
        row = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(path, f"not valid JSON ({e.msg})", number) from None
    except RecursionError:  # json's decoder recurses once per nesting level
        raise DataError(path, "not valid JSON (nested too deeply)", number) from None
    if not isinstance(row, dict):
        raise DataError(path, "each line must be a JSON object", number)
    return row


def parse_example(fields: Fields, row: dict[str, Any], path: Path, line: int) -> Example:
    """Check one row against a task's fields and return it as an Example."""

    def get(name: str) -> Any:
        if name not in row:
            raise DataError(path, f"field {name!r} missing", line)
        return row[name]

    if fields.type == "token_classification":
        words = _as_list(get(fields.text), path, line, fields.text)
        tags = _as_list(get(fields.label), path, line, fields.label)
        if not words:
            raise DataError(path, f"field {fields.text!r} is empty", line)
        if any(not word.strip() for word in words):
            raise DataError(path, f"field {fields.text!r} has an empty word (it would get no sub-token and lose its tag)", line)
        if len(words) != len(tags):
            raise DataError(path, f"{len(words)} words but {len(tags)} tags", line)
        return Example(words, None, tags)

    text = get(fields.text)
    if not isinstance(text, str) or not text.strip():
        raise DataError(path, f"field {fields.text!r} must be a non-empty string", line)
    pair = None
    if fields.pair is not None:
        pair = get(fields.pair)
        if not isinstance(pair, str) or not pair.strip():
            raise DataError(path, f"field {fields.pair!r} must be a non-empty string", line)
    raw = get(fields.label)
    if fields.type == "classification":
        return Example(text, pair, _as_label(raw, path, line, fields.label))
    if fields.type == "multilabel":
        return Example(text, pair, _as_list(raw, path, line, fields.label))
    return Example(text, pair, _as_number(raw, path, line, fields.label))


def _as_label(value: Any, path: Path, line: int, name: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
        raise DataError(path, f"field {name!r} must be a label (a string or an integer)", line)
    return str(value)


def _as_number(value: Any, path: Path, line: int, name: str) -> float:
    try:
        if isinstance(value, bool):
            raise ValueError
        number = float(value)
    except (TypeError, ValueError):
        raise DataError(path, f"field {name!r} must be a number, got {value!r}", line) from None
    if not math.isfinite(number):
        raise DataError(path, f"field {name!r} must be finite, got {value!r}", line)
    return number


def _as_list(value: Any, path: Path, line: int, name: str) -> list[str]:
    """A list of strings. In CSV cells: a JSON array, or whitespace-separated values."""
    if isinstance(value, str):
        stripped = value.strip()
        if stripped.startswith("["):
            try:
                value = json.loads(stripped)
            except (json.JSONDecodeError, RecursionError):
                raise DataError(path, f"field {name!r} is not a valid JSON list", line) from None
        else:
            value = stripped.split()
    if not isinstance(value, list) or not all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in value):
        raise DataError(path, f"field {name!r} must be a list of strings", line)
    return [str(v) for v in value]


def unseen_label(label: str, train: Path | None) -> str:
    """Why an eval label cannot be scored: not in the label list (`train` None), or never in the training data
    (without a label list, the classes are the training data's labels: an extra one no example teaches)."""
    if train is None:
        return f"label {label!r} is not in the label list"
    return (f"label {label!r} never occurs in the training data ({train.name}): the model would have a class no "
            "example teaches; add examples of it there, or give the task a label list")


def label_names(example: Example, task_type: TaskType) -> list[str]:
    """The label names an example uses (none for regression)."""
    if task_type == "regression":
        return []
    return list(example.label) if isinstance(example.label, list) else [str(example.label)]
