"""The layers hold at run time too: the daemon's process and the CLI never load torch or transformers.

import-linter checks the import graph in CI (`make lint`, pyproject.toml); this runs the real imports in a
fresh interpreter, as the daemon and the CLI start, and looks at what got loaded."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO

DAEMON = ["mtld.daemon.loop", "mtld.daemon.ledger", "mtld.daemon.starter", "mtld.executor.registry", "mtld.executor.local",
          "mtld.executor.ray.plugin", "mtld.executor.ray.jobs", "mtld.executor.ray.workercheck"]
CLI = ["mtld.cli", "mtld.queue.status", "mtld.doctor.diagnose", "mtld.estimate.history"]


@pytest.mark.parametrize("modules", [DAEMON, CLI], ids=["daemon", "cli"])
def test_the_daemon_and_the_cli_load_neither_torch_nor_transformers(modules):
    code = ("import importlib, json, sys\n"
            f"for name in {modules!r}: importlib.import_module(name)\n"
            "print(json.dumps(sorted(m for m in ('torch', 'transformers', 'mtld.train.loop', 'mtld.train.step') "
            "if m in sys.modules)))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []


def test_a_daemon_with_every_executor_made_loads_no_torch(tmp_path):
    """Not only the imports: a daemon built (its executor, its ledger) and one idle tick."""
    code = f"""
import json, sys
from mtld.config.settings import Settings
from mtld.daemon.loop import Daemon
from mtld.executor.registry import kinds, make_executor
from mtld.store import Store
from mtld.testing import ScriptedProbe
settings = Settings(home={str(tmp_path)!r}, daemon={{"notify": False, "prevent_sleep": False}})
with Store(settings.db_path) as store:
    Daemon(settings, store, probe=ScriptedProbe(["normal"])).tick(0.0)
    for kind in kinds():
        make_executor(settings, kind)
print(json.dumps(sorted(m for m in ("torch", "transformers") if m in sys.modules)))
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == []


MODULE_MAX_LINES = 450  # the house rule: past this a module holds two topics; split it by topic


def test_no_module_is_over_the_house_size():
    sizes = {path.relative_to(REPO).as_posix(): len(path.read_text().splitlines())
             for path in (REPO / "mtld").rglob("*.py")}
    assert {name: n for name, n in sizes.items() if n > MODULE_MAX_LINES} == {}
