"""A third executor, added from here alone: a fake Slurm that mtld has never heard of.

It brings its own settings table, slots, device, run folders, status text and doctor check, and is
registered at run time (a package would use the `mtld.executors` entry point group). Nothing outside
mtld/executor/ names a kind of executor, so this file is all it takes; the last test checks that
the core keeps it so.
"""

from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path
from typing import Any, ClassVar

import pytest
from pydantic import Field

from mtld.config.settings import Section, Settings
from mtld.daemon.loop import Daemon
from mtld.executor import ExecutorPlugin, ExitStatus
from mtld.executor import registry
from mtld.logs.events import configure
from mtld.queue import jobs
from mtld.queue.status import collect
from mtld.store import Store
from mtld.testing import ScriptedProbe
from tests.conftest import run_cli, write_job
from tests.test_daemon_loop import T0, events, reading

REPO = Path(__file__).resolve().parents[1]


class SlurmSettings(Section):
    partition: str = "gpu"
    slots: int = Field(default=2, ge=1, le=16)


class Cluster:
    """The fake cluster's queue, kept across executors (so that a restarted daemon finds its jobs)."""

    jobs: ClassVar[dict[str, SlurmJob]] = {}


class SlurmJob:
    pid = None  # not a process here

    def __init__(self, ref: str, run_dir: Path) -> None:
        self.ref, self.run_dir = ref, run_dir
        self.node: str | None = "node-7"
        self.signals: list[int] = []
        self.status: ExitStatus | None = None

    def signal(self, signum: int) -> None:
        self.signals.append(signum)
        if signum == signal.SIGTERM and self.status is None:
            self.status = ExitStatus(code=75)  # checkpointed

    def poll(self) -> ExitStatus | None:
        return self.status


class SlurmExecutor:
    kind = "slurm"
    remote = True

    def __init__(self, settings: SlurmSettings) -> None:
        self.slots = settings.slots
        self.device = "cuda"
        self.partition = settings.partition

    def check(self) -> None:
        pass

    def start(self, run: Any, run_dir: Path) -> SlurmJob:
        job = Cluster.jobs[f"slurm-{run.id}"] = SlurmJob(f"slurm-{run.id}", run_dir)
        return job

    def adopt(self, run: Any, run_dir: Path) -> SlurmJob | None:
        return Cluster.jobs.get(run.ref or f"slurm-{run.id}") if run.executor == self.kind else None


class SlurmPlugin(ExecutorPlugin):
    kind = "slurm"
    settings_model = SlurmSettings
    remote = True

    @property
    def slurm(self) -> SlurmSettings:
        assert isinstance(self.section, SlurmSettings)
        return self.section

    @property
    def slots(self) -> int:
        return self.slurm.slots

    @property
    def device(self) -> str:
        return "cuda"

    @property
    def runs_dir(self) -> Path:
        return self.settings.state_dir / "slurm-runs"

    def executor(self) -> SlurmExecutor:
        return SlurmExecutor(self.slurm)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "partition": self.slurm.partition}

    @classmethod
    def describe_run(cls, run: Any) -> dict[str, Any]:
        return {"slurm_job": run.ref}

    @classmethod
    def lines(cls, view: dict[str, Any]) -> list[str]:
        return [f"executor slurm on partition {view['partition']} ({view['slots']} at once)"]

    @classmethod
    def run_lines(cls, run: dict[str, Any]) -> list[str]:
        return [f"slurm job {run['slurm_job']}"]

    def doctor(self) -> dict[str, Any]:
        drained = self.slurm.partition == "drained"
        return {"partition": self.slurm.partition, "problems": ["partition drained: no node takes jobs"] if drained else []}


