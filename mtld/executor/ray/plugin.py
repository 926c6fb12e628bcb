"""The Ray executor as mtld knows it from the settings: its table, slots, device, folders, status text and
doctor check. Light to import: Ray's client loads only when the daemon or doctor talks to the cluster."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from mtld.executor import ExecutorPlugin
from mtld.executor.ray.settings import EXTRA_HINT, RaySettings

if TYPE_CHECKING:
    from mtld.executor.ray.jobs import RayExecutor
    from mtld.store import Run


class RayPlugin(ExecutorPlugin):
    """Runs go to a Ray cluster as Ray jobs, up to `executor.ray.slots` at once."""

    kind = "ray"
    settings_model: ClassVar[type[RaySettings]] = RaySettings
    remote = True

    @property
    def ray(self) -> RaySettings:
        assert isinstance(self.section, RaySettings)
        return self.section

    @classmethod
    def unavailable(cls) -> str | None:
        return None if importlib.util.find_spec("ray") else f"needs Ray's client: {EXTRA_HINT}"

    @property
    def slots(self) -> int:
        return self.ray.slots

    @property
    def device(self) -> str:
        """The workers' device (`executor.ray.device`; "auto": CUDA when each run asks for a GPU, else CPU):
        the family key and the start size use it, so a cluster's history never mixes with this machine's."""
        if self.ray.device != "auto":
            return self.ray.device
        return "cuda" if self.ray.num_gpus > 0 else "cpu"

    @property
    def runs_dir(self) -> Path:
        """The shared folder every worker sees at the same path (unset: the state folder's runs/, which only
        a one-machine cluster sees)."""
        return self.ray.runs_dir or self.settings.local_runs_dir

    def executor(self) -> RayExecutor:
        from mtld.executor.ray.jobs import RayExecutor

        return RayExecutor(self.ray, owner=str(self.settings.state_dir), device=self.device)

    def setting_files(self) -> dict[str, Path]:
        return {"executor.ray.token_file": self.ray.token_file} if self.ray.token_file else {}

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "address": self.ray.address, "runs_dir": str(self.runs_dir)}

    @classmethod
    def describe_run(cls, run: Run) -> dict[str, Any]:
        return {"submission_id": run.ref, "node": run.node}

    @classmethod
    def lines(cls, view: dict[str, Any]) -> list[str]:
        slots = f"{view['slots']} run{'s' if view['slots'] != 1 else ''} at once"
        return [f"executor ray at {view['address']} ({slots}); run folders in {view['runs_dir']}"]

    @classmethod
    def run_lines(cls, run: dict[str, Any]) -> list[str]:
        if run.get("waiting"):  # PENDING: Ray has not given it a node yet
            return [f"ray job {run['submission_id']}: {run['waiting']}"]
        node = run["node"][:12] if run.get("node") else "not yet placed"  # Ray's node ids: 56 hex digits
        return [f"ray job {run['submission_id']} on node {node}"]

    def doctor(self) -> dict[str, Any]:
        """Reachable (with the token, if one is set), its authentication mode (a warning for an open Jobs API
        off loopback), the same Ray and mtld on both ends, a node with what a run asks for, the shared folder
        seen and written by a worker (mtld.executor.ray.workercheck: a small Ray job, up to 2 minutes)."""
        from mtld.executor.ray.workercheck import check_cluster

        return check_cluster(self.ray, runs_dir=self.runs_dir, owner=str(self.settings.state_dir))

    @property
    def doctor_note(self) -> str:
        return f"checking the Ray cluster at {self.ray.address} with a small Ray job (up to 2 min)"
