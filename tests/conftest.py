"""Shared fixtures and helpers: a tiny BERT built once per session (once per
xdist worker), small synthetic task data, job files, child processes, and a
real daemon's MTLD_HOME.

The data is generated, not shipped: each task type has a rule the tiny model
can learn in a few epochs (sentiment words decide the label, topic words the
topics, names and cities the entity tags), so tests can check that training
does something, not only that it runs.

Tests that start real processes (a child run, a daemon, the CLI as a
process), send real signals, set rlimits or train whole runs are marked
`slow`; `make test-fast` leaves them out.
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import structlog
from structlog.testing import CapturingLogger, LogCapture

REPO = Path(__file__).resolve().parents[1]

FILLER = "the a this that movie film day place it was is really quite very here there".split()
POSITIVE, NEGATIVE = ["good", "great", "lovely"], ["bad", "awful", "boring"]
TOPICS = {"sports": ["football", "tennis"], "food": ["bread", "rice"], "tech": ["phone", "laptop"]}
PEOPLE, PLACES = ["alice", "bob", "carol"], ["tokyo", "paris", "東京"]
TASK_LABELS = {
    "classification": ["pos", "neg"],
    "pair": ["yes", "no"],
    "multilabel": list(TOPICS),
    "tokens": ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"],
}


def _words(rng: random.Random, low: int, high: int) -> list[str]:
    return [rng.choice(FILLER) for _ in range(rng.randint(low, high))]


def _insert(rng: random.Random, words: list[str], *extra: str) -> list[str]:
    for word in extra:
        words.insert(rng.randint(0, len(words)), word)
    return words


def make_rows(kind: str, n: int, seed: int = 0, *, long: int = 0) -> list[dict[str, Any]]:
    """`n` rows of a task type; `long` adds that many filler words to each text."""
    rng = random.Random(f"{kind}-{seed}")
    rows = []
    for _ in range(n):
        if kind == "classification":
            label = rng.choice(["pos", "neg"])
            word = rng.choice(POSITIVE if label == "pos" else NEGATIVE)
            rows.append({"text": " ".join(_insert(rng, _words(rng, 2 + long, 12 + long), word)), "label": label})
        elif kind == "pair":
            # the answer is in the second sentence; the first one holds a distractor
            a, b = rng.choice(POSITIVE + NEGATIVE), rng.choice(POSITIVE + NEGATIVE)
            rows.append({"a": " ".join(_insert(rng, _words(rng, 2, 8), a)), "b": " ".join(_insert(rng, _words(rng, 2, 8), b)),
                         "label": "yes" if b in POSITIVE else "no"})
        elif kind == "multilabel":
            topics = rng.sample(list(TOPICS), rng.randint(1, 2))
            words = _insert(rng, _words(rng, 2, 10), *(rng.choice(TOPICS[t]) for t in topics))
            rows.append({"text": " ".join(words), "topics": topics})
        elif kind == "regression":
            a, b = _words(rng, 3, 8), _words(rng, 3, 8)
            k = rng.randint(0, 3)
            b = _insert(rng, b, *(["great"] * k))
            rows.append({"a": " ".join(a), "b": " ".join(b), "score": float(k)})
        elif kind == "tokens":
            words, tags = [], []
            for _ in range(rng.randint(3, 10)):
                roll = rng.random()
                if roll < 0.15:
                    words += [rng.choice(PEOPLE)]
                    tags += ["B-PER"]
                elif roll < 0.25:
                    words += [rng.choice(PLACES)]
                    tags += ["B-LOC"]
                elif roll < 0.3:
                    words += ["new", "york"]
                    tags += ["B-LOC", "I-LOC"]
                else:
                    words += [rng.choice(FILLER)]
                    tags += ["O"]
            rows.append({"tokens": words, "tags": tags})
        else:
            raise ValueError(kind)
    return rows


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def vocabulary_texts() -> list[str]:
    texts = [" ".join(FILLER + POSITIVE + NEGATIVE + PEOPLE + PLACES + ["new", "york"])]
    texts += [" ".join(words) for words in TOPICS.values()]
    for kind in ("classification", "multilabel", "tokens"):
        for row in make_rows(kind, 50, seed=99):
            texts.append(row.get("text") or " ".join(row["tokens"]))
    return texts


def build_model(out: Path, **kwargs: Any) -> Path:
    from mtld.train.tinymodel import build_tiny_model

    options = {"layers": 2, "hidden": 32, "heads": 2, "vocab_size": 200, "max_position": 128} | kwargs
    return build_tiny_model(out, vocabulary_texts(), **options)


def without_dropout(model: Path, out: Path) -> Path:
    shutil.copytree(model, out)
    config = json.loads((out / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (out / "config.json").write_text(json.dumps(config))
    return out


@pytest.fixture(scope="session")
def one_thread() -> None:
    """Train tests use one intra-op thread: on a busy 2-core box, two OpenMP threads spin
    against other processes and a tiny model's step gets 30-70x slower. (Not autouse:
    torch-free tests must not pay for importing torch.)"""
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory, one_thread: None) -> Path:
    """hidden 32, 2 layers, 2 heads, a 200-piece WordPiece vocabulary."""
    return build_model(tmp_path_factory.mktemp("models") / "tiny-bert")


@pytest.fixture(scope="session")
def tiny_model_no_dropout(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return without_dropout(tiny_model, tmp_path_factory.mktemp("models") / "tiny-bert-no-dropout")


@pytest.fixture
def train_job(tmp_path: Path, tiny_model: Path):
    """A one-task job file on the tiny model whose [train] table holds `line` (e.g. 'compile = true')."""
    (tmp_path / "t.jsonl").write_text('{"text": "a", "label": "x"}\n')

    def write(line: str) -> Path:
        path = tmp_path / "job.toml"
        path.write_text(f'name = "j"\nmodel = "{tiny_model}"\n[[tasks]]\nname = "t"\ntype = "classification"\n'
                        f'train = "t.jsonl"\n[train]\n{line}\n')
        return path

    return write


TASK_FIELDS = {
    "classification": {"type": "classification", "text_field": "text", "label_field": "label"},
    "pair": {"type": "classification", "text_field": "a", "text_pair_field": "b", "label_field": "label"},
    "multilabel": {"type": "multilabel", "text_field": "text", "label_field": "topics"},
    "regression": {"type": "regression", "text_field": "a", "text_pair_field": "b", "label_field": "score"},
    "tokens": {"type": "token_classification", "text_field": "tokens", "label_field": "tags"},
}


class Jobs:
    """Writes data files, job specs and run directories under one tmp folder."""

    def __init__(self, base: Path, model: Path):
        self.base, self.model = base, model

    def task(self, kind: str, n: int = 64, *, n_eval: int = 0, seed: int = 0, name: str | None = None,
             labels: bool = True, long: int = 0, **overrides: Any) -> dict[str, Any]:
        name = name or kind
        task = {"name": name, **TASK_FIELDS[kind], "train": str(write_jsonl(self.base / "data" / f"{name}.train.jsonl",
                                                                            make_rows(kind, n, seed, long=long)))}
        if n_eval:
            task["eval"] = str(write_jsonl(self.base / "data" / f"{name}.eval.jsonl", make_rows(kind, n_eval, seed + 1000, long=long)))
        if labels and kind in TASK_LABELS:
            task["labels"] = TASK_LABELS[kind]
        return task | overrides

    def spec(self, tasks: list[dict[str, Any]], *, model: Path | None = None, max_length: int = 64, **train: Any):
        from mtld.config.jobspec import spec_from_dict

        raw = {"name": "test", "model": str(model or self.model), "max_length": max_length, "tasks": tasks,
               "train": {"epochs": 2, "learning_rate": 1e-3, "effective_batch_size": 8, "checkpoint_every": 1000,
                             "mixed_precision": "off"} | train}  # the same maths on every test machine
        return spec_from_dict(raw, base_dir=self.base, shown_as="test.toml", check_data=False)

    def run_dir(self, spec: Any, *, micro_batch: int = 2, name: str = "run", **launch: Any) -> Path:
        from mtld.runs.rundir import Launch, RunDir

        rd = RunDir(self.base / name)
        rd.claim({"job_id": 7, "store": "tests"})  # as a launcher does (mtld.runs.rundir)
        rd.write_job(spec)
        rd.write_launch(Launch(micro_batch=micro_batch, device="cpu", job_id=7, run_id=11, **launch))
        return rd.path


@pytest.fixture
def jobs(tmp_path: Path, tiny_model: Path) -> Jobs:
    return Jobs(tmp_path, tiny_model)


@pytest.fixture(scope="session")
def make_jobs(tiny_model: Path):
    """make_jobs(base, model=None) -> Jobs, for module-scoped fixtures."""
    return lambda base, model=None: Jobs(Path(base), Path(model or tiny_model))


def log_events(path: Path, name: str | None = None) -> list[dict[str, Any]]:
    """The events of a JSON-lines log (a run's run.jsonl, the daemon's mtld.jsonl), oldest first; none if it is not there yet."""
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    found = [json.loads(line) for line in lines if line.strip()]
    return [e for e in found if name is None or e["event"] == name]


def events(run_dir: Path, name: str | None = None) -> list[dict[str, Any]]:
    """A run directory's events (run.jsonl, which must exist)."""
    if not (run_dir / "run.jsonl").exists():
        raise FileNotFoundError(run_dir / "run.jsonl")
    return log_events(run_dir / "run.jsonl", name)


