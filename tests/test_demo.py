"""`make demo`, the quick start: it runs on a fresh clone, and each command it suggests at the end works
pasted alone, in another folder, in a shell that has none of the demo's settings."""

from __future__ import annotations

import itertools
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

TRY = "== try (each line works on its own, from any folder)"


@pytest.mark.slow
def test_the_demo_runs_and_every_command_it_suggests_works_from_any_folder(tmp_path):
    # A fresh clone's examples/ (no tiny-bert yet): the demo builds its model and keeps its state there,
    # not in this checkout; this checkout's code runs it (PYTHONPATH), from this venv (BIN).
    clone = tmp_path / "clone"
    shutil.copytree(REPO / "examples", clone / "examples", ignore=shutil.ignore_patterns("tiny-bert", "*.predictions.jsonl"))
    bin_dir = Path(sys.executable).parent
    assert (bin_dir / "mtld").exists(), f"no mtld script beside {sys.executable}: run the tests from the venv"
    (tmp_path / "user").mkdir()
    pressure = tmp_path / "pressure"
    pressure.write_text("normal\n")  # a busy test machine must not make the daemon wait for memory
    shell = {k: v for k, v in os.environ.items() if not k.startswith("MTLD_")}
    shell |= {"HOME": str(tmp_path / "user"), "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    demo = subprocess.run(["bash", str(clone / "examples" / "demo.sh")], cwd=tmp_path, capture_output=True, text=True,
                          timeout=540, env=shell | {"BIN": str(bin_dir), "MTLD_MEMORY__PROBE": "simulated",
                                                    "MTLD_MEMORY__SIMULATED_FILE": str(pressure),
                                                    "MTLD_TRAIN__DEVICE": "cpu"})
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]

    lines = demo.stdout.splitlines()
    assert TRY in lines, demo.stdout[-3000:]
    suggested = [line.strip() for line in itertools.takewhile(str.strip, lines[lines.index(TRY) + 1:])]
    verbs = [next(w for w in words if not w.startswith("MTLD_HOME=") and not w.endswith("/mtld"))
             for words in map(shlex.split, suggested)]
    assert verbs == ["show", "logs", "status", "predict"]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    outputs = {}
    for verb, command in zip(verbs, suggested):
        ran = subprocess.run(["bash", "-c", command], cwd=elsewhere, env=shell, capture_output=True, text=True,
                             timeout=300)
        assert ran.returncode == 0, f"{command}\nexited {ran.returncode}: {ran.stderr[-2000:]}"
        outputs[verb] = ran.stdout
    assert list(elsewhere.iterdir()) == []  # the predictions went to the demo's state, not the current folder

    status = json.loads(outputs["status"])
    assert sorted(job["name"] for job in status["finished"]) == ["demo", "sentiment-quick"]
    assert {job["state"] for job in status["finished"]} == {"succeeded"}
    assert "demo" in outputs["show"] and "succeeded" in outputs["show"]
    rows = (clone / "examples" / "data" / "sentiment.eval.jsonl").read_text().splitlines()
    predictions = (clone / ".mtld-demo" / "sentiment.predictions.jsonl").read_text().splitlines()
    assert len(predictions) == len(rows)
