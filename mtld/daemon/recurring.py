"""Recurring jobs: each tick, a job for every schedule that is due (missed firings coalesce into one).
When a schedule fires is mtld.decide.schedule's (`firing`); this submits the job."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from mtld.config.jobspec import stored_spec
from mtld.daemon.ledger import describe
from mtld.decide import schedule
from mtld.store import Schedule, Store


class Recurring:
    def __init__(self, store: Store, log: Any) -> None:
        self.store, self.log = store, log
        self.failed: set[tuple[int, float]] = set()  # (schedule, due time) already logged as failed

    def fire_due(self, now: float) -> None:
        """Submit a job for every schedule that is due. A schedule that cannot fire is skipped (logged once
        per firing), never the tick."""
        local = datetime.fromtimestamp(now).astimezone()
        for recurring in self.store.list_schedules():
            try:
                self._fire(recurring, local, now)
            except Exception as e:
                if (recurring.id, recurring.next_fire_at) not in self.failed:
                    self.failed.add((recurring.id, recurring.next_fire_at))
                    self.log.error("schedule.fire_failed", schedule_id=recurring.id, error=describe(e))

    def _fire(self, recurring: Schedule, local: datetime, now: float) -> None:
        due = datetime.fromtimestamp(recurring.next_fire_at).astimezone()
        fire, next_at = schedule.firing(recurring.cron, due, local)
        if not fire:
            return
        stored_spec(recurring.spec_json, shown_as=f"schedule {recurring.id}")  # what the job will run: still valid
        job = self.store.fire_schedule(recurring.id, due_at=recurring.next_fire_at, next_fire_at=next_at.timestamp(),
                                       name=schedule.fired_job_name(recurring.name, due), now=now)
        if job is not None:
            self.log.info("schedule.fired", schedule_id=recurring.id, job_id=job.id, due_at=due.isoformat(),
                          missed=local - due > timedelta(minutes=1), next_fire_at=next_at.isoformat())
