"""Rows per data file, and the rough duration of a queued job built on them.

`mtld status` forecasts the queue without tokenizing: a queued job's expected
seconds come from the number of training examples (rows of its data files)
and its family's seconds per example (mtld.decide.runtime.rough_seconds). Counting
the rows of a large data set takes a while, so the counts are cached in
STATE/estimates/rows.json by (path, size, mtime). Only writers fill that file:
`mtld submit` counts a job's data once (`remember_rows`). `mtld status` only
reads it; a file it misses (changed since, or a job queued by a schedule) is
counted in memory for that call and not saved, so a read never writes.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from mtld.decide import runtime
from mtld.decide.runtime import RunRecord, evaluation_count
from mtld.config.jobspec import JobSpec
from mtld.disk import write_json_atomic
from mtld.config.settings import Settings


def cache_file(settings: Settings) -> Path:
    return settings.state_dir / "estimates" / "rows.json"


class ExampleCounts:
    """Rows per data file, remembered in a JSON file by (path, size, mtime)."""

    def __init__(self, cache: Path | None = None) -> None:
        self.cache = cache
        self.known: dict[str, list[int]] = {}
        self.changed = False
        if cache is not None:
            try:
                self.known = json.loads(cache.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                self.known = {}

    def of(self, path: Path) -> int:
        from mtld.config.taskrows import read_rows

        st = path.stat()
        key, stamp = str(path.resolve()), [st.st_size, st.st_mtime_ns]
        hit = self.known.get(key)
        if hit is not None and hit[:2] == stamp:
            return hit[2]
        rows = sum(1 for _ in read_rows(path))
        self.known[key], self.changed = [*stamp, rows], True
        return rows

    def save(self) -> None:
        if self.cache is not None and self.changed:
            try:
                write_json_atomic(self.cache, {k: v for k, v in self.known.items() if Path(k).exists()})
            except OSError:
                pass  # a cache: status works without it


def remember_rows(settings: Settings, spec: JobSpec) -> None:
    """Count the job's training rows into the cache (at submit), so `mtld status` need not."""
    counts = ExampleCounts(cache_file(settings))
    try:
        for task in spec.tasks:
            counts.of(Path(task.train))
    except (OSError, ValueError):
        return  # status counts (or gives up on) this job itself
    counts.save()


def queued_estimate(spec: JobSpec, records: Sequence[RunRecord], micro_batch: int, *, done_fraction: float = 0.0,
                    counts: ExampleCounts | None = None) -> float | None:
    """Rough expected seconds of a queued job for `mtld status` (counts rows, no tokenizing);
    a job that already trained `done_fraction` of its steps has that much less to do."""
    counts = counts or ExampleCounts()
    try:
        examples = [counts.of(Path(t.train)) for t in spec.tasks]
    except (OSError, ValueError):
        return None
    train, left = spec.train, 1.0 - min(max(done_fraction, 0.0), 1.0)
    steps = sum(-(-n // train.effective_batch_size) for n in examples) * train.epochs
    evaluations = evaluation_count(steps, train.epochs, train.eval_every, any(t.eval for t in spec.tasks))
    return runtime.rough_seconds(records, micro_batch, round(sum(examples) * train.epochs * left),
                                  round(evaluations * left))
