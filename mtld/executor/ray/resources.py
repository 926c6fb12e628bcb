"""What a run asks a Ray cluster for, and whether any node could ever give it: pure, from the settings and
the nodes' totals (no request is made here).

Ray places a job's entrypoint on one node, with every entrypoint resource it asks for (`entrypoint_num_cpus`,
`entrypoint_num_gpus`, `entrypoint_memory`, `entrypoint_resources`: ray/dashboard/modules/job/job_manager.py
schedules the JobSupervisor actor with them), so a request that no single node has in total can never start:
Ray only fails it after RAY_JOB_START_TIMEOUT_SECONDS (15 minutes by default, ray/dashboard/consts.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

# Ray's names for the built-in resources, and the setting that asks for each.
SETTING = {"CPU": "executor.ray.num_cpus", "GPU": "executor.ray.num_gpus", "memory": "executor.ray.memory_mb"}


def asked(num_cpus: float, num_gpus: float, memory_mb: float, resources: Mapping[str, float]) -> dict[str, float]:
    """The resources a run asks for, by Ray's names (memory in bytes, as Ray counts it); those asked as 0 are
    not asked at all."""
    wanted = {"CPU": num_cpus, "GPU": num_gpus, "memory": float(int(memory_mb * 1_000_000)), **resources}
    return {name: float(amount) for name, amount in wanted.items() if amount > 0}


def setting_of(resource: str) -> str:
    return SETTING.get(resource, f"executor.ray.resources.{resource}")


def amount_text(resource: str, amount: float) -> str:
    """1 GPU, 2.5 CPU, 4,000 MB of memory, special 1."""
    if resource == "memory":
        return f"{amount / 1_000_000:,.0f} MB of memory"
    number = f"{amount:g}"
    return f"{number} {resource}" if resource in SETTING else f"{resource} {number}"


def request_text(wanted: Mapping[str, float]) -> str:
    return ", ".join(amount_text(name, amount) for name, amount in wanted.items()) or "no resources"


def unsatisfiable(wanted: Mapping[str, float], nodes: Sequence[Mapping[str, float]]) -> str | None:
    """Why no node of the cluster can ever start the run (one line naming the resource and its setting), or
    None when one node has, in total, all it asks for, or when no node is alive: a head that has just started
    (or come back) answers the Jobs API before its own node registers, so an empty list says the cluster is
    not up yet, not that it is too small (Ray holds the job pending meanwhile). `nodes`: each live node's
    total resources."""
    if not nodes:
        return None
    if any(all(node.get(name, 0.0) >= amount for name, amount in wanted.items()) for node in nodes):
        return None
    alive = f"{len(nodes)} node{'s' if len(nodes) != 1 else ''} alive"
    short = {name: max((node.get(name, 0.0) for node in nodes), default=0.0) for name in wanted}
    missing = [name for name, amount in wanted.items() if short[name] < amount]
    if missing:
        parts = [f"{amount_text(name, wanted[name])} ({setting_of(name)}; the most a node has: "
                 f"{amount_text(name, short[name]) if short[name] else 'none'})" for name in missing]
        return f"no node of the Ray cluster has {'; '.join(parts)} ({alive})"
    together = ", ".join(f"{amount_text(name, amount)} ({setting_of(name)})" for name, amount in wanted.items())
    return f"no single node of the Ray cluster has all of {together} at once ({alive}): a run takes them on one node"