@pytest.fixture
def read_events():
    """read_events(run_dir, name=None) -> the run log's events, oldest first."""
    return events


@pytest.fixture(scope="session")
def data_rows():
    """data_rows(kind, n, seed=0) -> synthetic rows, the same generator as the training data."""
    return make_rows


@pytest.fixture(scope="session")
def model_builder(one_thread: None):
    """model_builder(out_dir, **build_tiny_model options) -> a tiny model on the test vocabulary."""
    return build_model


# ------------------------------------------------------------------ child processes


def child_env(**extra: str) -> dict[str, str]:
    """This process's environment for a child `python -m mtld...`, with this checkout on PYTHONPATH."""
    return {**os.environ, "PYTHONPATH": str(REPO), **extra}


def finish(process: subprocess.Popen, timeout: float = 240) -> tuple[int, str]:
    """Wait for a child started with stderr=PIPE: (exit status, its stderr)."""
    _, err = process.communicate(timeout=timeout)
    return process.returncode, err


# ------------------------------------------------------------------ job files (test_jobspec, test_cli)


GOOD_JOB = """\
name = "demo"
model = "model"
max_length = 64

[[tasks]]
name = "sentiment"
type = "classification"
train = "data/sentiment.jsonl"
labels = ["pos", "neg"]

[[tasks]]
name = "score"
type = "regression"
train = "data/score.csv"
text_field = "a"
text_pair_field = "b"
label_field = "score"

[[tasks]]
name = "entities"
type = "token_classification"
train = "data/entities.jsonl"
text_field = "tokens"
label_field = "tags"

[train]
epochs = 2
batch_size = "auto"
"""

