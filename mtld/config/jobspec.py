"""The job file: one TOML file describing one multi-task fine-tuning job.

`load_job` parses, validates and resolves a job file and raises `JobFileError`
listing every problem as `FILE: dotted.key - message`. The same function runs at
`mtld submit` and again in the training child.
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Annotated, Any

from pydantic import (Field, Strict,
                      ValidationError)

from mtld.config.sections import LoggingSpec, ScheduleSpec, StrictModel, TrainSpec
from mtld.config.models import hub_cache, hub_id_of, hub_snapshot, is_hub_id, looks_like_path
from mtld.config.taskrows import (MAX_LINE_CHARS, DataError, Fields, TaskType, check_utf8, label_names, parse_example,
                                  read_rows, unseen_label)
from mtld.disk import folder_problem

ROWS_CHECKED_AT_SUBMIT = 200
JOB_FILE_LIMIT = 1 << 20  # bytes: a job file is a few hundred; anything this big is not one
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"

# A path is a TOML string: the one conversion strict mode is told to make.
FilePath = Annotated[Path, Strict(False)]


class TaskSpec(StrictModel):
    name: str = Field(pattern=NAME_PATTERN, max_length=64)
    type: TaskType
    train: FilePath
    eval: FilePath | None = None
    text_field: str = "text"
    text_pair_field: str | None = None
    label_field: str = "label"
    labels: list[str] | None = Field(default=None, min_length=1)
    weight: float = Field(default=1.0, gt=0, le=1000)

    @property
    def fields(self) -> Fields:
        return Fields(self.type, self.text_field, self.label_field, self.text_pair_field)


class JobSpec(StrictModel):
    name: str = Field(pattern=NAME_PATTERN, max_length=100)
    model: str = Field(min_length=1)  # a folder, or a hub id; stored as the folder (a hub id's snapshot)
    revision: str | None = Field(default=None, min_length=1)  # of a hub id: a branch, tag or commit
    tokenizer: str | None = None
    max_length: int = Field(default=128, ge=8, le=8192)
    trust_remote_code: bool = False
    output: FilePath | None = None
    # The longest line a data file may have: a line is held whole while it is parsed (mtld.config.taskrows).
    max_line_chars: int = Field(default=MAX_LINE_CHARS, ge=1000, le=100_000_000)
    tasks: list[TaskSpec] = Field(min_length=1, max_length=64)
    train: TrainSpec = TrainSpec()
    schedule: ScheduleSpec = ScheduleSpec()
    logging: LoggingSpec = LoggingSpec()


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a job file, located by its dotted key."""

    file: str
    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.key} - {self.message}"


class JobFileError(Exception):
    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(map(str, problems)))


def load_job(path: Path, *, shown_as: str | None = None, check_data: bool = True) -> JobSpec:
    """Parse, validate and resolve the job file at `path`.

    Relative paths in the file (model directory, data files, output) resolve
    against the file's folder. `shown_as` is how the file is named in messages
    (by default as given).
    """
    shown = shown_as or str(path)
    try:
        raw = tomllib.loads(read_job_text(path))
    except FileNotFoundError:
        raise JobFileError([Problem(shown, "(file)", "not found")]) from None
    except (UnicodeDecodeError, OSError) as e:
        raise JobFileError([Problem(shown, "(file)", f"cannot read: {e.__class__.__name__}")]) from None
    except NotAJobFile as e:
        raise JobFileError([Problem(shown, "(file)", str(e))]) from None
    except tomllib.TOMLDecodeError as e:
        raise JobFileError([_syntax_problem(shown, e)]) from None
    except RecursionError:  # tomllib recurses once per nested array or inline table
        raise JobFileError([Problem(shown, "(file)", "TOML syntax error: nested too deeply")]) from None
    return spec_from_dict(raw, base_dir=path.resolve().parent, shown_as=shown, check_data=check_data)


class NotAJobFile(ValueError):
    """A path that names something other than a regular file of job-file size."""


