"""The run child fixes glibc's mmap and trim thresholds (mtld.train.device.tune_malloc), so that a step's
large buffers come back from the heap instead of fresh, zeroed pages every time. Real processes, real
page faults: the same loop of 48 MB allocations with and without it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

LOOP = """
import json, resource, sys
import torch
from mtld.train.device import tune_malloc
tuned = tune_malloc() if sys.argv[1] == "tuned" else None
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    t = torch.empty(12 << 20, dtype=torch.float32)  # 48 MB, as a word-embedding gradient on a BERT vocabulary
    t.fill_(1.0)
    del t
print(json.dumps({"tuned": tuned, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


def _faults(mode: str) -> dict:
    done = subprocess.run([sys.executable, "-c", LOOP, mode], capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_large_buffers_are_reused_from_the_heap_once_malloc_is_tuned():
    default, tuned = _faults("default"), _faults("tuned")
    assert tuned["tuned"] is True
    pages = (48 << 20) // 4096
    assert default["faults"] > 10 * pages  # every allocation: fresh pages from mmap
    # mostly the first one: the heap keeps them (a loaded machine's reclaim can take some back meanwhile)
    assert tuned["faults"] < default["faults"] / 2


def test_the_probe_tunes_the_heap_before_anything_as_the_run_child_does(tmp_path, monkeypatch):
    """The probe's step line is the estimate's history: measured on an untuned heap it was up to a fifth
    slower than the runs it predicts."""
    from mtld.train import device, probe

    class Tuned(Exception):
        pass

    def tune() -> None:
        raise Tuned

    monkeypatch.setattr(device, "tune_malloc", tune)
    with pytest.raises(Tuned):
        probe.probe(tmp_path / "no-run-folder-yet")  # first: before the run folder is read
