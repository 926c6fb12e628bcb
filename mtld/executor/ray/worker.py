"""`mtld doctor`'s check job on a Ray worker (mtld.executor.ray.workercheck submits it): can runs go here, and do
they find and write their run folders? It reads back the token the daemon's side wrote in the shared runs
folder, writes it back next to it (TOKEN_FILE.worker: runs write their folders), and prints one report
line: its host, its mtld, Ray and torch versions, the cluster's resources.

    python -P -m mtld.executor.ray.worker RUNS_DIR TOKEN_FILE   # on a worker, as a Ray job

It runs on the cluster, never in the daemon: the only module of mtld.executor that imports torch (allowed by
name in the import-linter contract).
"""

from __future__ import annotations

import json
import logging
import socket
import sys
from pathlib import Path
from typing import Any

from mtld.executor.ray.workercheck import MARK, WRITTEN


def main(argv: list[str]) -> int:
    runs_dir, token_file = Path(argv[0]), Path(argv[1])
    report: dict[str, Any] = {"host": socket.gethostname(), "python": sys.executable}
    try:
        report["token"] = token_file.read_text().strip()
    except OSError as e:
        report["token"] = None
        report["folder_error"] = f"{runs_dir}: {e.strerror or e}"
    else:
        try:
            Path(f"{token_file}{WRITTEN}").write_text(report["token"])
        except OSError as e:
            report["write_error"] = f"{runs_dir}: {e.strerror or e}"
    from mtld import __version__

    report["mtld"] = __version__
    try:
        import ray

        report["ray"] = ray.__version__
        ray.init(logging_level=logging.ERROR, log_to_driver=False)  # the job's driver joins its cluster (RAY_ADDRESS)
        resources: dict[str, float] = ray.cluster_resources()  # type: ignore[no-untyped-call]
        nodes: list[dict[str, Any]] = ray.nodes()  # type: ignore[no-untyped-call]
        report["resources"] = {k: v for k, v in resources.items() if not k.startswith("node:")}
        report["nodes"] = len([n for n in nodes if n.get("Alive")])
    except Exception as e:
        report["ray_error"] = f"{type(e).__name__}: {e}"
    try:
        import torch

        report["torch"] = torch.__version__
        report["cuda_devices"] = torch.cuda.device_count()
    except Exception as e:
        report["torch"] = f"not importable: {e}"
    print(MARK + json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
