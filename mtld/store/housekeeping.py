"""The store's side of cleaning up: finished jobs whose run folders were removed, and the space runs take.

A mixin of `Store` (it uses the Store's `_write`, `_rows` and `_job`): the SQL stays in this package.
A removed job keeps its row and its runs (the family's history); it is marked with `removed_at`,
left out of `mtld status`, and cannot be retried.
"""

from __future__ import annotations

import json
from typing import Any

from mtld.store.records import InvalidTransition, Job
from mtld.store.schema import TERMINAL


class Housekeeping:
    def mark_removed(self: Any, job_id: int, *, reason: str, now: float) -> Job:
        """Mark a finished job removed (its run folder is gone); recorded as a transition."""
        with self._write() as db:
            job = self._job(job_id)
            if job.state not in TERMINAL:
                raise InvalidTransition(f"job {job_id} is {job.state}; only a finished job can be removed "
                                        f"(cancel it first)")
            if job.removed_at is None:
                db.execute("UPDATE jobs SET removed_at = ?, updated_at = ? WHERE id = ?", (now, now, job_id))
                db.execute("INSERT INTO transitions (job_id, from_state, to_state, at, reason) VALUES (?, ?, ?, ?, ?)",
                           (job_id, job.state, job.state, now, reason))
            return self._job(job_id)

    def set_run_figure(self: Any, run_id: int, name: str, value: Any) -> None:
        """Change one of a finished run's figures (`mtld clean --keep-models` updates `disk_bytes`)."""
        with self._write() as db:
            db.execute("UPDATE runs SET figures = json_set(figures, ?, json(?)) WHERE id = ?",
                       (f"$.{name}", json.dumps(value), run_id))

    def runs_disk_usage(self: Any) -> tuple[int, int]:
        """(run folders, bytes): each job not removed, by its latest finished run's `disk_bytes`
        (measured by the run when it ended); one query, no folder is walked."""
        rows = self._rows(
            "SELECT COUNT(*), COALESCE(SUM(json_extract(r.figures, '$.disk_bytes')), 0) FROM runs r"
            " JOIN jobs j ON j.id = r.job_id WHERE j.removed_at IS NULL"
            " AND json_extract(r.figures, '$.disk_bytes') IS NOT NULL"
            " AND r.id = (SELECT MAX(id) FROM runs WHERE job_id = j.id AND ended_at IS NOT NULL)")
        return int(rows[0][0]), int(rows[0][1])