def read_job_text(path: Path) -> str:
    """A job file's text: regular files only (a FIFO or /dev/zero would hang or never end), at most
    JOB_FILE_LIMIT bytes. The open does not block, so a FIFO is refused, not waited on."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise NotAJobFile("not a regular file" + (" (a folder)" if stat.S_ISDIR(mode) else ""))
    with os.fdopen(fd, "rb") as f:
        data = f.read(JOB_FILE_LIMIT + 1)
    if len(data) > JOB_FILE_LIMIT:
        raise NotAJobFile(f"larger than {JOB_FILE_LIMIT >> 20} MiB: not a job file")
    return data.decode("utf-8")


def spec_from_dict(raw: dict[str, Any], *, base_dir: Path, shown_as: str, check_data: bool = True,
                   stored: bool = False) -> JobSpec:
    """`raw` as a TOML file gives it (real types), or as the store holds it (`stored`: its JSON text's values)."""
    try:
        spec = JobSpec.model_validate_json(json.dumps(raw)) if stored else JobSpec.model_validate(raw)
    except ValidationError as e:
        raise JobFileError([_validation_problem(shown_as, err) for err in e.errors()]) from None
    spec, problems = resolve_paths(spec, base_dir, shown_as)
    if problems:
        raise JobFileError(problems)
    problems = check_semantics(spec, shown_as)
    if check_data and not problems:
        problems = check_data_files(spec, shown_as)
    if problems:
        raise JobFileError(problems)
    return spec


class _Unresolvable(ValueError):
    """A path that cannot be followed to a place (a symlink loop)."""


def resolve_paths(spec: JobSpec, base_dir: Path, shown: str = "job") -> tuple[JobSpec, list[Problem]]:
    """Make every path absolute; a model that names an existing folder becomes a path, and so does a hub
    id in the local Hugging Face cache: its snapshot folder. The job then runs whatever the environment of
    the daemon that runs it (a LaunchAgent reads no shell start-up file: HF_HOME may be unset there).
    A path that cannot be followed (a symlink loop) is a problem, named by its key."""
    problems: list[Problem] = []

    def absolute(p: Path, key: str) -> Path:
        try:
            return _resolved(base_dir / p.expanduser())
        except _Unresolvable as e:
            problems.append(Problem(shown, key, str(e)))
            return p

    def model(name: str, key: str, revision: str | None) -> str:
        try:
            return _resolve_model(name, base_dir, revision)
        except _Unresolvable as e:
            problems.append(Problem(shown, key, str(e)))
            return name

    tasks = [
        t.model_copy(update={"train": absolute(t.train, f"tasks.{i}.train"),
                             "eval": absolute(t.eval, f"tasks.{i}.eval") if t.eval else None})
        for i, t in enumerate(spec.tasks)
    ]
    update: dict[str, Any] = {"tasks": tasks, "model": model(spec.model, "model", spec.revision)}
    if spec.tokenizer:
        update["tokenizer"] = model(spec.tokenizer, "tokenizer", None)
    if spec.output:
        update["output"] = absolute(spec.output, "output")
    return spec.model_copy(update=update), problems


def _resolved(path: Path) -> Path:
    """path.resolve(), with a symlink loop refused the same way on every Python (3.11 and 3.12 raise
    RuntimeError, 3.13 returns the path unresolved: the pathlib docs, Path.resolve)."""
    try:
        resolved = path.resolve()
        os.stat(resolved)
    except RuntimeError:
        raise _Unresolvable(f"{path} cannot be followed: a symlink loop") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise _Unresolvable(f"{path} cannot be followed: a symlink loop") from None
    return resolved


def _resolve_model(name: str, base_dir: Path, revision: str | None) -> str:
    candidate = base_dir / Path(name).expanduser()
    if looks_like_path(name) or candidate.exists() or candidate.is_symlink():
        return str(_resolved(candidate))
    return hub_snapshot(name, revision) or name  # not cached: stays a hub id, and check_semantics says so


def check_semantics(spec: JobSpec, shown: str) -> list[Problem]:
    problems: list[Problem] = []
    seen: dict[str, int] = {}
    for i, task in enumerate(spec.tasks):
        key = f"tasks.{i}"
        if task.name in seen:
            problems.append(Problem(shown, f"{key}.name", f"duplicate task name {task.name!r} (also tasks.{seen[task.name]})"))
        seen.setdefault(task.name, i)
        if task.type == "regression" and task.labels is not None:
            problems.append(Problem(shown, f"{key}.labels", "a regression task has no label list"))
        if task.type == "token_classification" and task.text_pair_field is not None:
            problems.append(Problem(shown, f"{key}.text_pair_field", "token classification takes no sentence pair"))
        if task.labels is not None and len(set(task.labels)) != len(task.labels):
            problems.append(Problem(shown, f"{key}.labels", "the label list has duplicates"))
    for key in ("model", "tokenizer"):
        name = getattr(spec, key)
        if name is not None and Path(name).is_dir():
            if key == "model" and not (Path(name) / "config.json").is_file():
                problems.append(Problem(shown, key, f"{name} is not a model folder (it has no config.json)"))
            continue
        if name is None:
            continue
        if looks_like_path(name):
            problems.append(Problem(shown, key, f"model folder not found: {name}"))
        elif hub_snapshot(name, spec.revision if key == "model" else None) is None:  # a hub id not in the cache
            revision = f" --revision {spec.revision}" if spec.revision and key == "model" else ""
            problems.append(
                Problem(shown, key, f"{name!r} is neither a folder next to the job file nor in the local Hugging Face cache "
                        f"({hub_cache()}): mtld never downloads; download it first with `hf download {name}{revision}`, "
                        "or give a folder")
            )
    if spec.revision is not None and not hub_id_of(spec.model) and not is_hub_id(spec.model):
        problems.append(Problem(shown, "revision", "a revision goes with a hub id, not a model folder"))
    if spec.output is not None and (problem := folder_problem(spec.output)):
        problems.append(Problem(shown, "output", problem))
    return problems


def check_data_files(spec: JobSpec, shown: str, max_rows: int = ROWS_CHECKED_AT_SUBMIT) -> list[Problem]:
    """Cheap checks of every data file: readable UTF-8, not empty, first rows valid; then every label of an
    eval file must be one the model learns (in the label list, else in the training data)."""
    problems: list[Problem] = []
    for i, task in enumerate(spec.tasks):
        found = []
        for split in ("train", "eval"):
            path = getattr(task, split)
            if path is None:
                continue
            problem = _check_data_file(task, path, max_rows, spec.max_line_chars)
            if problem:
                key, message = problem
                found.append(Problem(shown, f"tasks.{i}.{key or split}", message))
        if not found and task.eval is not None and task.type != "regression":
            message = _unlearned_eval_label(task, spec.max_line_chars)
            if message:
                found.append(Problem(shown, f"tasks.{i}.eval", message))
        problems += found
    return problems


def _unlearned_eval_label(task: TaskSpec, max_line_chars: int) -> str | None:
    """The first eval label the model would have no class for, said with its file and line (reads both files
    whole: the first rows are not enough). The child checks the same (mtld.train.data.load_task)."""
    assert task.eval is not None
    try:
        if task.labels is not None:
            known, seen_in = set(task.labels), None
        else:
            known, seen_in = {name for _, example in _examples(task, task.train, max_line_chars)
                              for name in label_names(example, task.type)}, task.train
        for line, example in _examples(task, task.eval, max_line_chars):
            for name in label_names(example, task.type):
                if name not in known:
                    return str(DataError(task.eval, unseen_label(name, seen_in), line))
    except DataError as e:
        return str(e)
    except OSError as e:
        return f"cannot read {e.filename}: {e.strerror}"
    return None


def _examples(task: TaskSpec, path: Path, max_line_chars: int) -> Iterator[tuple[int, Any]]:
    for line, row in read_rows(path, max_line_chars):
        yield line, parse_example(task.fields, row, path, line)


def _check_data_file(task: TaskSpec, path: Path, max_rows: int, max_line_chars: int) -> tuple[str | None, str] | None:
    if not path.is_file():
        return None, f"file not found: {path}"
    try:
        check_utf8(path)
        rows = list(islice(read_rows(path, max_line_chars), max_rows))
    except DataError as e:
        return None, str(e)
    except OSError as e:
        return None, f"cannot read {path.name}: {e.strerror}"
    if not rows:
        return None, f"{path.name} has no rows"
    for line, row in rows:
        for key, field in (("text_field", task.text_field), ("text_pair_field", task.text_pair_field), ("label_field", task.label_field)):
            if field is not None and field not in row:
                return key, f"field {field!r} not in {path.name} (line {line})"
        try:
            example = parse_example(task.fields, row, path, line)
        except DataError as e:
            return None, str(e)
        if task.labels is not None:
            unknown = [n for n in label_names(example, task.type) if n not in task.labels]
            if unknown:
                return "labels", f"label {unknown[0]!r} in {path.name} line {line} is not in the label list"
    return None


def _syntax_problem(shown: str, e: tomllib.TOMLDecodeError) -> Problem:
    match = re.search(r"\(at line (\d+), column (\d+)\)", str(e))
    message = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(e)) or "invalid TOML"
    where = f"line {match.group(1)}, column {match.group(2)}" if match else "(syntax)"
    return Problem(shown, where, f"TOML syntax error: {message}")


def _validation_problem(shown: str, err: dict[str, Any]) -> Problem:
    key = ".".join(str(part) for part in err["loc"]) or "(top level)"
    kind = err["type"]
    if kind == "extra_forbidden":
        message = "unknown key"
    elif kind == "missing":
        message = "missing (required)"
    else:
        message = err["msg"].removeprefix("Value error, ")
    return Problem(shown, key, message)


def spec_to_json(spec: JobSpec) -> str:
    return spec.model_dump_json()


def spec_from_json(text: str) -> JobSpec:
    return JobSpec.model_validate_json(text)


def stored_spec(text: str, *, shown_as: str) -> JobSpec:
    """A spec the store holds, checked by the same model; JobFileError (one line a problem) when an
    older mtld let through what this one refuses."""
    try:
        return JobSpec.model_validate_json(text)
    except ValidationError as e:
        raise JobFileError([_validation_problem(shown_as, err) for err in e.errors()]) from None