@pytest.fixture
def slurm(tmp_path, monkeypatch):
    """The plugin registered; MTLD_HOME and the executor's settings in the environment, as a user sets them."""
    for name in [n for n in os.environ if n.startswith("MTLD_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("MTLD_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MTLD_DAEMON__NOTIFY", "false")
    monkeypatch.setenv("MTLD_EXECUTOR__KIND", "slurm")
    monkeypatch.setenv("MTLD_EXECUTOR__SLURM__PARTITION", "a100")
    registry.register(SlurmPlugin)
    Cluster.jobs.clear()
    yield tmp_path
    registry.unregister("slurm")


def test_its_settings_table_is_checked_by_its_own_model_with_the_usual_one_line(slurm, monkeypatch):
    monkeypatch.setenv("MTLD_EXECUTOR__SLURM__SLOTS", "0")
    code, out, err = run_cli("status")
    assert (code, out) == (2, "")
    assert err.strip() == "MTLD_EXECUTOR__SLURM__SLOTS: Input should be greater than or equal to 1"
    monkeypatch.delenv("MTLD_EXECUTOR__SLURM__SLOTS")
    monkeypatch.setenv("MTLD_EXECUTOR__SLURM__PARTITON", "a100")  # a typo
    assert run_cli("status")[2].strip() == "MTLD_EXECUTOR__SLURM__PARTITON: unknown key"


def test_an_unknown_kind_names_the_known_ones(slurm, monkeypatch):
    monkeypatch.setenv("MTLD_EXECUTOR__KIND", "pbs")
    code, out, err = run_cli("status")
    assert code == 2
    assert err.strip() == "MTLD_EXECUTOR__KIND: unknown executor 'pbs' (one of local, ray, slurm)"


def test_the_daemon_runs_the_queue_through_it_with_its_slots_device_and_folders(slurm):
    settings = Settings()
    registry.check_settings(settings)
    configure(settings.daemon_log)
    store = Store(settings.db_path)
    now = __import__("datetime").datetime.fromtimestamp(T0)
    job_files = [write_job(_folder(slurm / f"job{n}")) for n in range(3)]
    ids = [jobs.submit(settings, store, f, now=now).id for f in job_files]
    assert all(Path(store.get(i).run_dir).parent == settings.state_dir / "slurm-runs" for i in ids)

    daemon = Daemon(settings, store, probe=ScriptedProbe([reading("critical")]), clock=lambda: T0)  # built from the registry
    daemon.tick(T0)
    assert [store.get(i).state for i in ids] == ["running", "running", "queued"]  # two slots; no memory gate
    assert {r.family.split("|")[2] for r in (store.latest_run(i) for i in ids[:2])} == {"cuda"}  # its device
    assert [store.latest_run(i).executor for i in ids[:2]] == ["slurm", "slurm"]

    info = collect(settings, store)
    assert info["executor"] == {"kind": "slurm", "slots": 2, "partition": "a100", "problem": None}
    assert [j["run"]["slurm_job"] for j in info["running"]] == [f"slurm-{store.latest_run(i).id}" for i in ids[:2]]
    code, text, _ = run_cli("status")
    assert code == 0 and "executor slurm on partition a100 (2 at once)" in text
    assert text.count("        slurm job slurm-") == 2

    Cluster.jobs[f"slurm-{store.latest_run(ids[0]).id}"].status = ExitStatus(code=0)
    daemon.tick(T0 + 1)
    assert [store.get(i).state for i in ids] == ["succeeded", "running", "running"]

    # a restarted daemon (kill -9) finds the two still on the cluster through the registry, and starts nothing again
    again = Daemon(settings, store, probe=ScriptedProbe([reading("normal")]), clock=lambda: T0)
    again.reconcile(T0 + 2)
    assert sorted(a.job_id for a in again.active) == ids[1:]
    assert [e["ref"] for e in events(settings, "daemon.adopted")] == [f"slurm-{store.latest_run(i).id}" for i in ids[1:]]
    again.tick(T0 + 3)
    assert len(Cluster.jobs) == 3 and [len(store.runs_for(i)) for i in ids] == [1, 1, 1]
    store.close()


def test_doctor_shows_its_check_and_exits_1_on_its_problems(slurm, monkeypatch):
    code, out, _ = run_cli("doctor", "--json")
    assert code == 0 and json.loads(out)["executor"] == {"kind": "slurm", "slots": 2, "partition": "a100",
                                                        "problems": []}
    monkeypatch.setenv("MTLD_EXECUTOR__SLURM__PARTITION", "drained")
    code, out, _ = run_cli("doctor", "--json")
    assert code == 1 and json.loads(out)["executor"]["problems"] == ["partition drained: no node takes jobs"]


def test_nothing_outside_the_executor_package_names_a_kind_of_executor():
    """The core asks the interface only: no module outside mtld/executor/ knows Ray (or any other kind). The
    test fakes (mtld.testing) are not the core: their fake cluster plays Ray's part for test_daemon_slots."""
    knows_a_kind = re.compile(r"""["']ray["']|\bexecutor\.ray\b|\bRay(Settings|Executor|Run|Plugin)\b|\bsubmission_id\b""")
    offenders = [f"{path.relative_to(REPO)}:{n}" for path in sorted((REPO / "mtld").rglob("*.py"))
                 if "executor" not in path.relative_to(REPO / "mtld").parts and path.name != "testing.py"
                 for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if knows_a_kind.search(line)]
    assert offenders == []


def _folder(path: Path) -> Path:
    path.mkdir(parents=True)
    return path
