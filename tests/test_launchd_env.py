"""The daemon in the environment launchd gives it (issue 22): `env -i` plus the plist's EnvironmentVariables,
nothing of the shell it was installed from, on a job whose model is a hub id in a custom HF_HOME.

A LaunchAgent reads no shell start-up file: what it knows of the user's HF_HOME, token, proxy or CA bundle is
what `mtld agent install` carried into the plist, and a hub id must already be a folder by the time the job
runs (`mtld submit` stores its snapshot folder)."""

from __future__ import annotations

import json
import os
import plistlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mtld.config.settings import Settings
from mtld.platform import launchd
from mtld.platform.agent import plan_install
from mtld.store import Store
from tests.conftest import DAEMON_JOB, log_events

COMMIT = "0123456789abcdef0123456789abcdef01234567"
CONFIG = """\
[train]
device = "cpu"
threads = 1
progress_every_s = 0

[daemon]
poll_interval_s = 0.5
notify = false
prevent_sleep = false

[memory]
probe = "simulated"
simulated_file = "{pressure}"
"""


def hub_cache(hf_home: Path, model: Path, repo_id: str) -> Path:
    """`model` as `hf download REPO_ID` leaves it in HF_HOME: a snapshot folder and refs/main."""
    repo = hf_home / "hub" / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / COMMIT
    shutil.copytree(model, snapshot)
    (repo / "refs").mkdir()
    (repo / "refs/main").write_text(COMMIT)
    return snapshot


@pytest.mark.slow
def test_the_daemon_runs_a_hub_id_job_with_only_the_environment_its_plist_gives_it(tmp_path, data_dir):
    hf_home = tmp_path / "my hf"  # not ~/.cache/huggingface: only the shell knows it
    snapshot = hub_cache(hf_home, data_dir / "model", "org/tiny-bert")
    state, config, pressure = tmp_path / "state", tmp_path / "config.toml", tmp_path / "pressure"
    pressure.write_text("normal\n")
    config.write_text(CONFIG.format(pressure=pressure))
    job = data_dir / "hub-job.toml"
    job.write_text(DAEMON_JOB.format(name="hubjob", model="org/tiny-bert", epochs=1, checkpoint_every=50))
    shell = {  # the user's Terminal, with what ~/.zshrc exported
        "PATH": os.environ["PATH"], "HOME": str(tmp_path / "home"), "HF_HOME": str(hf_home),
        "MTLD_HOME": str(state), "MTLD_CONFIG": str(config), "ONLY_IN_THE_SHELL": "1",
    }

    submitted = subprocess.run([sys.executable, "-m", "mtld", "submit", str(job)], env=shell, capture_output=True,
                               text=True, timeout=120)
    assert submitted.returncode == 0, submitted.stderr
    job_id = int(submitted.stdout)

    plan = plan_install(Settings.model_construct(), platform="darwin", python=sys.executable, uid=os.getuid(),
                        home=Path(shell["HOME"]), env=shell)
    plist = plistlib.loads(plan.files[launchd.plist_path(Path(shell["HOME"]))])
    given = plist["EnvironmentVariables"]
    assert given["HF_HOME"] == str(hf_home) and "ONLY_IN_THE_SHELL" not in given and "HOME" not in given

    # launchd starts ProgramArguments with EnvironmentVariables (and a few of its own; none of the shell's),
    # in / (launchd.plist(5), WorkingDirectory).
    daemon = subprocess.run(["env", "-i", *(f"{key}={value}" for key, value in given.items()),
                             *plist["ProgramArguments"], "--exit-when-idle", "--quiet"],
                            cwd="/", capture_output=True, text=True, timeout=300)

    assert daemon.returncode == 0, daemon.stderr
    with Store(state / "state.db") as store:
        done = store.get(job_id)
    assert done.state == "succeeded", done.last_error
    assert json.loads(done.spec_json)["model"] == str(snapshot)  # resolved at submit, from the shell's HF_HOME
    [started] = log_events(Path(done.run_dir) / "run.jsonl", "run.started")
    assert started["device"] == "cpu"
    assert [e["outcome"] for e in log_events(state / "logs/mtld.jsonl", "run.exited")] == ["succeeded"]