SENTIMENT = [{"text": "great film", "label": "pos"}, {"text": "dull film", "label": "neg"}]
SCORE_CSV = "a,b,score\nthe cat sat,a cat sat,4.5\nred car,blue sky,0.5\n"
ENTITIES = [{"tokens": ["Ann", "went", "to", "Kyoto"], "tags": ["B-PER", "O", "O", "B-LOC"]}]


def write_job(folder: Path, text: str = GOOD_JOB) -> Path:
    """A job file (GOOD_JOB unless told) with a model folder and its three small data files next to it."""
    (folder / "model").mkdir(exist_ok=True)
    (folder / "model" / "config.json").write_text("{}")  # what makes a folder a model folder at submit
    data = folder / "data"
    data.mkdir(exist_ok=True)
    (data / "sentiment.jsonl").write_text("".join(json.dumps(r) + "\n" for r in SENTIMENT), encoding="utf-8")
    (data / "score.csv").write_text(SCORE_CSV, encoding="utf-8")
    (data / "entities.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ENTITIES), encoding="utf-8")
    path = folder / "job.toml"
    path.write_text(text, encoding="utf-8")
    return path


# ------------------------------------------------------------------ a real daemon (test_daemon, test_adaptive, test_schedule)


DAEMON_WORDS = ["good", "bad", "fine", "awful", "great", "poor", "nice", "dull", "Kyoto", "Ann", "Bob", "Osaka"]
DAEMON_JOB = """\
name = "{name}"
model = "{model}"
max_length = 32

[[tasks]]
name = "sentiment"
type = "classification"
train = "sentiment.jsonl"
eval = "sentiment.jsonl"

[[tasks]]
name = "entities"
type = "token_classification"
train = "entities.jsonl"
text_field = "tokens"
label_field = "tags"

[train]
epochs = {epochs}
checkpoint_every = {checkpoint_every}
effective_batch_size = 8
mixed_precision = "off"  # the same maths (and speed) on every test machine
"""


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """A folder with a one-layer tiny model and two small task files, for jobs a real daemon runs (see job_file)."""
    from mtld.train.tinymodel import build_tiny_model

    folder = tmp_path_factory.mktemp("daemon-job")
    sentiment, entities = [], []
    for i in range(96):
        a, b = DAEMON_WORDS[i % 8], DAEMON_WORDS[(i * 5 + 3) % 8]
        sentiment.append({"text": f"the film was {a} and {b}", "label": "pos" if DAEMON_WORDS.index(a) % 2 == 0 else "neg"})
        name, place = ("Ann", "Kyoto") if i % 2 else ("Bob", "Osaka")
        entities.append({"tokens": [name, "went", "to", place, "today"], "tags": ["B-PER", "O", "O", "B-LOC", "O"]})
    for file, rows in (("sentiment.jsonl", sentiment), ("entities.jsonl", entities)):
        (folder / file).write_text("".join(json.dumps(r) + "\n" for r in rows))
    build_tiny_model(folder / "model", (r["text"] for r in sentiment), layers=1, hidden=32, heads=2, vocab_size=200)
    return folder


def job_file(data_dir: Path, name: str = "job", epochs: int = 1, checkpoint_every: int = 50) -> Path:
    """A job file in `data_dir` (the fixture) for its model and data."""
    path = data_dir / f"{name}.toml"
    path.write_text(DAEMON_JOB.format(name=name, model=data_dir / "model", epochs=epochs, checkpoint_every=checkpoint_every))
    return path


class Home:
    """One MTLD_HOME: run the CLI and the daemon against it as real processes."""

    def __init__(self, path: Path):
        self.path = path
        # The pressure the daemon and its runs see: "normal" unless a test writes warn or critical. The real
        # probes are tested on their own (test_memory); here a busy shared machine must not decide the size.
        self.pressure = path.parent / "pressure"
        self.pressure.parent.mkdir(parents=True, exist_ok=True)
        self.pressure.write_text("normal\n")
        self.env = {
            **os.environ,
            "MTLD_HOME": str(path),
            "MTLD_MEMORY__PROBE": "simulated",
            "MTLD_MEMORY__SIMULATED_FILE": str(self.pressure),
            "MTLD_DAEMON__POLL_INTERVAL_S": "0.5",
            "MTLD_DAEMON__NOTIFY": "false",
            "MTLD_DAEMON__PREVENT_SLEEP": "false",
            "MTLD_DAEMON__STOP_TIMEOUT_S": "20",
            "MTLD_TRAIN__DEVICE": "cpu",
            "MTLD_TRAIN__PROGRESS_EVERY_S": "0",
            "OMP_NUM_THREADS": "1",
        }
        self.env.pop("MTLD_CONFIG", None)

    def mtld(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run([sys.executable, "-m", "mtld", *args], env=self.env, capture_output=True, text=True,
                              timeout=60)
        if check and done.returncode != 0:  # say what it said: CalledProcessError would hide stderr
            raise AssertionError(f"mtld {' '.join(args)} exited {done.returncode}: {done.stderr.strip()}")
        return done

    def submit(self, job: Path, *args: str) -> int:
        return int(self.mtld("submit", str(job), *args).stdout)

    def daemon(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "mtld", "daemon", "--quiet", *args], env=self.env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def store(self):
        from mtld.store import Store

        return Store(self.path / "state.db")

    def job(self, job_id: int):
        with self.store() as store:
            return store.get(job_id)

    def runs(self, job_id: int):
        with self.store() as store:
            return store.runs_for(job_id)

    def transitions(self, job_id: int):
        with self.store() as store:
            return store.transitions_for(job_id)

    def daemon_events(self, name: str | None = None) -> list[dict]:
        return log_events(self.path / "logs" / "mtld.jsonl", name)

    def run_events(self, job_id: int, name: str | None = None) -> list[dict]:
        return log_events(Path(self.job(job_id).run_dir) / "run.jsonl", name)

    def wait_for(self, what, timeout: float = 120, poll: float = 0.1):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = what()
            if value:
                return value
            time.sleep(poll)
        raise AssertionError(f"timed out waiting for {what}")


# ------------------------------------------------------------------ captured log events


def capturing_log() -> tuple[Any, LogCapture]:
    """A bound structlog logger, as the sampler gets in the daemon, whose events land in `LogCapture.entries`.

    Each entry is the event's dict: "event", "log_level" and its fields. The
    capture drops the event, so the CapturingLogger underneath is never called;
    structlog's global configuration is left alone.
    """
    capture = LogCapture()
    return structlog.wrap_logger(CapturingLogger(), wrapper_class=structlog.BoundLogger, processors=[capture]), capture


def take(capture: LogCapture) -> list[dict]:
    """The entries captured since the last take."""
    entries, capture.entries = capture.entries, []
    return entries


# ------------------------------------------------------------------ a small filesystem that fills up


@pytest.fixture
def small_fs(tmp_path):
    """small_fs(size) -> a folder on a fresh tmpfs of `size` ("8m"); skips where one cannot be mounted
    (not Linux, not root, no mount permission), and unmounts it whatever the test did."""
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        if sys.platform != "linux" or os.geteuid() != 0:
            pytest.skip("mounting a tmpfs needs root on Linux")
        where = tmp_path / f"small-fs-{len(mounted)}"
        where.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(where)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}")
        mounted.append(where)
        return where

    try:
        yield mount
    finally:
        for where in mounted:
            subprocess.run(["umount", "-l", str(where)], capture_output=True)


def fill(folder: Path, leave: int) -> Path:
    """Write a filler file so that about `leave` bytes stay free on `folder`'s filesystem. A run may be
    writing there at the same time: a write the disk refuses ends the filling, and the filler then gives
    back what `leave` asks for."""

    def free() -> int:
        st = os.statvfs(folder)
        return st.f_bavail * st.f_frsize

    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        chunk = b"\0" * (1 << 20)
        while (room := free() - leave) > 0:
            try:
                os.write(fd, chunk[:room])
            except OSError as e:
                if e.errno != errno.ENOSPC:
                    raise
                break
    finally:
        os.close(fd)
    if (short := leave - free()) > 0:
        os.truncate(filler, max(filler.stat().st_size - short, 0))
    return filler


def open_under(folder: Path) -> list[str]:
    """The files under `folder` this process holds open (Linux: /proc/self/fd)."""
    held = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # closed meanwhile (the listing's own descriptor)
            continue
        if target.startswith(str(folder)):
            held.append(target)
    return held


# ------------------------------------------------------------------ the CLI in-process


def run_cli(*args: str) -> tuple[int, str, str]:
    """`mtld ARGS` through typer's runner: (exit status, stdout, stderr); an exception that is not an exit
    is raised as itself, so a test shows the traceback a user would never see."""
    from typer.testing import CliRunner

    from mtld.cli import app

    result = CliRunner().invoke(app, list(args))
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr
